"""sparsify / finalize on real model code (transformers BERT and ViT, a ResNet),
checked against the dense model with its weights multiplied by the masks."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tilesparse
from tilesparse import densify, finalize, sparsify
from tilesparse.nn import MaskedConv2d, MaskedLinear, TileSparseBase, TileSparseConv2d, TileSparseLinear
from tilesparse.sparsify import sparsity_summary
from tilesparse.testing import is_tile_wise

transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------- models
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + idt)


class TinyResNet(nn.Module):
    """torchvision-style ResNet (BasicBlock), small."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg).double().eval()


def vit(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64)
    return transformers.ViTModel(cfg).double().eval()


def resnet(seed=0):
    torch.manual_seed(seed)
    return TinyResNet().double().eval()


def bert_input():
    g = torch.Generator().manual_seed(1)
    return dict(input_ids=torch.randint(0, 100, (2, 12), generator=g),
                attention_mask=torch.ones(2, 12, dtype=torch.long))


def run(model, kind, inp):
    if kind == "bert":
        return model(**inp).last_hidden_state
    if kind == "vit":
        return model(pixel_values=inp).last_hidden_state
    return model(inp)


def masked_reference(dense, sparse):
    """The dense model with every pruned layer's weight multiplied by its mask:
    plain nn.Linear / nn.Conv2d code paths, independent of tw_linear."""
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for fqn, mod in sparse.named_modules():
            if isinstance(mod, (TileSparseBase, MaskedLinear, MaskedConv2d)):
                ref.get_submodule(fqn).weight.mul_(mod.keep_mask())
    return ref


MODELS = {
    "bert": (bert, bert_input),
    "vit": (vit, lambda: torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))),
    "resnet": (resnet, lambda: torch.randn(2, 3, 12, 12, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(1))),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_real_models_masked_and_final_match_masked_reference(kind):
    make, make_input = MODELS[kind]
    dense = make()
    inp = make_input()
    model = sparsify(copy.deepcopy(dense), sparsity=0.6, tile=8, filter_fn=lambda m, fqn: True,
                     max_layer_sparsity=0.9)
    swapped = [m for m in model.modules() if isinstance(m, TileSparseBase)]
    assert len(swapped) >= 7
    if kind != "bert":
        assert any(isinstance(m, TileSparseConv2d) for m in swapped)
    for m in swapped:
        for gm in m.gemm_view(m.mask):
            assert is_tile_wise(gm, 8)
    total = sparsity_summary(model)["__total__"]["sparsity"]
    assert abs(total - 0.6) < 0.01
    ref = masked_reference(dense, model)
    expected = run(ref, kind, inp)
    with torch.no_grad():
        torch.testing.assert_close(run(model, kind, inp), expected)
        finalize(model)
        assert all(m.finalized for m in swapped)
        out_final = run(model, kind, inp)
        torch.testing.assert_close(out_final, expected)
    # save + load into the same architecture pruned differently: bit-identical
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = finalize(sparsify(make(seed=7), sparsity=0.3, tile=8, filter_fn=lambda m, fqn: True))
    other.load_state_dict(torch.load(buf))
    with torch.no_grad():
        assert torch.equal(run(other, kind, inp), out_final)


def test_bert_backward_matches_reference():
    dense = bert()
    inp = bert_input()
    model = sparsify(copy.deepcopy(dense), sparsity=0.5, tile=8, scope="layer", filter_fn=lambda m, f: True)
    ref = masked_reference(dense, model)
    run(model, "bert", inp).pow(2).sum().backward()
    run(ref, "bert", inp).pow(2).sum().backward()
    checked = 0
    for fqn, mod in model.named_modules():
        if isinstance(mod, TileSparseLinear):
            rw = ref.get_submodule(fqn).weight.grad
            if rw is None:  # the pooler does not feed last_hidden_state
                assert mod.weight.grad is None
                continue
            checked += 1
            torch.testing.assert_close(mod.weight.grad, rw * mod.mask)
    assert checked == 12


@pytest.mark.parametrize("pattern,kw", [("ew", {}), ("vw", {}), ("bw", {}), ("nm", dict(sparsity=0.5)),
                                        ("tew", dict(delta=0.03)), ("tw", dict(col_sparsity="sqrt"))])
def test_patterns_on_resnet(pattern, kw):
    dense = resnet()
    x = MODELS["resnet"][1]()
    args = dict(sparsity=0.6, tile=8, pattern=pattern, filter_fn=lambda m, f: True, max_layer_sparsity=0.9)
    args.update(kw)
    model = sparsify(copy.deepcopy(dense), **args)
    expected = run(masked_reference(dense, model), "resnet", x)
    with torch.no_grad():
        torch.testing.assert_close(run(model, "resnet", x), expected)
        torch.testing.assert_close(run(finalize(model), "resnet", x), expected)
    target = 0.5 if pattern == "nm" else 0.6
    assert abs(sparsity_summary(model)["__total__"]["sparsity"] - target) < 0.03


def test_default_filter_and_filter_fn():
    dense = bert()
    m = sparsify(copy.deepcopy(dense), sparsity=0.5)  # tile=128 > every layer's 32/64 outputs: nothing swapped
    assert not any(isinstance(x, TileSparseBase) for x in m.modules())
    m = sparsify(copy.deepcopy(dense), sparsity=0.5, tile=32)  # layers with >= 32 outputs
    swapped = {f for f, x in m.named_modules() if isinstance(x, TileSparseBase)}
    assert "encoder.layer.0.intermediate.dense" in swapped and len(swapped) == 13
    m = sparsify(copy.deepcopy(dense), sparsity=0.5, tile=8, filter_fn=lambda mod, fqn: fqn.endswith("query"))
    swapped = {f for f, x in m.named_modules() if isinstance(x, TileSparseBase)}
    assert swapped == {"encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"}
    mha = nn.Sequential(nn.Linear(8, 8))
    mha.attn = nn.MultiheadAttention(8, 2)
    m = sparsify(mha, 0.5, tile=4)
    assert type(m.attn.out_proj).__name__ == "NonDynamicallyQuantizableLinear"


def test_global_threshold_warns_on_a_fully_pruned_layer():
    """With both safeguards turned off (raw scores, no cap) a layer of small
    weights is pruned entirely, and a warning says so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    with pytest.warns(UserWarning, match="pruned entirely"):
        sparsify(model, 0.5, tile=8, score_norm=None, max_layer_sparsity=None)
    assert not bool(model[1].mask.any())


def test_mask_optimizer_hook_rezeroes():
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)), 0.5, tile=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = tilesparse.mask_optimizer(model, opt)
    x = torch.randn(4, 16)
    model(x).sum().backward()
    with torch.no_grad():
        model[0].weight[~model[0].mask] = 1.0  # something wrote into pruned positions
    opt.step()
    for m in (model[0], model[2]):
        assert bool((m.weight[~m.mask] == 0).all())
        assert bool((opt.state[m.weight]["exp_avg"][~m.mask] == 0).all())
    handle.remove()
    with pytest.raises(TypeError, match="optimizer"):
        tilesparse.mask_optimizer(model, "sgd")


def test_root_linear_and_densify():
    lin = nn.Linear(16, 32).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    m = sparsify(lin, 0.5, tile=8)
    assert isinstance(m, TileSparseLinear)
    y = m(x)
    d = densify(nn.Sequential(m))
    assert type(d[0]) is nn.Linear
    torch.testing.assert_close(d(x), y)


def test_optimizer_state_shrinks_with_sparsity():
    torch.manual_seed(0)
    dims = [256, 256, 256, 256]
    make = lambda: nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])  # noqa: E731
    x = torch.randn(8, 256)

    def adam_state_numel(model):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(x).pow(2).mean().backward()
        opt.step()
        return sum(t.numel() for st in opt.state.values() for k, t in st.items() if k != "step")

    dense_n = adam_state_numel(make())
    s = 0.75
    model = finalize(sparsify(make(), sparsity=s, tile=32))
    sparse_n = adam_state_numel(model)
    ratio = sparse_n / dense_n
    # weights shrink to (1 - s), biases stay, and each tile row stores at most
    # 7 padding slots (docs/format.md): small overheads
    bias_share = 3 * 256 / (3 * 256 * 257)
    pad_share = 7 * 256 / (256 * 257)
    assert ratio <= (1 - s) + bias_share + pad_share + 32 / (256 * 256)
    assert ratio >= (1 - s) - 0.01


def test_validation_messages():
    m = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="model"):
        sparsify("model")
    with pytest.raises(ValueError, match="sparsity"):
        sparsify(m, sparsity=1.0)
    with pytest.raises(TypeError, match="sparsity"):
        sparsify(m, sparsity="a lot")
    with pytest.raises(ValueError, match="pattern"):
        sparsify(m, pattern="xx")
    with pytest.raises(ValueError, match="scope"):
        sparsify(m, scope="all")
    with pytest.raises(ValueError, match="tile"):
        sparsify(m, tile=0)
    with pytest.raises(TypeError, match="tile"):
        sparsify(m, tile=1.5)
    with pytest.raises(ValueError, match="k_align"):
        sparsify(m, k_align=0)
    with pytest.raises(ValueError, match="delta"):
        sparsify(m, delta=0.1)  # delta needs pattern='tew'
    with pytest.raises(ValueError, match="col_sparsity"):
        sparsify(m, sparsity=0.5, col_sparsity=0.7)
    with pytest.raises(ValueError, match="nm"):
        sparsify(m, sparsity=0.75, pattern="nm")
    with pytest.raises(TypeError, match="filter_fn"):
        sparsify(m, filter_fn=3)
    with pytest.raises(ValueError, match="importance"):
        sparsify(m, importance="random")
    with pytest.raises(TypeError, match="model"):
        finalize(None)
    assert tilesparse.sparsify is sparsify


def test_tew_needs_a_residue():
    """pattern 'tew' with delta 0 (the default of sparsify and Pruner) would be plain TW: it is an error that
    names delta, in sparsify and in Pruner; with delta > 0 the modules carry a residue."""
    model = nn.Sequential(nn.Linear(32, 48))
    with pytest.raises(ValueError, match="pattern 'tew' needs delta > 0"):
        sparsify(copy.deepcopy(model), 0.5, tile=16, pattern="tew")
    with pytest.raises(ValueError, match="pattern 'tew' needs delta > 0"):
        tilesparse.Pruner(copy.deepcopy(model), 0.5, tile=16, pattern="tew")
    out = sparsify(copy.deepcopy(model), 0.5, tile=16, pattern="tew", delta=0.05)
    assert out[0].has_residue and out[0].residue_index.shape[1] == round(0.05 * 32 * 48)
