"""TileSparseConv2d against F.conv2d with the masked weight, in both states."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse.nn import MaskedConv2d, TileSparseConv2d
from tilesparse.testing import is_tile_wise

CASES = [
    # cin, cout, k, stride, padding, dilation, groups, bias, padding_mode
    (6, 20, 3, 1, 1, 1, 1, True, "zeros"),
    (6, 20, (3, 2), (2, 1), (1, 0), 1, 1, False, "zeros"),
    (8, 24, 3, 1, 2, 2, 1, True, "zeros"),
    (8, 24, 3, 2, 1, 1, 2, True, "zeros"),
    (8, 32, 1, 1, 0, 1, 4, False, "zeros"),
    (6, 20, 3, 1, "same", 1, 1, True, "zeros"),
    (6, 20, (4, 2), 1, "same", (1, 2), 1, True, "zeros"),
    (6, 20, 3, 1, "valid", 1, 1, True, "zeros"),
    (6, 20, 3, 1, 1, 1, 2, True, "reflect"),
    (6, 20, 3, 2, 2, 1, 1, True, "circular"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("delta", [0.0, 0.05])
def test_conv_forward_backward_both_states(case, delta):
    cin, cout, k, s, p, d, g, bias, pm = case
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias, pm).double()
    mod = TileSparseConv2d.from_dense(conv, 0.5, tile=4, delta=delta, copy=True)
    keep = mod.keep_mask()
    assert keep.shape == conv.weight.shape
    for gi, gm in enumerate(mod.gemm_view(mod.tw_mask())):
        assert is_tile_wise(gm, 4), f"group {gi}"
    w_eff = conv.weight.detach() * keep
    x = torch.randn(2, cin, 9, 8, dtype=torch.float64)
    ref_conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias, pm).double()
    with torch.no_grad():
        ref_conv.weight.copy_(w_eff)
        if bias:
            ref_conv.bias.copy_(conv.bias)
    for state in ("masked", "final"):
        if state == "final":
            mod.finalize()
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        y = mod(xa)
        yr = ref_conv(xb)  # F.conv2d on the masked weight
        torch.testing.assert_close(y, yr)
        gout = torch.randn_like(y)
        y.backward(gout)
        ref_conv.zero_grad()
        yr.backward(gout)
        torch.testing.assert_close(xa.grad, xb.grad)
        if state == "masked":
            torch.testing.assert_close(mod.weight.grad, ref_conv.weight.grad * keep)
            assert bool((mod.weight.grad[~keep] == 0).all())
        else:
            wg = mod.gemm_view(ref_conv.weight.grad)
            got = torch.cat([mod.layout(gi).pack(wg[gi].contiguous()) for gi in range(g)])
            torch.testing.assert_close(mod.values.grad, got)
        if bias:
            torch.testing.assert_close(mod.bias.grad, ref_conv.bias.grad)
            mod.bias.grad = None


def test_unbatched_and_to_dense_and_masked_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 16, 3, padding=1).double()
    mod = TileSparseConv2d.from_dense(conv, 0.5, tile=8, copy=True)
    x = torch.randn(4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(mod(x), F.conv2d(x, conv.weight * mod.mask, conv.bias, padding=1))
    dense = mod.to_dense()
    assert type(dense) is nn.Conv2d
    torch.testing.assert_close(dense(x), mod(x))
    mask = torch.rand(conv.weight.shape) > 0.5
    mc = MaskedConv2d.from_dense(conv, mask, copy=True)
    torch.testing.assert_close(mc(x), F.conv2d(x, conv.weight * mask, conv.bias, padding=1))


def test_conv_state_dict_round_trip():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=2).double()
    mod = TileSparseConv2d.from_dense(conv, 0.6, tile=4, copy=True).finalize()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    other = TileSparseConv2d(8, 16, 3, padding=1, groups=2, tile=4, dtype=torch.float64)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other(x), mod(x))
    assert other.layout_meta.shape == (2, 4)


def test_conv_validation_and_repr():
    with pytest.raises(ValueError, match="divisible"):
        TileSparseConv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="padding_mode"):
        TileSparseConv2d(4, 8, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="same"):
        TileSparseConv2d(4, 8, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="kernel_size"):
        TileSparseConv2d(4, 8, 0)
    with pytest.raises(TypeError, match="conv"):
        TileSparseConv2d.from_dense(nn.Linear(2, 2))
    mod = TileSparseConv2d(4, 8, 3, padding=1, tile=4)
    with pytest.raises(ValueError, match="channels"):
        mod(torch.randn(1, 3, 5, 5))
    r = repr(mod)
    assert "kernel_size=(3, 3)" in r and "tile=4" in r
