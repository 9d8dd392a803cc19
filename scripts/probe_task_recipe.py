"""Probe: the fine-tune's loss and data on the study's labelled task (fortune categories), oneshot to the target
then :func:`tilesparse.distill` for the full config's 300 steps, seed 0, one variant at a time:

* ``base``: the study's recipe (cross-entropy + ``EncoderDistillLoss()``: embedding cosine, hidden-state nMSE,
  logit KL at T = 2);
* ``logits``: cross-entropy + logit KL only (no embedding, no hidden-state term);
* ``nolabel``: the distillation loss only (no cross-entropy);
* ``transfer``: ``base``, every second batch drawn from an unlabelled transfer set (the fortune categories the
  task leaves out: no entry of the task's training or test text), where only the distillation terms count.

Prints one JSON line per (pattern, variant).

    PYTHONPATH=python python3 scripts/probe_task_recipe.py [tw:base tw:logits ew:transfer ...]

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
from tilesparse.study.data import split_texts
from tilesparse.study.minilm import load_minilm, make_batches


def main() -> None:
    cfg = full_task_config()
    tok, enc = load_minilm()
    texts, labels, names, counts = T.load_task(cfg.min_entries, cfg.per_class)
    lab = dict(zip(texts, labels))
    tr, te = split_texts(texts, 0.2, salt="task")
    train = T._batches(tok, tr, [lab[t] for t in tr], cfg.batch_size, cfg.max_length)
    small = T._batches(tok, tr, [lab[t] for t in tr], cfg.prune_batch_size, cfg.max_length)
    test = T._batches(tok, te, [lab[t] for t in te], 64, cfg.max_length)
    extra = [{"input_ids": ids, "attention_mask": m}
             for _, ids, m in make_batches(tok, T.load_transfer(names, counts, texts), cfg.prune_batch_size,
                                           cfg.max_length)]
    print("transfer set", sum(b["input_ids"].shape[0] for b in extra), "entries", flush=True)
    C = len(names)
    t0 = time.perf_counter()
    dense = T.SentenceClassifier(copy.deepcopy(enc), C)
    T.finetune_dense(dense, train, test, C, cfg, False)
    print("dense", T.evaluate(dense, test, C), round(time.perf_counter() - t0), flush=True)
    pruned = {}
    for spec in sys.argv[1:] or ["tw:base", "tw:logits", "tw:nolabel", "tw:transfer"]:
        pattern, variant = spec.split(":")
        t = time.perf_counter()
        if pattern not in pruned:
            pruned[pattern] = oneshot(copy.deepcopy(dense), T._shuffled(small, 7)[:cfg.calib_batches], 0.75,
                                      pattern=pattern, tile=128, unit=1, filter_fn=T.task_filter,
                                      forward_fn=hf_forward, grid_step=cfg.grid_step, progress=False)
        student = copy.deepcopy(pruned[pattern])
        loader = T._shuffled(small, 100)
        loss_fn, weight = EncoderDistillLoss(), 1.0
        if variant == "logits":
            loss_fn = EncoderDistillLoss(embedding_weight=0.0, hidden_weight=0.0)
        elif variant == "nolabel":
            weight = 0.0
        elif variant == "transfer":
            loader = T.interleave(loader, T._shuffled(extra, 200))
        elif variant != "base":
            raise SystemExit(f"unknown variant {variant!r}")
        res = distill(student, dense, loader, 0.75, steps=cfg.steps, pattern=pattern, tile=128, unit=1,
                      start_sparsity=0.75, calib=T._shuffled(small, 7)[:cfg.calib_batches], filter_fn=T.task_filter,
                      loss_fn=loss_fn, task_loss_fn=T._task_loss, task_weight=weight, params=T._trainable(student),
                      lr=cfg.lr, prune_start=False, progress=False)
        ev = T.evaluate(res.model, test, C)
        print(json.dumps(dict(pattern=pattern, variant=variant, **ev, seconds=round(time.perf_counter() - t))),
              flush=True)


if __name__ == "__main__":
    main()
