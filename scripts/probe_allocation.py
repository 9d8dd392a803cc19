"""Probe: one-shot TW at 75% (tile 128) on MiniLM's 36 encoder linears, the
study's data and held-out cosine, for the global-scope safeguards and unit.

    PYTHONPATH=python python3 scripts/probe_allocation.py

Activation-weighted scores and the calibrated least-squares refit come from
``tilesparse.study.minilm`` (``InputStats``, ``refit``) until issue 11 makes
them public; 5-10 minutes on 2 shared cores. Prints one line per case:
cosine before and after the refit, and the range of per-layer sparsities.
"""
import copy
import time
import warnings

import torch

from tilesparse import sparsify, sparsity_summary
from tilesparse.study.data import fortune_split
from tilesparse.study.minilm import InputStats, embed, encoder_filter, evaluate, load_minilm, make_batches, refit

CASES = [("layer", 1, {}), ("global", 1, dict(score_norm=None, max_layer_sparsity=None)),
         ("global", 1, dict(score_norm=None)), ("global", 1, {}), ("global", 8, {}), ("global", 16, {}),
         ("layer", 8, {}), ("layer", 16, {})]


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    tok, dense = load_minilm()
    train, held = fortune_split(2048, 512)
    ev = make_batches(tok, held, 64, 48)
    calib = make_batches(tok, train, 16, 48)[::4]
    dense_emb = embed(dense, ev, False)
    stats = InputStats(dense, calib, progress=False)
    for scope, unit, kw in CASES:
        t0 = time.time()
        m = copy.deepcopy(dense)
        sparsify(m, 0.75, 128, "tw", encoder_filter, scope, stats.importance, unit=unit, progress=False, **kw)
        before = evaluate(m, ev, dense_emb, False)["cosine"]
        refit(m, stats, progress=False)
        after = evaluate(m, ev, dense_emb, False)["cosine"]
        per = [v["sparsity"] for k, v in sparsity_summary(m).items() if k != "__total__"]
        print(f"scope={scope} unit={unit} {kw or 'defaults'}: cosine one-shot {before:.4f}, refit {after:.4f}, "
              f"layers [{min(per):.3f}, {max(per):.3f}] ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
