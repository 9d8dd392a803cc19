"""TileSparseLinear against F.linear with the masked weight, in both states."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse import ops
from tilesparse.nn import MaskedLinear, TileSparseLinear
from tilesparse.testing import is_tile_wise


def _dense(k=40, n=70, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).double()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("delta", [0.0, 0.04])
def test_forward_backward_masked_state(bias, delta):
    lin = _dense(bias=bias)
    w0 = lin.weight.detach().clone()
    mod = TileSparseLinear.from_dense(lin, 0.6, tile=16, delta=delta, copy=True)
    keep = mod.keep_mask()
    assert is_tile_wise(mod.mask, 16)
    assert abs(mod.sparsity - 0.6) < 16 / lin.weight.numel()
    x = torch.randn(3, 5, 40, dtype=torch.float64, requires_grad=True)
    y = mod(x)
    # independent reference: dense masked weight through F.linear
    wr = (w0 * keep).requires_grad_()
    br = None if lin.bias is None else lin.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    yr = F.linear(xr, wr, br)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(mod.weight.grad, wr.grad * keep)
    assert bool((mod.weight.grad[~keep] == 0).all())  # exactly zero where pruned
    if bias:
        torch.testing.assert_close(mod.bias.grad, br.grad)
    assert bool((mod.weight[~keep] == 0).all())


@pytest.mark.parametrize("delta", [0.0, 0.04])
def test_final_state_matches_and_shrinks(delta):
    lin = _dense()
    mod = TileSparseLinear.from_dense(lin, 0.75, tile=16, delta=delta, copy=True)
    x = torch.randn(7, 40, dtype=torch.float64)
    keep = mod.keep_mask()
    w_eff = lin.weight.detach() * keep
    mod.finalize()
    assert mod.finalized and "weight" not in dict(mod.named_parameters())
    names = dict(mod.named_parameters())
    assert names["values"].dim() == 1
    n_params = sum(p.numel() for n, p in names.items() if n != "bias")
    assert n_params == mod.num_values  # the stored slots: the kept weights plus per-tile padding to 8
    assert mod.num_kept == int(keep.sum())  # exactly the kept weights
    assert n_params - mod.num_kept < 8 * mod.tile * mod.layout().num_tiles  # at most 7 padding slots per tile row
    for b in ("cols", "row_offsets", "rows"):
        assert b in dict(mod.named_buffers()) and b in mod.state_dict()
    xr = x.clone().requires_grad_()
    x.requires_grad_()
    y = mod(x)
    torch.testing.assert_close(y, F.linear(xr, w_eff, lin.bias.detach()))
    g = torch.randn_like(y)
    y.backward(g)
    F.linear(xr, w_eff, lin.bias.detach()).backward(g)
    torch.testing.assert_close(x.grad, xr.grad)
    # the packed values' gradient equals the dense masked weight gradient at kept positions
    wr = w_eff.clone().requires_grad_()
    F.linear(x.detach(), wr, lin.bias.detach()).backward(g)
    dense_from_values_grad = torch.zeros_like(w_eff)
    tw = mod.layout(0)
    dense_from_values_grad += tw.unpack(mod.values.grad)
    if delta:
        gidx, nidx, kidx = mod.residue_index
        dense_from_values_grad[nidx, kidx] += mod.residue_values.grad
    torch.testing.assert_close(dense_from_values_grad, wr.grad * keep)
    # weight property: the effective dense weight
    torch.testing.assert_close(mod.weight, w_eff)
    torch.testing.assert_close(mod.to_dense().weight, w_eff)


def test_shares_parameters_and_optimizer_keeps_zeros():
    lin = _dense()
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(8, 40, dtype=torch.float64)
    lin(x).pow(2).mean().backward()
    opt.step()  # optimizer state exists for the dense weight
    mod = TileSparseLinear.from_dense(lin, 0.5, tile=16)
    assert mod.weight is lin.weight
    mod.apply_mask(opt)
    keep = mod.mask
    assert bool((opt.state[mod.weight]["exp_avg"][~keep] == 0).all())
    for _ in range(3):
        opt.zero_grad()
        mod(x).pow(2).mean().backward()
        opt.step()
    assert bool((mod.weight[~keep] == 0).all())
    assert bool((mod.weight[keep] != 0).all())


@pytest.mark.parametrize("delta", [0.0, 0.04])
def test_state_dict_round_trip_bit_identical(delta):
    lin = _dense()
    mod = TileSparseLinear.from_dense(lin, 0.7, tile=16, delta=delta, copy=True)
    x = torch.randn(4, 40, dtype=torch.float64)
    # masked state: weight, bias, mask saved; indices derived
    sd = mod.state_dict()
    assert set(sd) >= {"weight", "bias", "mask"} and "cols" not in sd
    fresh = TileSparseLinear(40, 70, tile=16, dtype=torch.float64)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), mod(x))
    # final state: save, load into a module pruned differently (indices of other sizes)
    mod.finalize()
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    sd2 = torch.load(buf)
    other = TileSparseLinear.from_dense(_dense(seed=5), 0.3, tile=16, copy=True).finalize()
    assert other.values.numel() != mod.values.numel()
    other.load_state_dict(sd2)
    assert torch.equal(other(x), mod(x))
    # ... and into a fresh masked-state module: it becomes final
    fresh2 = TileSparseLinear(40, 70, tile=16, dtype=torch.float64)
    fresh2.load_state_dict(sd2)
    assert fresh2.finalized and torch.equal(fresh2(x), mod(x))
    # masked state dict into a finalized module: back to masked
    back = TileSparseLinear.from_dense(_dense(), 0.7, tile=16, copy=True).finalize()
    back.load_state_dict(sd)
    assert not back.finalized and torch.equal(back(x), fresh(x))


def test_set_mask_validation_and_not_tile_wise():
    mod = TileSparseLinear(24, 32, tile=8, dtype=torch.float64)
    bad = torch.ones(32, 24, dtype=torch.bool)
    bad[0, 0] = False  # output 0 differs from the rest of its tile
    with pytest.raises(ValueError):
        mod.set_mask(bad)
    assert bool(mod.mask.all())  # unchanged after the failure
    with pytest.raises(ValueError, match="mask"):
        mod.set_mask(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        mod.set_mask([[1]])
    good = ops.tile_mask(torch.rand(32, 24, dtype=torch.float64), 8, 0.5)
    with pytest.raises(ValueError, match="disjoint"):
        mod.set_mask(good, good)
    mod.set_mask(good)
    mod.finalize()
    with pytest.raises(RuntimeError, match="finalized"):
        mod.set_mask(good)


def test_constructor_validation_and_repr():
    with pytest.raises(ValueError, match="in_features"):
        TileSparseLinear(0, 4)
    with pytest.raises(TypeError, match="out_features"):
        TileSparseLinear(4, 2.5)
    with pytest.raises(ValueError, match="tile"):
        TileSparseLinear(4, 4, tile=-1)
    with pytest.raises(TypeError, match="bias"):
        TileSparseLinear(4, 4, bias="yes")
    with pytest.raises(TypeError, match="linear"):
        TileSparseLinear.from_dense(nn.Conv2d(1, 1, 1), 0.5)
    mod = TileSparseLinear(24, 32, tile=8)
    with pytest.raises(ValueError, match="in_features"):
        mod(torch.randn(2, 30))  # wider input: the op alone would accept it
    r = repr(mod)
    assert "in_features=24" in r and "tile=8" in r and "state=masked" in r
    assert "in_features" in TileSparseLinear.__constants__
    mod.prune(0.5)
    mod.reset_parameters()
    assert bool((mod.weight[~mod.mask] == 0).all())
    mod.finalize()
    assert "state=final" in repr(mod)
    mod.reset_parameters()  # re-initialises the packed values
    assert mod.values.abs().sum() > 0


def test_dtype_device_moves_and_deepcopy():
    mod = TileSparseLinear.from_dense(_dense().float(), 0.5, tile=16).finalize()
    m64 = copy.deepcopy(mod).double()
    assert m64.values.dtype == torch.float64 and m64.cols.dtype == torch.int32
    x = torch.randn(3, 40)
    torch.testing.assert_close(m64(x.double()).float(), mod(x), atol=1e-5, rtol=1e-5)
    out = mod(x.bfloat16().float())
    assert out.shape == (3, 70)
    mod.to("cpu")


def test_autocast_computes_in_the_autocast_dtype():
    lin = _dense().float()
    mod = TileSparseLinear.from_dense(lin, 0.5, tile=16, copy=True)
    x = torch.randn(4, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mod(x)
        ref = F.linear(x, lin.weight * mod.mask, lin.bias)  # nn.Linear's autocast behaviour
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), atol=5e-2, rtol=5e-2)
    y.float().sum().backward()
    assert mod.weight.grad.dtype == torch.float32


def test_masked_linear_for_baselines():
    lin = _dense()
    mask = torch.rand(70, 40) > 0.5
    mod = MaskedLinear.from_dense(lin, mask, copy=True)
    x = torch.randn(2, 40, dtype=torch.float64)
    torch.testing.assert_close(mod(x), F.linear(x, lin.weight * mask, lin.bias))
    assert isinstance(mod.to_dense(), nn.Linear)
    assert abs(mod.sparsity - (1 - mask.double().mean().item())) < 1e-12
