"""tilesparse quickstart: prune a model tile-wise, fine-tune it, pack it.

    python examples/quickstart.py        (CPU, ~half a minute)

The model is a small MLP that learns to imitate a fixed random, narrower
"teacher" network on correlated inputs (like real activations, they lie
near a low-dimensional subspace); any model with nn.Linear / nn.Conv2d
layers works the same way.
"""
import time

import torch
import torch.nn.functional as F
from torch import nn

import tilesparse

torch.manual_seed(0)
teacher = nn.Sequential(nn.Linear(256, 64), nn.GELU(), nn.Linear(64, 256)).requires_grad_(False)
model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))


mix = torch.randn(32, 256) / 32 ** 0.5


def batch(n=256):
    x = torch.randn(n, 32) @ mix + 0.05 * torch.randn(n, 256)
    return x, teacher(x)


def train(model, steps, lr=2e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x, y = batch()
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def error(model):
    x, y = batch(4096)
    return (F.mse_loss(model(x), y) / y.pow(2).mean()).item()


train(model, 300)
print(f"dense:      relative error {error(model):.4f}")
dense_copy = type(model)(*(nn.Linear(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m for m in model))
dense_copy.load_state_dict(model.state_dict())

# 1. Prune 75% of the weights of every Linear, tile-wise: tiles of 128 output
#    features, each tile keeps its own set of input features. The layers are
#    swapped in place for TileSparseLinear (masked state, same Parameters).
#    scope="layer": every layer at 75% (the default, "global", puts one
#    threshold on the scores of all layers, as the original work does).
tilesparse.sparsify(model, sparsity=0.75, tile=128, pattern="tw", scope="layer")
print(f"one-shot:   relative error {error(model):.4f}   (75% of the weights pruned)")

# 2. Fine-tune with any optimizer: pruned weights get no gradient and stay zero.
#    (tilesparse.Pruner does gradual / staged pruning during training instead.)
train(model, 200, lr=1e-3)
print(f"fine-tuned: relative error {error(model):.4f}")

# 3. Finalize: each tile is packed into one dense block; only the kept weights
#    remain (parameters, gradients and optimizer state shrink by 4x).
tilesparse.finalize(model)
print(model[0])
print(f"finalized:  relative error {error(model):.4f}; "
      f"weights {sum(p.numel() for p in model.parameters())} vs dense {sum(p.numel() for p in dense_copy.parameters())}")

# The packed layers run on tilesparse.ops.tw_linear: time them against dense.
x = batch(2048)[0]
with torch.no_grad():
    for name, m in (("dense", dense_copy), ("tile-wise 75%", model), ("dense", dense_copy), ("tile-wise 75%", model)):
        m(x)
        t0 = time.perf_counter()
        for _ in range(10):
            m(x)
        print(f"{name:>14}: {(time.perf_counter() - t0) / 10 * 1e3:.2f} ms per batch of 2048")
