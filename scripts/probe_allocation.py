"""Probe: one-shot TW at 75% (tile 128) on MiniLM's 36 encoder linears, the
study's data and held-out cosine, for the global-scope safeguards and unit.

    PYTHONPATH=python python3 scripts/probe_allocation.py

Public API only: activation-weighted scores (``tilesparse.importance.ActivationWeighted``)
select the tiles with ``tilesparse.sparsify``; the refit is the exact least
squares of each layer's kept weights toward its dense outputs on the dense
inputs (``tilesparse.reconstruct.masked_lstsq`` over ``H = X^T X`` from
``tilesparse.calibration.input_second_moments``). 5-10 minutes on 2 shared
cores. Prints one line per case: cosine before and after the refit, and the
range of per-layer sparsities.
"""
import copy
import time
import warnings

import torch

from tilesparse import sparsify, sparsity_summary
from tilesparse.calibration import input_second_moments
from tilesparse.importance import ActivationWeighted
from tilesparse.nn import SPARSE_MODULES
from tilesparse.reconstruct import masked_lstsq
from tilesparse.study.data import fortune_split
from tilesparse.study.minilm import embed, encoder_filter, evaluate, load_minilm, make_batches

CASES = [("layer", 1, {}), ("global", 1, dict(score_norm=None, max_layer_sparsity=None)),
         ("global", 1, dict(score_norm=None)), ("global", 1, {}), ("global", 8, {}), ("global", 16, {}),
         ("layer", 8, {}), ("layer", 16, {})]


def _forward(model, batch):
    return model(input_ids=batch[1], attention_mask=batch[2])


@torch.no_grad()
def refit(model, dense_weights, H) -> None:
    """Each pruned layer's kept weights: ``argmin ||X V^T - X W^T||`` (the bias is unchanged)."""
    for fqn, mod in model.named_modules():
        if isinstance(mod, SPARSE_MODULES):
            W = dense_weights[fqn].to(torch.float64)
            keep = mod.keep_mask()
            V = masked_lstsq(H[fqn], W @ H[fqn], keep, W * keep)
            mod.weight.copy_(V.to(mod.weight.dtype))
            mod.apply_mask()


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    tok, dense = load_minilm()
    train, held = fortune_split(2048, 512)
    ev = make_batches(tok, held, 64, 48)
    calib = make_batches(tok, train, 16, 48)[::4]
    dense_emb = embed(dense, ev, False)
    layers = {fqn: m for fqn, m in dense.named_modules() if encoder_filter(m, fqn)}
    scores = ActivationWeighted()
    scores.attach(layers)
    scores.calibrate(dense, calib, forward_fn=_forward, progress=False)
    scores.remove()
    H = dict(zip(layers, input_second_moments(list(layers.values()), dense, calib, with_ones=[False] * len(layers),
                                              forward_fn=_forward)))
    weights = {fqn: m.weight.detach().clone() for fqn, m in layers.items()}
    for scope, unit, kw in CASES:
        t0 = time.time()
        m = copy.deepcopy(dense)
        sparsify(m, 0.75, 128, "tw", encoder_filter, scope, scores, unit=unit, progress=False, **kw)
        before = evaluate(m, ev, dense_emb, False)["cosine"]
        refit(m, weights, H)
        after = evaluate(m, ev, dense_emb, False)["cosine"]
        per = [v["sparsity"] for k, v in sparsity_summary(m).items() if k != "__total__"]
        print(f"scope={scope} unit={unit} {kw or 'defaults'}: cosine one-shot {before:.4f}, refit {after:.4f}, "
              f"layers [{min(per):.3f}, {max(per):.3f}] ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
