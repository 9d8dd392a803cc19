"""torch.ao.pruning interop: TileWiseSparsifier with prepare / step / squash_mask and CubicSL."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.pruning import CubicSL

from tilesparse.ao import TileWiseSparsifier
from tilesparse.nn import TileSparseConv2d, TileSparseLinear
from tilesparse.testing import is_tile_wise


def model_fn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16)).double()


def test_prepare_step_cubic_squash():
    model = model_fn()
    x = torch.randn(16, 24, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = TileWiseSparsifier(sparsity_level=0.75, tile=8)
    sp.prepare(model, config=[{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    sched = CubicSL(sp, init_sl=0.0, init_t=0, delta_t=1, total_t=4)
    levels = []
    for _ in range(6):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sp.step()
        sched.step()
        masks = [model[i].parametrizations.weight[0].mask.bool() for i in (0, 2)]
        for m in masks:
            assert is_tile_wise(m, 8)
        levels.append(sum((~m).sum().item() for m in masks) / sum(m.numel() for m in masks))
    # the cubic ramp: non-decreasing, ends at the target
    assert all(b >= a - 1e-9 for a, b in zip(levels, levels[1:]))
    assert levels[0] < 0.75 and abs(levels[-1] - 0.75) <= 8 / (24 * 32)
    masks = [model[i].parametrizations.weight[0].mask.bool().clone() for i in (0, 2)]
    sp.squash_mask()
    assert not hasattr(model[0], "parametrizations")
    for i, m in zip((0, 2), masks):
        assert bool((model[i].weight[~m] == 0).all())
        assert is_tile_wise(model[i].weight != 0, 8)


def test_convert_to_tilesparse_matches_parametrized_model():
    model = model_fn()
    x = torch.randn(5, 24, dtype=torch.float64)
    sp = TileWiseSparsifier(sparsity_level=0.5, tile=8, col_sparsity="sqrt")
    sp.prepare(model, config=None)  # every Linear
    sp.step()
    expected = model(x)  # parametrized forward: weight * mask
    masks = [model[i].parametrizations.weight[0].mask.bool().clone() for i in (0, 2)]
    assert int((~masks[0].any(dim=1)).sum()) > 0  # 2-D TW: whole output features pruned
    model = sp.convert_to_tilesparse(model)
    assert isinstance(model[0], TileSparseLinear) and isinstance(model[2], TileSparseLinear)
    assert torch.equal(model[0].mask, masks[0])
    torch.testing.assert_close(model(x), expected)
    # torch.ao's own convert() with a mapping uses TileSparseLinear.from_dense too
    m2 = model_fn()
    sp2 = TileWiseSparsifier(sparsity_level=0.5, tile=8)
    sp2.prepare(m2, config=None)
    sp2.step()
    exp2 = m2(x)
    conv = sp2.convert(m2, mapping={nn.Linear: TileSparseLinear}, inplace=False)
    assert isinstance(conv[0], TileSparseLinear) and conv[0].tile == 8
    torch.testing.assert_close(conv(x), exp2)


def test_conv_groups():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1, groups=2)).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    sp = TileWiseSparsifier(sparsity_level=0.5, tile=4)
    sp.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    sp.step()
    mask = model[0].parametrizations.weight[0].mask.bool().clone()
    for g in mask.reshape(2, 8, -1):
        assert is_tile_wise(g, 4)
    expected = model(x)
    model = sp.convert_to_tilesparse(model, finalize=True)
    assert isinstance(model[0], TileSparseConv2d) and model[0].finalized
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x), F.conv2d(x, model[0].dense_weight(), model[0].bias, padding=1, groups=2))


def test_validation():
    with pytest.raises(ValueError, match="sparsity_level"):
        TileWiseSparsifier(sparsity_level=1.5)
    with pytest.raises(ValueError, match="tile"):
        TileWiseSparsifier(tile=0)
    with pytest.raises(ValueError, match="col_sparsity"):
        TileWiseSparsifier(col_sparsity="half")
    # state_dict of the sparsifier round-trips through torch.ao's own code
    model = model_fn()
    sp = TileWiseSparsifier(sparsity_level=0.5, tile=8)
    sp.prepare(model, config=None)
    sp.step()
    sd = copy.deepcopy(sp.state_dict())
    assert set(sd["state"]) == {"0.weight", "2.weight"}
