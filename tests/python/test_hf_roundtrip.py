"""Hugging Face round trip: save_pretrained / from_pretrained of a tile-sparse model (no network)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tilesparse

transformers = pytest.importorskip("transformers", reason="transformers is installed by `make deps`")
from transformers import AutoModel, BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

from tilesparse.integrations.transformers import REQUIRES_TILESPARSE  # noqa: E402
from tilesparse.nn import TileSparseLinear  # noqa: E402


def _config():
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      vocab_size=100, max_position_embeddings=64)


def _sparse_bert(pattern, final, cls=BertModel):
    torch.manual_seed(0)
    model = cls(_config()).eval()
    tilesparse.sparsify(model, 0.5, tile=16, pattern=pattern, delta=0.05 if pattern == "tew" else 0.0)
    if final:
        tilesparse.finalize(model)
    return model


IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pattern", ["tw", "tew"])
@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("loader", [AutoModel, BertModel])
def test_from_pretrained_gives_the_sparse_model(tmp_path, pattern, final, loader):
    model = _sparse_bert(pattern, final)
    ref = model(IDS).last_hidden_state
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "tilesparse" and len(qc["layers"]) == 13
    assert json.loads((tmp_path / "config.json").read_text())["fusion_config"] == {REQUIRES_TILESPARSE: True}

    loaded = loader.from_pretrained(tmp_path).eval()
    q = loaded.encoder.layer[1].attention.self.query
    assert isinstance(q, TileSparseLinear)
    assert q.finalized == final and q.has_residue == (pattern == "tew") and q.tile == 16
    src = model.encoder.layer[1].attention.self.query
    assert torch.equal(q.keep_mask(), src.keep_mask())
    torch.testing.assert_close(loaded(IDS).last_hidden_state, ref, rtol=0, atol=0)


def test_loaded_masked_model_finalized_then_saved_again(tmp_path):
    model = _sparse_bert("tw", final=False)
    ref = model(IDS).last_hidden_state
    model.save_pretrained(tmp_path / "a")
    loaded = AutoModel.from_pretrained(tmp_path / "a").eval()
    tilesparse.finalize(loaded)  # the config follows the model's state
    loaded.save_pretrained(tmp_path / "b")
    layers = json.loads((tmp_path / "b" / "config.json").read_text())["quantization_config"]["layers"]
    assert {e["state"] for e in layers.values()} == {"final"}
    again = AutoModel.from_pretrained(tmp_path / "b").eval()
    assert again.encoder.layer[0].output.dense.finalized
    torch.testing.assert_close(again(IDS).last_hidden_state, ref, rtol=0, atol=0)


def test_task_model_checkpoint_loads_into_the_base_model(tmp_path):
    model = _sparse_bert("tw", final=True, cls=BertForSequenceClassification)
    ref = model.bert(IDS).last_hidden_state
    model.save_pretrained(tmp_path)
    base = BertModel.from_pretrained(tmp_path).eval()
    assert isinstance(base.encoder.layer[0].attention.self.key, TileSparseLinear)
    torch.testing.assert_close(base(IDS).last_hidden_state, ref, rtol=0, atol=0)


_WITHOUT_TILESPARSE = textwrap.dedent("""
    import sys, torch
    from transformers import {cls}
    try:
        model = {cls}.from_pretrained(sys.argv[1], **{kwargs}).eval()
    except Exception as e:
        print(f"{{type(e).__name__}}: {{e}}")
        sys.exit(3 if "tilesparse" not in sys.modules else 4)
    assert "tilesparse" not in sys.modules
    torch.save(model(torch.load(sys.argv[2])).last_hidden_state, sys.argv[3])
""")


def _load_without_tilesparse(tmp_path, cls, **kwargs):
    torch.save(IDS, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # and the script never imports tilesparse
    code = _WITHOUT_TILESPARSE.format(cls=cls, kwargs=repr(kwargs))
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "ids.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


@pytest.mark.parametrize("final,pattern", [(False, "tew"), (True, "tw")])
@pytest.mark.parametrize("cls", ["AutoModel", "BertModel"])
def test_checkpoint_without_tilesparse_is_an_error_naming_tilesparse(tmp_path, cls, final, pattern):
    # transformers only warns about the unknown quant_method; the fusion_config entry makes it raise
    # (before any layer is built or weight read), for masked and finalized checkpoints alike
    _sparse_bert(pattern, final=final).save_pretrained(tmp_path / "m")
    r = _load_without_tilesparse(tmp_path, cls)
    assert r.returncode == 3, r.stdout + r.stderr
    assert not (tmp_path / "out.pt").exists()
    error = r.stdout.strip().splitlines()[-1]
    assert error.startswith("ValueError") and "`import tilesparse` before from_pretrained" in error, error
    assert REQUIRES_TILESPARSE in error


def test_finalized_checkpoint_without_tilesparse_and_its_fusion_entry_still_stops_at_the_guards(tmp_path):
    # `fusion_config={}` replaces the config's entry: the empty `<layer>.weight` guards still give a size mismatch
    _sparse_bert("tw", final=True).save_pretrained(tmp_path / "m")
    r = _load_without_tilesparse(tmp_path, "BertModel", fusion_config={})
    assert r.returncode == 3, r.stdout + r.stderr
    assert not (tmp_path / "out.pt").exists()
    assert "size mismatch" in r.stderr.lower() or "ignore_mismatched_sizes" in r.stdout + r.stderr


def test_fusion_entry_is_written_removed_on_load_and_written_again(tmp_path):
    model = _sparse_bert("tw", final=False)
    model.config.fusion_config = {"patch_embeddings": False}  # a user's own entries stay
    tilesparse.integrations.transformers.attach(model)
    assert model.config.fusion_config == {REQUIRES_TILESPARSE: True, "patch_embeddings": False}
    model.save_pretrained(tmp_path / "a")
    written = json.loads((tmp_path / "a" / "config.json").read_text())["fusion_config"]
    assert written == {REQUIRES_TILESPARSE: True, "patch_embeddings": False}
    loaded = BertModel.from_pretrained(tmp_path / "a").eval()
    assert loaded.config.fusion_config == {REQUIRES_TILESPARSE: True, "patch_embeddings": False}
    loaded.save_pretrained(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["fusion_config"] == written
    torch.testing.assert_close(loaded(IDS).last_hidden_state, model(IDS).last_hidden_state, rtol=0, atol=0)


def test_checkpoint_without_the_fusion_entry_still_loads(tmp_path):
    # written before the entry existed, or by a tilesparse whose wording differs (any "tilesparse:" key is ours)
    model = _sparse_bert("tew", final=True)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for fusion in (None, {"tilesparse: another wording": True}):
        if fusion is None:
            config.pop("fusion_config")
        else:
            config["fusion_config"] = fusion
        (tmp_path / "config.json").write_text(json.dumps(config))
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(IDS).last_hidden_state, model(IDS).last_hidden_state, rtol=0, atol=0)


def test_copied_and_pickled_models_record_their_own_state(tmp_path):
    import copy

    model = _sparse_bert("tw", final=False)
    twin = copy.deepcopy(model)
    tilesparse.finalize(twin)  # the copy's config follows the copy, not the original
    states = lambda m: {e["state"] for e in m.config.quantization_config.to_dict()["layers"].values()}  # noqa: E731
    assert states(model) == {"masked"} and states(twin) == {"final"}
    torch.save(twin, tmp_path / "whole.pt")
    back = torch.load(tmp_path / "whole.pt", weights_only=False)
    back.save_pretrained(tmp_path / "m")
    layers = json.loads((tmp_path / "m" / "config.json").read_text())["quantization_config"]["layers"]
    assert {e["state"] for e in layers.values()} == {"final"}
    torch.testing.assert_close(AutoModel.from_pretrained(tmp_path / "m").eval()(IDS).last_hidden_state,
                               twin(IDS).last_hidden_state, rtol=0, atol=0)


def test_registered_whichever_is_imported_first():
    # this process imported tilesparse first (registration on transformers' import); the other order:
    code = ("import transformers.quantizers.auto as q; assert 'tilesparse' not in q.AUTO_QUANTIZER_MAPPING; "
            "import tilesparse; assert 'tilesparse' in q.AUTO_QUANTIZER_MAPPING; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZER_MAPPING["tilesparse"].__name__ == "TileSparseHfQuantizer"
