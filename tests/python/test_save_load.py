"""tilesparse.save / tilesparse.load: safetensors + manifest, into a freshly built dense model."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import tilesparse
from tilesparse.nn import MaskedLinear, TileSparseConv2d, TileSparseLinear


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 4 * 4, 48)
        self.fc2 = nn.Linear(48, 40)
        self.head = nn.Linear(40, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _sparse(pattern="tw", final=False, delta=0.0):
    torch.manual_seed(0)
    net = Net()
    net.bn.running_mean.uniform_(-0.1, 0.1)  # buffers outside the sparse layers must round-trip too
    tilesparse.sparsify(net, 0.6, tile=16, pattern=pattern, delta=delta)
    if final:
        tilesparse.finalize(net)
    return net.eval()


@pytest.mark.parametrize("pattern,delta", [("tw", 0.0), ("tew", 0.05), ("ew", 0.0)])
@pytest.mark.parametrize("final", [False, True])
def test_round_trip_into_a_fresh_dense_model(tmp_path, pattern, delta, final):
    net = _sparse(pattern, final, delta)
    x = torch.randn(3, 4, 4, 4)
    ref = net(x)
    path = tmp_path / "net.safetensors"
    tilesparse.save(net, path)

    fresh = Net().eval()  # dense, random: the caller knows neither sparsity nor tile
    out = tilesparse.load(fresh, path)
    assert out is fresh
    torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)
    for name in ("conv", "fc1", "fc2"):
        a, b = getattr(net, name), getattr(fresh, name)
        assert type(a) is type(b)
        assert getattr(b, "finalized", False) == getattr(a, "finalized", False)
        assert torch.equal(a.keep_mask(), b.keep_mask())
        if getattr(a, "finalized", False):  # index buffers restored exactly as stored
            for buf in ("cols", "row_offsets", "rows", "layout_meta"):
                assert torch.equal(getattr(a, buf), getattr(b, buf))
    assert type(fresh.head) is type(net.head)  # nn.Linear for tw/tew: below the tile size, it stays dense
    assert torch.equal(fresh.bn.running_mean, net.bn.running_mean)


def test_manifest_lists_layers_state_tile_unit_shapes(tmp_path):
    net = _sparse("tew", final=True, delta=0.05)
    path = tmp_path / "m.safetensors"
    tilesparse.save(net, path)
    with safe_open(str(path), framework="pt") as f:
        man = json.loads(f.metadata()["tilesparse"])
    assert set(man["layers"]) == {"conv", "fc1", "fc2"}
    fc1 = man["layers"]["fc1"]
    assert fc1["class"] == "TileSparseLinear" and fc1["state"] == "final" and fc1["tew"] is True
    assert fc1["tile"] == 16 and fc1["unit"] == 1
    assert fc1["config"] == {"in_features": 512, "out_features": 48, "bias": True}
    assert fc1["tensors"]["values"]["shape"] == [net.fc1.values.numel()]
    assert man["layers"]["conv"]["config"]["kernel_size"] == [3, 3]


def test_load_into_an_already_sparse_model_replaces_its_layers(tmp_path):
    net = _sparse("tw", final=True)
    path = tmp_path / "a.safetensors"
    tilesparse.save(net, path)
    other = Net()
    tilesparse.sparsify(other, 0.3, tile=8)  # different tile and masks, masked state
    tilesparse.load(other, path)
    x = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(other.eval()(x), net(x), rtol=0, atol=0)
    assert other.fc1.tile == 16 and other.fc1.finalized


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, before, types):
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_mismatched_model_names_the_layer_and_changes_nothing(tmp_path):
    net = _sparse("tw", final=True)
    path = tmp_path / "n.safetensors"
    tilesparse.save(net, path)
    wrong = Net()
    wrong.fc2 = nn.Linear(48, 24)  # out_features differ
    wrong.head = nn.Linear(24, 5)
    before, types = _state(wrong), [type(m) for m in wrong.modules()]
    with pytest.raises(ValueError, match=r"layer 'fc2'.*out_features"):
        tilesparse.load(wrong, path)
    _assert_untouched(wrong, before, types)  # conv and fc1 (checked first) were not swapped in

    missing = Net()
    del missing.fc2
    with pytest.raises(ValueError, match=r"layer 'fc2'.*no such module"):
        tilesparse.load(missing, path)


def test_damaged_file_names_the_layer_and_changes_nothing(tmp_path):
    net = _sparse("tw", final=True)
    path = tmp_path / "d.safetensors"
    tilesparse.save(net, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["fc2.values"] = tensors["fc2.values"][:-3].clone()  # truncated packed values
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    fresh = Net()
    before, types = _state(fresh), [type(m) for m in fresh.modules()]
    with pytest.raises(ValueError, match=r"layer 'fc2'.*values"):
        tilesparse.load(fresh, bad)
    _assert_untouched(fresh, before, types)

    del tensors["fc2.values"]
    tensors["fc2.values"] = load_file(str(path))["fc2.values"]
    del tensors["bn.running_var"]
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="bn.running_var"):
        tilesparse.load(fresh, bad)
    _assert_untouched(fresh, before, types)


def test_file_without_manifest_is_rejected(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="no tilesparse manifest"):
        tilesparse.load(Net(), path)
    with pytest.raises(FileNotFoundError):
        tilesparse.load(Net(), tmp_path / "absent.safetensors")


def test_tied_weights_are_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 32)
            self.proj = nn.Linear(32, 32)
            self.out = nn.Linear(32, 40, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, i):
            return self.out(self.proj(self.emb(i)))

    torch.manual_seed(0)
    m = Tied()
    m.proj = TileSparseLinear.from_dense(m.proj, 0.5, tile=16)
    i = torch.randint(0, 40, (3, 5))
    ref = m(i)
    path = tmp_path / "t.safetensors"
    tilesparse.save(m, path)
    assert "out.weight" not in load_file(str(path))
    fresh = Tied()
    tilesparse.load(fresh, path)
    torch.testing.assert_close(fresh(i), ref, rtol=0, atol=0)
    assert fresh.out.weight is fresh.emb.weight


def test_masked_linear_and_grouped_conv(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 32, 3, groups=2), nn.Flatten(), nn.Linear(32 * 4, 24))
    net[0] = TileSparseConv2d.from_dense(net[0], 0.5, tile=8)
    net[2] = MaskedLinear.from_dense(net[2], mask=torch.rand(24, 128) > 0.5)
    x = torch.randn(2, 8, 4, 4)
    ref = net(x)
    tilesparse.save(net, tmp_path / "g.safetensors")
    fresh = nn.Sequential(nn.Conv2d(8, 32, 3, groups=2), nn.Flatten(), nn.Linear(32 * 4, 24))
    tilesparse.load(fresh, tmp_path / "g.safetensors")
    assert isinstance(fresh[0], TileSparseConv2d) and isinstance(fresh[2], MaskedLinear)
    torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)


def test_unit_is_recorded_and_a_foreign_unit_is_refused(tmp_path):
    net = _sparse("tw", final=True)
    path = tmp_path / "u.safetensors"
    tilesparse.save(net, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    man = json.loads(meta["tilesparse"])
    assert {e["unit"] for e in man["layers"].values()} == {int(getattr(net.fc1, "unit", 1))}
    if hasattr(net.fc1, "unit"):
        return  # this build's modules carry a unit: any recorded value is restorable
    man["layers"]["fc2"]["unit"] = 8
    save_file(load_file(str(path)), str(path), metadata={**meta, "tilesparse": json.dumps(man)})
    with pytest.raises(ValueError, match=r"layer 'fc2'.*unit=8"):
        tilesparse.load(Net(), path)
