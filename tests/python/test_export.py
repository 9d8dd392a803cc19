"""Deployment of finalized models: torch.export (dynamic batch and sequence), export save/load, AOTInductor."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import tilesparse


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_export_bert_dynamic_batch_and_sequence_then_save_and_load(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is installed by `make deps`")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    tilesparse.sparsify(model, 0.5, tile=16, pattern="tew", delta=0.05)
    tilesparse.finalize(model)
    ids = torch.randint(0, 100, (2, 7))
    batch, seq = torch.export.Dim("batch", min=1, max=32), torch.export.Dim("seq", min=2, max=64)
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    ep = torch.export.export(model, (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                             dynamic_shapes=dyn)
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert torch.ops.tilesparse.tw_linear.default in targets  # the custom op is in the graph, not decomposed

    torch.export.save(ep, tmp_path / "bert.pt2")
    loaded = torch.export.load(tmp_path / "bert.pt2")
    for b, s in [(3, 13), (1, 64)]:  # shapes other than the example's
        x = torch.randint(0, 100, (b, s))
        am = torch.ones_like(x)
        am[0, s // 2:] = 0
        ref = model(input_ids=x, attention_mask=am).last_hidden_state
        _close(ep.module()(input_ids=x, attention_mask=am).last_hidden_state, ref)
        _close(loaded.module()(input_ids=x, attention_mask=am).last_hidden_state, ref)


def test_export_conv_net_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, groups=2),
                        nn.Flatten(), nn.Linear(32 * 3 * 3, 16))
    tilesparse.sparsify(net, 0.6, tile=8)
    tilesparse.finalize(net.eval())
    ep = torch.export.export(net, (torch.randn(2, 3, 8, 8),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(ep, tmp_path / "conv.pt2")
    loaded = torch.export.load(tmp_path / "conv.pt2").module()
    for b in (1, 5):
        x = torch.randn(b, 3, 8, 8)
        _close(loaded(x), net(x))


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


_LOAD_PACKAGE = textwrap.dedent("""
    import sys, torch
    if sys.argv[2] == "import":
        import tilesparse
    runner = torch._inductor.aoti_load_package(sys.argv[1])
    print(tuple(runner(torch.randn(2, 3, 32)).shape))
""")


def test_aot_inductor_package_dynamic_batch_and_sequence(tmp_path):
    # one small case: AOTInductor compiles C++ (about a minute on a 2-core CPU)
    torch.manual_seed(0)
    model = _MLP()
    tilesparse.sparsify(model, 0.5, tile=16, pattern="tew", delta=0.05)
    tilesparse.finalize(model.eval())
    dyn = ({0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=1, max=512)},)
    ep = torch.export.export(model, (torch.randn(2, 5, 32),), dynamic_shapes=dyn)
    pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "mlp.pt2"))
    runner = torch._inductor.aoti_load_package(pkg)
    with torch.no_grad():
        for b, s in [(3, 11), (1, 1), (64, 7)]:
            x = torch.randn(b, s, 32)
            _close(runner(x), model(x))

    # the package calls the op through the dispatcher: a fresh process needs `import tilesparse`
    def load(mode):
        return subprocess.run([sys.executable, "-c", _LOAD_PACKAGE, pkg, mode], capture_output=True, text=True,
                              env=dict(os.environ), timeout=300)

    r = load("import")
    assert r.returncode == 0 and "(2, 3, 32)" in r.stdout, r.stderr
    r = load("no-import")
    assert r.returncode != 0 and "tilesparse::tw_linear" in r.stderr
