"""Probe: the fine-tune's loss and data on the study's labelled task (fortune categories), oneshot to the target
then :func:`tilesparse.distill` for the full config's 300 steps, seed 0, one variant at a time:

* ``base``: the study's recipe (cross-entropy + ``EncoderDistillLoss()``: embedding cosine, hidden-state nMSE,
  logit KL at T = 2);
* ``logits``: cross-entropy + logit KL only (no embedding, no hidden-state term);
* ``nolabel``: the distillation loss only (no cross-entropy);
* ``transfer``: ``base``, every second batch drawn from an unlabelled transfer set (the fortune categories the
  task leaves out: no entry of the task's training or test text), where only the distillation terms count.

``pattern:variant@N`` runs N optimizer steps instead of the config's (the loader cycles: a budget curve);
``pattern/S`` prunes to sparsity S instead of 0.75; pattern ``dense`` runs the same fine-tune on the unpruned dense
model (sparsity 0: what the recipe itself costs or gains, the control of every pruned row).

Prints one JSON line per (pattern, variant).

    PYTHONPATH=python python3 scripts/probe_task_recipe.py [tw:base tw:logits ew:transfer tw:transfer@1200 ...]

~3 minutes for the dense model, ~1 per oneshot and ~2 per variant on 2 cores.
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
    print("transfer set", len(d.transfer_texts), "entries", flush=True)
    t0 = time.perf_counter()
    dense = T.SentenceClassifier(copy.deepcopy(enc), C)
    T.finetune_dense(dense, d.train, test, C, cfg, False)
    print("dense", T.evaluate(dense, test, C), round(time.perf_counter() - t0), flush=True)
    pruned = {}
    for spec in sys.argv[1:] or ["tw:base", "tw:logits", "tw:nolabel", "tw:transfer"]:
        spec, _, steps = spec.partition("@")
        pattern, variant = spec.split(":")
        pattern, _, sparsity = pattern.partition("/")
        sparsity = 0.0 if pattern == "dense" else float(sparsity or 0.75)
        steps = int(steps or cfg.steps)
        t = time.perf_counter()
        if pattern == "dense":
            pruned[(pattern, sparsity)] = dense
        if (pattern, sparsity) not in pruned:
            pruned[(pattern, sparsity)] = oneshot(copy.deepcopy(dense), T._shuffled(small, 7)[:cfg.calib_batches],
                                                  sparsity, pattern=pattern, tile=128, unit=1,
                                                  filter_fn=T.task_filter, forward_fn=hf_forward,
                                                  grid_step=cfg.grid_step, progress=False)
        student = copy.deepcopy(pruned[(pattern, sparsity)])
        loader = T._shuffled(small, 100)
        loss_fn, weight = EncoderDistillLoss(), 1.0
        if variant == "logits":
            loss_fn = EncoderDistillLoss(embedding_weight=0.0, hidden_weight=0.0)
        elif variant == "nolabel":
            weight = 0.0
        elif variant == "transfer":
            loader = T.interleave(loader, T._shuffled(d.transfer, 200))
        elif variant != "base":
            raise SystemExit(f"unknown variant {variant!r}")
        res = distill(student, dense, loader, sparsity, steps=steps,
                      pattern="tw" if pattern == "dense" else pattern,  # unused at sparsity 0
                      tile=128, unit=1, start_sparsity=sparsity, calib=T._shuffled(small, 7)[:cfg.calib_batches],
                      filter_fn=T.task_filter, loss_fn=loss_fn, task_loss_fn=T._task_loss, task_weight=weight,
                      params=T._trainable(student), lr=cfg.lr, prune_start=False, progress=False)
        ev = T.evaluate(res.model, test, C)
        print(json.dumps(dict(pattern=pattern, sparsity=sparsity, variant=variant, steps=steps, **ev,
                              seconds=round(time.perf_counter() - t))), flush=True)


if __name__ == "__main__":
    main()
