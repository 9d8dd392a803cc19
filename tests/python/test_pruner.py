"""Pruner: schedules, importance scores, optimizer interplay, state."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.pruning import CubicSL

from tilesparse import Pruner, ops
from tilesparse.nn import TileSparseConv2d, TileSparseLinear
from tilesparse.schedule import Cubic, OneShot, Stages, make_schedule
from tilesparse.testing import is_tile_wise


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8)).double()


def data(seed=1, n=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g, dtype=torch.float64)
    return x, torch.sin(x[:, :8]) + 0.1 * x[:, 8:16]


def sparse_layers(model):
    return {f: m for f, m in model.named_modules() if isinstance(m, (TileSparseLinear, TileSparseConv2d))}


def test_oneshot_prune_then_finetune_with_adam():
    model = mlp()
    x, y = data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # built before the Pruner
    pruner = Pruner(model, sparsity=0.75, tile=16, optimizer=opt, max_layer_sparsity=0.95)
    layers = sparse_layers(model)
    assert set(layers) == {"0", "2"}  # the 8-output head is smaller than a tile
    for _ in range(3):  # a few dense steps first: optimizer state everywhere
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    pruner.prune()
    masks = {f: m.mask.clone() for f, m in layers.items()}
    total = sum((~m).sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(total - 0.75) < 0.01
    one_shot = F.mse_loss(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        assert pruner.step() is False  # one-shot: already at the target
    assert F.mse_loss(model(x), y).item() < one_shot  # fine-tuning recovers
    for f, m in layers.items():
        assert torch.equal(m.mask, masks[f])
        assert bool((m.weight[~m.mask] == 0).all())
        st = opt.state[m.weight]
        assert bool((st["exp_avg"][~m.mask] == 0).all()) and bool((st["exp_avg_sq"][~m.mask] == 0).all())
        assert is_tile_wise(m.mask, 16)
    before = model(x)
    model = pruner.finalize()
    assert all(m.finalized for m in layers.values())
    torch.testing.assert_close(model(x), before)


def test_oneshot_at_first_step_and_sgd_momentum():
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner = Pruner(model, 0.5, tile=16, optimizer=opt, scope="layer")
    F.mse_loss(model(x), y).backward()
    opt.step()
    assert pruner.current_sparsity is None
    assert pruner.step() is True
    for m in sparse_layers(model).values():
        assert abs(m.sparsity - 0.5) < 16 / m.weight.numel()
        assert bool((opt.state[m.weight]["momentum_buffer"][~m.mask] == 0).all())
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        pruner.step()
    for m in sparse_layers(model).values():
        assert bool((m.weight[~m.mask] == 0).all())


def test_cubic_schedule_matches_zhu_gupta():
    sched = make_schedule("cubic", 0.8, start_step=2, end_step=10, frequency=2, initial_sparsity=0.1)
    for t in range(14):
        got = sched(t)
        if t < 2:
            assert got is None
            continue
        tq = 2 + ((min(t, 10) - 2) // 2) * 2
        want = CubicSL.sparsity_compute_fn(0.1, 0.8, tq, 2, 2, 4)  # torch.ao's formula
        assert got == pytest.approx(want, abs=1e-12)
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = Pruner(model, 0.8, tile=16, optimizer=opt, schedule="cubic", start_step=2, end_step=10, frequency=2,
                    initial_sparsity=0.1, max_layer_sparsity=0.95)
    prev = None
    updates = []
    for t in range(14):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if pruner.step():
            updates.append(t)
        layers = sparse_layers(model)
        pruned = torch.cat([(~m.mask).flatten() for m in layers.values()])
        if sched(t) is not None:
            assert abs(pruned.double().mean().item() - sched(t)) < 0.01
        if prev is not None:
            assert bool((prev <= pruned).all())  # once pruned, stays pruned
        prev = pruned
    assert updates == [2, 4, 6, 8, 10]


def test_stages_schedule():
    model = mlp()
    x, y = data()
    pruner = Pruner(model, 0.75, tile=16, schedule=[(0, 0.25), (3, 0.5), (6, 0.75)], scope="layer")
    updates = [t for t in range(9) if pruner.step()]
    assert updates == [0, 3, 6]
    assert pruner.current_sparsity == 0.75
    assert isinstance(make_schedule("oneshot", 0.5), OneShot)
    assert isinstance(make_schedule([(0, 0.5)], 0.5), Stages)
    assert Cubic(0.5, 0, 10, 1)(10) == 0.5


def test_taylor_scores_match_manual_accumulation():
    model = mlp()
    ref = copy.deepcopy(model)
    x, y = data()
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    pruner = Pruner(model, 0.5, tile=16, importance="taylor", scope="layer")
    loss_fn = lambda m, b: F.mse_loss(m(b[0]), b[1])  # noqa: E731
    pruner.calibrate(batches, loss_fn)
    # independent: plain autograd on the dense copy
    manual = {"0": torch.zeros(64, 32, dtype=torch.float64), "2": torch.zeros(48, 64, dtype=torch.float64)}
    for b in batches:
        ref.zero_grad()
        loss_fn(ref, b).backward()
        for f in manual:
            w = ref.get_submodule(f).weight
            manual[f] += (w.grad * w.detach()) ** 2
    for f, m in sparse_layers(model).items():
        torch.testing.assert_close(pruner.importance(m, f), manual[f].sqrt())
        assert m.weight.grad is None  # calibration leaves no gradients behind
    pruner.prune()
    for f, m in sparse_layers(model).items():
        assert torch.equal(m.mask, ops.tile_mask(manual[f].sqrt(), 16, 0.5))
    assert pruner.importance.steps["0"] == 0  # reset after the mask update


def test_taylor_needs_statistics():
    model = mlp()
    pruner = Pruner(model, 0.5, tile=16, importance="taylor")
    with pytest.raises(RuntimeError, match="calibrate"):
        pruner.prune()
    with pytest.raises(ValueError, match="loss_fn"):
        pruner.calibrate([1])


def test_activation_weighted_scores():
    model = mlp()
    x, _ = data()
    pruner = Pruner(model, 0.5, tile=16, importance="activation", scope="layer")
    pruner.calibrate([x[:16], x[16:]])
    norm_in = x.pow(2).sum(0).sqrt()
    m0 = model[0]
    torch.testing.assert_close(pruner.importance(m0, "0"), m0.weight.detach().abs() * norm_in)
    # dead inputs (always zero) score zero and are pruned first
    h = F.relu(model[0](x))
    dead = (h == 0).all(0)
    s2 = pruner.importance(model[2], "2")
    assert bool((s2[:, dead] == 0).all())
    pruner.prune()
    assert int(model[2].mask[:, dead].sum()) == 0 or not bool(dead.any())


def test_activation_weighted_conv_features():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, stride=2)).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    pruner = Pruner(conv, 0.5, tile=8, importance="activation")
    pruner.calibrate([x])
    cols = F.unfold(x, 3, padding=1, stride=2)  # [B, 27, L]
    norm = cols.pow(2).sum((0, 2)).sqrt()
    w = conv[0].weight.detach()
    torch.testing.assert_close(pruner.importance(conv[0], "0"), (w.reshape(16, 27).abs() * norm).reshape(w.shape))


def test_tew_and_conv_pruner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 25, 32)).double()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner = Pruner(model, 0.6, pattern="tew", delta=0.02, tile=8, optimizer=opt, scope="layer")
    pruner.prune()
    for m in sparse_layers(model).values():
        assert m.has_residue and abs(m.sparsity - 0.6) < 0.02
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        pruner.step()
    for m in sparse_layers(model).values():
        keep = m.keep_mask()
        assert bool((m.weight[~keep] == 0).all())


def test_state_dict_round_trip():
    model = mlp()
    x, y = data()
    batches = [(x, y)]
    loss_fn = lambda m, b: F.mse_loss(m(b[0]), b[1])  # noqa: E731
    pruner = Pruner(model, 0.5, tile=16, importance="taylor", schedule=[(0, 0.25), (5, 0.5)])
    pruner.calibrate(batches, loss_fn)
    pruner.step()
    pruner.calibrate(batches, loss_fn)
    sd = pruner.state_dict()
    model2 = copy.deepcopy(model)
    p2 = Pruner(model2, 0.5, tile=16, importance="taylor", schedule=[(0, 0.25), (5, 0.5)])
    p2.load_state_dict(sd)
    assert p2.step_count == 1 and p2.current_sparsity == 0.25
    for f in ("0", "2"):
        assert torch.equal(p2.importance.acc[f], pruner.importance.acc[f])
    for _ in range(5):
        pruner.step()
        p2.step()
    for (f, a), b in zip(sparse_layers(model).items(), sparse_layers(model2).values()):
        assert torch.equal(a.mask, b.mask)
    with pytest.raises(KeyError, match="step_count"):
        p2.load_state_dict({})


def test_progress_bar(capsys):
    model = mlp()
    x, y = data()
    pruner = Pruner(model, 0.5, tile=16, importance="taylor", progress=True)
    pruner.calibrate([(x, y)] * 3, lambda m, b: F.mse_loss(m(b[0]), b[1]))
    assert "Taylor calibration" in capsys.readouterr().err


def test_validation_messages():
    model = mlp()
    with pytest.raises(ValueError, match="end_step"):
        Pruner(model, 0.5, tile=16, schedule="cubic")
    with pytest.raises(ValueError, match="schedule"):
        Pruner(model, 0.5, tile=16, schedule="linear")
    with pytest.raises(ValueError, match="strictly increasing"):
        Pruner(model, 0.5, tile=16, schedule=[(3, 0.2), (1, 0.5)])
    with pytest.raises(TypeError, match="optimizer"):
        Pruner(model, 0.5, tile=16, optimizer="adam")
    with pytest.raises(ValueError, match="sparsity"):
        Pruner(model, 1.2, tile=16)
    with pytest.raises(ValueError, match="initial_sparsity"):
        Cubic(0.5, 0, 10, 1, initial_sparsity=0.7)
    p = Pruner(model, 0.5, tile=16)
    assert "Pruner(" in repr(p)
    p.prune()
    p.finalize()
    with pytest.raises(RuntimeError, match="finalized"):
        p.prune()
