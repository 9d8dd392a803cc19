"""PruningCallback: tile-wise pruning inside transformers' Trainer (tiny BERT, a few CPU steps)."""
import pytest
import torch

import tilesparse

transformers = pytest.importorskip("transformers", reason="transformers is installed by `make deps`")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from tilesparse.integrations.transformers import PruningCallback  # noqa: E402
from tilesparse.nn import TileSparseLinear  # noqa: E402


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=32, seq=8):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, seq), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _train(tmp_path, callback, steps=8):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=100,
                                                     max_position_embeddings=32, num_labels=2))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_Data(), callbacks=[callback])
    trainer.train()
    return model, trainer


def _sparse_modules(model):
    return [m for m in model.modules() if isinstance(m, TileSparseLinear)]


def test_gradual_pruning_reaches_target_and_pruned_weights_stay_zero(tmp_path):
    cb = PruningCallback(0.5, schedule="cubic", end_step=4, tile=16)
    model, trainer = _train(tmp_path, cb)
    mods = _sparse_modules(model)
    assert len(mods) == 13 and not any(m.finalized for m in mods)
    total = tilesparse.sparsity_summary(model)["__total__"]["sparsity"]
    assert total == pytest.approx(0.5, abs=0.02)
    for m in mods:  # after 4 more optimizer steps at the final masks (Adam moves every weight it may)
        assert not m.weight[~m.keep_mask()].any()
        assert m.weight[m.keep_mask()].ne(0).all()
    # gradual: sparsity in the logs rises step by step up to the target, then stays
    logged = [h["sparsity"] for h in trainer.state.log_history if "sparsity" in h and "loss" in h]
    assert len(logged) == 8
    # the cubic ramp from 0 (initial_sparsity) at step 0 to 0.5 at end_step 4, then constant
    assert logged[0] == 0 and all(a < b for a, b in zip(logged[:5], logged[1:5]))
    assert logged[4:] == [pytest.approx(total, abs=1e-4)] * 4


def test_staged_pruning_with_finalize(tmp_path):
    cb = PruningCallback(0.6, schedule=[(0, 0.3), (3, 0.6)], finalize=True, tile=16)
    model, trainer = _train(tmp_path, cb, steps=6)
    mods = _sparse_modules(model)
    assert mods and all(m.finalized for m in mods)
    assert tilesparse.sparsity_summary(model)["__total__"]["sparsity"] == pytest.approx(0.6, abs=0.02)
    logged = [h["sparsity"] for h in trainer.state.log_history if "sparsity" in h and "loss" in h]
    assert logged[0] == pytest.approx(0.3, abs=0.02) and logged[-1] == pytest.approx(0.6, abs=0.02)
    # the finalized model still runs and is what save_pretrained records
    out = model(input_ids=torch.randint(0, 100, (2, 8))).logits
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert {e["state"] for e in model.config.quantization_config.to_dict()["layers"].values()} == {"final"}


def test_callback_rejects_a_model_or_optimizer_argument():
    with pytest.raises(TypeError, match="Trainer"):
        PruningCallback(0.5, optimizer=None)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.nn.Linear(2, 2),), {}, TypeError, "sparsity must be a float"),   # a Pruner's model passed as sparsity
    (("0.5",), {}, TypeError, "sparsity must be a float"),
    ((1.5,), {}, ValueError, "sparsity"),
    ((0.5,), {"schedule": "linear"}, ValueError, "schedule"),
    ((0.5,), {"schedule": 3}, TypeError, "schedule"),
    ((0.5,), {"schedule": [(0, 0.3), (0, 0.5)]}, ValueError, "strictly increasing"),
    ((0.5,), {"end_step": 0}, ValueError, "end_step"),
    ((0.5,), {"finalize": "yes"}, TypeError, "finalize"),
    ((0.5,), {"tile": 0}, ValueError, "tile"),
    ((0.5,), {"pattern": "xx"}, ValueError, "pattern"),
    ((0.5,), {"scope": "model"}, ValueError, "scope"),
    ((0.5,), {"frequency": 0}, ValueError, "frequency"),
    ((0.5,), {"importance": "random"}, ValueError, "importance"),
    ((0.5,), {"unit": 8, "pattern": "ew"}, ValueError, "unit"),
    ((0.5,), {"filter_fn": 3}, TypeError, "filter_fn"),
    ((0.5,), {"score_norm": "l1"}, ValueError, "score_norm"),
    ((0.5,), {"tiles": 16}, TypeError, "tiles"),                           # a misspelt Pruner argument
])
def test_callback_validates_every_argument_at_construction(args, kwargs, error, match):
    # as Pruner does: the error names the argument when the callback is built, not when training begins
    with pytest.raises(error, match=match):
        PruningCallback(*args, **kwargs)


def test_callback_accepts_valid_arguments():
    for cb in (PruningCallback(0.75), PruningCallback(0.5, schedule=[(0, 0.25), (10, 0.5)], tile=16),
               PruningCallback(0.5, schedule="oneshot", pattern="ew", scope="layer"),
               PruningCallback(0.5, end_step=100, start_step=10, frequency=5, unit=8, finalize=True)):
        assert cb.pruner is None
