"""Probe: TW 75% on the study's labelled task (fortune categories), gradual pruning inside distillation as the
study runs it (seed 0, the full config's 300 steps), with oneshot's allocation bounded at 0.95 (the default,
the study's), at a tighter maximum, or uniform; one dense fine-tune first. Prints one JSON line per variant.

    PYTHONPATH=python python3 scripts/probe_task_bounds.py [0.95 0.85 uniform ...]

~3 minutes for the dense model and ~2.5 per variant on 2 cores.
"""
import copy
import json
import sys
import time

from tilesparse.distill import distill, hf_forward
from tilesparse.losses import EncoderDistillLoss
from tilesparse.oneshot import oneshot
from tilesparse.study import task as T
from tilesparse.study.__main__ import full_task_config
from tilesparse.study.minilm import load_minilm


def main() -> None:
    cfg = full_task_config()
    tok, enc = load_minilm()
    d = T.task_data(cfg, tok)
    small, test, C = d.small, d.test, d.classes
    t0 = time.perf_counter()
    dense = T.SentenceClassifier(copy.deepcopy(enc), C)
    T.finetune_dense(dense, d.train, test, C, cfg, False)
    print("dense", T.evaluate(dense, test, C), round(time.perf_counter() - t0), flush=True)
    variants = sys.argv[1:] or ["0.95", "0.85", "uniform"]
    for v in variants:
        t = time.perf_counter()
        case = ("tw", 0.75, 128, 1)
        start = T.start_sparsity(case, "gradual", cfg)
        kw = dict(allocation="uniform") if v == "uniform" else dict(bounds=(0.0, float(v)))
        m = oneshot(copy.deepcopy(dense), T._shuffled(small, 7)[:cfg.calib_batches], start, pattern="tw", tile=128,
                    unit=1, filter_fn=T.task_filter, forward_fn=hf_forward, grid_step=cfg.grid_step, progress=False, **kw)
        student = copy.deepcopy(m)
        every = max(1, (2 * cfg.steps) // 3 // cfg.updates)
        res = distill(student, dense, T._shuffled(small, 100), 0.75, steps=cfg.steps, pattern="tw", tile=128, unit=1,
                      start_sparsity=start, end_step=every * cfg.updates, update_every=every,
                      calib=T._shuffled(small, 7)[:cfg.calib_batches], filter_fn=T.task_filter,
                      loss_fn=EncoderDistillLoss(), task_loss_fn=T._task_loss, params=T._trainable(student), lr=cfg.lr,
                      prune_start=False, oneshot_kwargs=dict(grid_step=cfg.grid_step, **kw), progress=False)
        ev = T.evaluate(res.model, test, C)
        print(json.dumps(dict(variant=v, **ev, updates=res.updates, seconds=round(time.perf_counter() - t))), flush=True)


if __name__ == "__main__":
    main()
