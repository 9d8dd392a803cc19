"""torch.compile(fullgraph=True) of sparsified models: no graph break, eager results,
forward and backward, in the masked and the final state."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse import finalize, sparsify


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, stride=2)
        self.fc1 = nn.Linear(16 * 16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        # reads .weight like transformers' ViT does (a finalized module exposes its dense weight)
        x = x.to(self.conv.weight.dtype)
        h = F.relu(self.conv(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(h)))


def _check(model, x, backend):
    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # raises on any graph break
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa), eager(xb)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)
    pa = dict(model.named_parameters())
    for name, p in eager.named_parameters():
        torch.testing.assert_close(pa[name].grad, p.grad, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("pattern", ["tw", "tew"])
def test_compile_masked_and_final(pattern):
    torch.manual_seed(0)
    model = sparsify(Net(), 0.5, tile=8, pattern=pattern, delta=0.03 if pattern == "tew" else 0.0,
                     filter_fn=lambda m, f: True, scope="layer")
    x = torch.randn(2, 3, 8, 8)
    backend = "inductor" if pattern == "tw" else "aot_eager"  # inductor once: CPU compiles are slow
    _check(model, x, backend)
    finalize(model)
    _check(model, x, backend)
