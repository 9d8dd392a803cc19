"""oneshot's block-by-block sequential pass (tilesparse.blockwise): the same
weights as the whole forward per layer group, fewer forwards, and a fallback
(or a clear error) for models that are not a chain of blocks."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tilesparse.blockwise import find_blocks
from tilesparse.oneshot import oneshot


def _tiny_bert(layers=3):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _bert_calib():
    g = torch.Generator().manual_seed(0)
    # padded batches of different lengths: the attention mask is a per-batch keyword argument of every block
    return [{"input_ids": torch.randint(0, 100, (4, 8 + 4 * i), generator=g),
             "attention_mask": (torch.rand(4, 8 + 4 * i, generator=g) > 0.2).long()} for i in range(3)]


def _encoder(mod, fqn):
    return fqn.startswith("encoder.") and isinstance(mod, nn.Linear)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


class _Block(nn.Module):
    def __init__(self, d=32, tuple_out=False):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.tuple_out = tuple_out

    def forward(self, x, scale, *, shift=None):
        y = x + self.down(torch.relu(self.up(self.norm(x)))) * scale + (0 if shift is None else shift)
        return (y, y.mean()) if self.tuple_out else y


class _Chain(nn.Module):
    """Blocks fed by the previous one's output, or (``twist``) not: the model scales it in between."""

    def __init__(self, n=3, tuple_out=False, twist=False, repeat=False):
        super().__init__()
        torch.manual_seed(1)
        self.blocks = nn.ModuleList(_Block(tuple_out=tuple_out) for _ in range(n))
        self.twist, self.repeat = twist, repeat

    def forward(self, x):
        for i, b in enumerate(self.blocks):
            for _ in range(2 if self.repeat and i == 1 else 1):
                out = b(x, 0.5, shift=0.1)
                x = out[0] if isinstance(out, tuple) else out
                if self.twist:
                    x = 2 * x
        return x


def _chain_calib():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(16, 6, 32, generator=g) for _ in range(3)]


def test_find_blocks():
    bert = _tiny_bert()
    fqns = [f for f, m in bert.named_modules() if _encoder(m, f)]
    assert find_blocks(bert, fqns) == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    assert find_blocks(mlp, ["0", "2"]) is None                       # no ModuleList
    chain = _Chain()
    assert find_blocks(chain, ["blocks.0.up", "blocks.2.down"]) == ["blocks.0", "blocks.1", "blocks.2"]
    outside = nn.ModuleDict({"blocks": nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]), "head": nn.Linear(4, 4)})
    assert find_blocks(outside, ["blocks.0", "head"]) is None          # a layer outside the list


@pytest.mark.parametrize("pattern", ["tw", "ew"])
@pytest.mark.parametrize("cache_budget", [0, 1 << 30])
def test_blocks_give_the_same_weights_with_fewer_forwards(pattern, cache_budget):
    bert = _tiny_bert()
    calib = _bert_calib()
    calls = []
    runs = {}
    for blocks in ("auto", None):
        m = copy.deepcopy(bert)
        calls.clear()
        h = m.embeddings.register_forward_hook(lambda *a: calls.append(1))
        m = oneshot(m, calib, 0.5, pattern=pattern, tile=32, filter_fn=_encoder, blocks=blocks,
                    cache_budget=cache_budget, progress=False)
        h.remove()
        runs[blocks] = (_weights(m), len(calls))
    assert torch.equal(runs["auto"][0], runs[None][0])
    # blocks: input groups (1 batch) + allocation + the pipeline's capture (every batch), nothing per group
    assert runs["auto"][1] == 1 + 2 * len(calib)
    assert runs[None][1] > runs["auto"][1] + len(calib)  # the whole forward for each of the 8 groups


def test_tuple_outputs_and_keyword_arguments():
    chain = _Chain(tuple_out=True)
    calib = _chain_calib()
    kw = dict(tile=16, filter_fn=lambda m, f: isinstance(m, nn.Linear), progress=False)
    auto = oneshot(copy.deepcopy(chain), calib, 0.5, **kw)
    explicit = oneshot(copy.deepcopy(chain), calib, 0.5, blocks=["blocks.0", "blocks.1", "blocks.2"], **kw)
    whole = oneshot(copy.deepcopy(chain), calib, 0.5, blocks=None, **kw)
    assert torch.equal(_weights(auto), _weights(whole)) and torch.equal(_weights(explicit), _weights(whole))


@pytest.mark.parametrize("kind, why", [("twist", "not fed the previous block's output"),
                                       ("repeat", "once each, in order")])
def test_not_a_chain_falls_back_or_raises(kind, why):
    chain = _Chain(**{kind: True})
    calib = _chain_calib()
    kw = dict(tile=16, filter_fn=lambda m, f: isinstance(m, nn.Linear), progress=False)
    auto = oneshot(copy.deepcopy(chain), calib, 0.5, **kw)  # "auto": the check fails, the whole forward is used
    whole = oneshot(copy.deepcopy(chain), calib, 0.5, blocks=None, **kw)
    assert torch.equal(_weights(auto), _weights(whole))
    with pytest.raises(ValueError, match=why):
        oneshot(copy.deepcopy(chain), calib, 0.5, blocks=["blocks.0", "blocks.1", "blocks.2"], **kw)


def test_block_errors():
    chain = _Chain()
    calib = _chain_calib()
    kw = dict(tile=16, filter_fn=lambda m, f: isinstance(m, nn.Linear), progress=False)
    with pytest.raises(ValueError, match="in none of the blocks"):
        oneshot(copy.deepcopy(chain), calib, 0.5, blocks=["blocks.0", "blocks.1"], **kw)
    with pytest.raises(ValueError, match="not a submodule"):
        oneshot(copy.deepcopy(chain), calib, 0.5, blocks=["blocks.0", "blocks.1", "blocks.7"], **kw)
    with pytest.raises(ValueError, match="blocks must be"):
        oneshot(copy.deepcopy(chain), calib, 0.5, blocks="layers", **kw)
    with pytest.raises(ValueError, match="blocks must be"):
        oneshot(copy.deepcopy(chain), calib, 0.5, blocks=[0, 1, 2], **kw)
