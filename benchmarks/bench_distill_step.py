"""Seconds per ``tilesparse.distill`` step on the study's labelled task (CPU).

all-MiniLM-L6-v2 + a linear head (the fortune task of ``tilesparse.study.task``),
pruned to 75% by magnitude (TW 128 and EW), batch 16, task + distillation loss,
``--steps`` steps over the study's interleaved labelled/transfer batches. Per
pattern: ``plain`` (the teacher runs every step) and, where the package has it,
``cached`` (a warm :class:`tilesparse.TeacherCache`). Mask-update time is left
out (``prune_start=False``: the loop alone).

A/B against another checkout (its ``python/`` dir, with the built ``_C`` module),
alternating processes so both see the same machine load::

    git worktree add /tmp/old <commit> && cp python/tilesparse/_C*.so /tmp/old/python/tilesparse/
    for i in 1 2 3; do for p in /tmp/old/python python; do
        python benchmarks/bench_distill_step.py --package $p; done; done

Prints one JSON line: ``{"package": ..., "<pattern>_<mode>": seconds per step}``.
"""
import argparse
import copy
import json
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", default=os.path.join(os.path.dirname(__file__), "..", "python"),
                    help="directory holding the tilesparse package to time (default: this checkout's)")
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.package))

    import tilesparse
    from tilesparse.distill import distill
    from tilesparse.losses import EncoderDistillLoss
    from tilesparse.study.minilm import load_minilm
    from tilesparse.study.task import (SentenceClassifier, TaskConfig, _shuffled, _task_loss, _trainable,
                                       interleave, task_data, task_filter)

    tok, enc = load_minilm()
    d = task_data(TaskConfig(), tok)
    teacher = SentenceClassifier(copy.deepcopy(enc), d.classes).eval()
    for p in teacher.encoder.embeddings.parameters():
        p.requires_grad_(False)
    loader = interleave(_shuffled(d.small, 100), _shuffled(d.transfer, 200))[:args.steps]
    out = {"package": os.path.abspath(args.package)}
    for pattern in ("tw", "ew"):
        pruned = tilesparse.sparsify(copy.deepcopy(teacher), 0.75, 128, pattern, task_filter, "layer", "magnitude",
                                     progress=False)
        kw = dict(steps=args.steps, pattern=pattern, start_sparsity=0.75, prune_start=False,
                  loss_fn=EncoderDistillLoss(), task_loss_fn=_task_loss, lr=3e-4, progress=False)
        modes = [("plain", {})]
        if hasattr(tilesparse, "TeacherCache"):
            cache = tilesparse.TeacherCache(teacher)
            distill(copy.deepcopy(pruned), teacher, loader, 0.75, teacher_cache=cache, **kw)  # warms the cache
            modes.append(("cached", {"teacher_cache": cache}))
        for name, extra in modes:
            student = copy.deepcopy(pruned)
            r = distill(student, teacher, loader, 0.75, params=_trainable(student), **kw, **extra)
            out[f"{pattern}_{name}"] = round((r.seconds - r.update_seconds) / args.steps, 4)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
