"""``python -m tilesparse.study [--quick] [--out docs]``: runs the study and
writes ``study.md``, the PNG plots and ``study_results.json`` into ``--out``.

Parts: ``--only minilm,digits,speed,task`` (default all; ``task``: the
labelled fortune-category task, prune-then-finetune against dense). ``--from-json FILE``
rewrites the report from saved results without running anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import replace


def quick_task_config():
    from .task import TaskConfig

    return TaskConfig(per_class=60, dense_epochs=1, steps=6, calib_batches=2, seeds=(0,), updates=1, grid_step=0.25,
                      cases=(("tw", 0.75, 128, 1),), compare=(("tw", 0.75, 128, 1),))


def full_task_config():
    from .task import TaskConfig

    # lr 3e-4 from the budget sweep on TW 75% (100 steps at 1e-4: 63.9%; 300 at 1e-4 / 3e-4 / 6e-4 / 1e-3:
    # 66.1 / 69.2 / 67.9 / 67.0%; 600 at 3e-4: 68.7%). 450 steps since distill's steps got 1.6x cheaper (the
    # teacher's outputs cached across the runs, fused AdamW, no per-step re-masking): the task part stays
    # ~45 min with the gradual recipe (chosen this run; its mask updates cost ~40 s a run).
    # The run with TEW 75% and a budget curve at 1800 steps was stopped after TEW seed 0: 596 s for that one run
    # (69.06% against TW 75%'s 68.74% on seed 0) and the task part already at 54 min; both are left out here
    # (the budget curve measured before: 300 -> 1200 steps +1.63 points on TW 75%, commit e78905d)
    return TaskConfig(steps=450, dense_epochs=3)


def quick_configs():
    from .digits import DigitsConfig
    from .minilm import MiniLMConfig

    return (MiniLMConfig(cases=(("tw", 0.75, 128, 1), ("ew", 0.75, 128, 1)), n_train=256, n_eval=128, steps=20,
                         calib_every=4, speed=False),
            DigitsConfig(patterns=("tw", "ew", "bw"), sparsities=(0.75,), seeds=(0,), epochs=20, finetune_epochs=5),
            dict(sparsities=(0.75,), repeats=5))


def full_configs():
    from .digits import DigitsConfig
    from .minilm import MiniLMConfig

    # the unit 8/16, tile 64 and BW cases of earlier runs left out: the labelled task needs the time (60 min budget)
    # distillation over 6400 unique sentences (one pass at 400 x 16) instead of 3 passes over the 2048 calibration
    # ones: TW 75% fine-tuned 0.7845 -> 0.7956 (`scripts/probe_minilm_text.py 6400 tw:0.75`)
    return (MiniLMConfig(cases=(("tw", 0.75, 128, 1), ("ew", 0.75, 128, 1), ("tw", 0.5, 128, 1)), n_distill=6400),
            DigitsConfig(patterns=("tw", "ew", "bw"), sparsities=(0.5, 0.75, 0.9)),
            dict(sparsities=(0.5, 0.75, 0.875), repeats=7))


def parse_cases(text: str):
    """``"tw:0.75:128:8,ew:0.75"`` -> ``(("tw", 0.75, 128, 8), ("ew", 0.75, 128, 1))``."""
    out = []
    for item in text.split(","):
        f = item.strip().split(":")
        if not f[0]:
            continue
        if len(f) > 4:
            raise ValueError(f"a case is pattern:sparsity[:tile[:unit]], got {item!r}")
        out.append((f[0], float(f[1]) if len(f) > 1 else 0.75, int(f[2]) if len(f) > 2 else 128,
                    int(f[3]) if len(f) > 3 else 1))
    return tuple(out)


def _key(r):
    return (r["pattern"], round(r["sparsity"], 6), r.get("tile"), r.get("unit", 1))


def minilm_layer_weights(model):
    """``{name: (weight, bias)}`` of encoder layer 0's three Linear shapes."""
    lay = model.encoder.layer[0]
    return {"attention q": (lay.attention.self.query.weight.detach(), lay.attention.self.query.bias.detach()),
            "intermediate": (lay.intermediate.dense.weight.detach(), lay.intermediate.dense.bias.detach()),
            "output": (lay.output.dense.weight.detach(), lay.output.dense.bias.detach())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tilesparse.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few cases, short fine-tunes (a few minutes)")
    ap.add_argument("--out", default="docs", help="output directory (default: docs)")
    ap.add_argument("--only", default="minilm,digits,speed,task,puzzle", help="comma-separated parts to run")
    ap.add_argument("--steps", type=int, default=None, help="MiniLM distillation steps per model")
    ap.add_argument("--cases", default=None,
                    help="MiniLM cases pattern:sparsity[:tile[:unit]], comma-separated (default: the full list)")
    ap.add_argument("--train", type=int, default=None, help="MiniLM training sentences (default 2048)")
    ap.add_argument("--distill-text", type=int, default=None,
                    help="MiniLM distillation sentences: the training ones plus more unique ones up to this many")
    ap.add_argument("--calib-every", type=int, default=None,
                    help="MiniLM calibration: every n-th training batch (default 1: all of them)")
    ap.add_argument("--no-layer-drop", action="store_true", help="skip the layer-dropped dense MiniLM")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--from-json", default=None, help="rewrite the report from saved results")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    ap.add_argument("--merge", action="store_true",
                    help="keep the parts of an existing <out>/study_results.json that this run does not redo")
    args = ap.parse_args(argv)

    from . import report

    if args.from_json:
        with open(args.from_json) as fh:
            results = json.load(fh)
        print(report.write_report(results, args.out))
        return 0

    from . import speed as speed_mod

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    progress = False if args.no_progress else True
    parts = set(p.strip() for p in args.only.split(",") if p.strip())
    unknown = parts - {"minilm", "digits", "speed", "task", "puzzle"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from minilm, digits, speed, task, puzzle")
    mcfg, dcfg, scfg = quick_configs() if args.quick else full_configs()
    if args.steps is not None:
        mcfg = replace(mcfg, steps=args.steps)
    if args.cases:
        mcfg = replace(mcfg, cases=parse_cases(args.cases))
    if args.train is not None:
        mcfg = replace(mcfg, n_train=args.train)
    if args.calib_every is not None:
        mcfg = replace(mcfg, calib_every=args.calib_every)
    if args.distill_text is not None:
        mcfg = replace(mcfg, n_distill=args.distill_text)
    if args.no_layer_drop:
        mcfg = replace(mcfg, layer_drop=())
    t0 = time.perf_counter()
    results = {"meta": {**speed_mod.machine_info(), "date": datetime.date.today().isoformat(), "quick": args.quick}}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "study_results.json")

    old = {}
    if args.merge and os.path.exists(json_path):
        with open(json_path) as fh:
            old = json.load(fh)
        for part in ("minilm", "digits", "speed", "task", "task_details", "puzzle"):
            if part in old and part.split("_")[0] not in parts:
                results[part] = old[part]
                if "_" not in part:
                    results["meta"].setdefault("kept", {})[part] = old.get("meta", {}).get("date", "?")

    def save():
        # total = the time of each part (parts may come from an earlier run with --merge)
        results["meta"]["seconds"] = sum(results[p].get("seconds", 0.0) for p in ("minilm", "digits", "speed",
                                                                                 "task_details", "puzzle")
                                         if p in results)
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=1)

    if "digits" in parts:
        from .digits import run_digits

        t = time.perf_counter()
        results["digits"] = run_digits(dcfg, progress)
        results["digits"]["seconds"] = time.perf_counter() - t
        save()
        print(report.digits_table(results["digits"]), flush=True)

    kept, study = {}, None
    if parts & {"minilm", "speed", "task", "puzzle"}:
        from .minilm import MiniLMStudy, load_minilm, run_minilm

        tok, dense = load_minilm()
    if "task" in parts:
        from .task import run_task

        def on_task(task, details):
            results["task"], results["task_details"] = task, details
            save()

        task, details = run_task(quick_task_config() if args.quick else full_task_config(), tok, dense, progress,
                                 on_task)
        on_task(task, details)
        print(report.task_table(results), flush=True)

    if "minilm" in parts:
        study = MiniLMStudy(mcfg, tok, dense, progress=progress)
        old_rows = old.get("minilm", {}).get("rows", [])
        old_seconds = old.get("minilm", {}).get("seconds", 0.0) if old_rows else 0.0

        def on_row(partial):
            # --merge: rows of an earlier run that this one does not redo are kept (one row per case)
            new_keys = {_key(r) for r in partial["rows"]}
            kept_rows = [r for r in old_rows if _key(r) not in new_keys]
            partial["rows"] = kept_rows + partial["rows"]
            if kept_rows:  # the MiniLM time is that of both runs
                results["meta"]["merged"] = True
                partial["seconds"] = partial.get("seconds", 0.0) + old_seconds
            results["minilm"] = partial
            save()

        res, kept = run_minilm(mcfg, progress, study, on_row)
        on_row(res)
        print(report.minilm_table(results["minilm"]), flush=True)

    if "speed" in parts:
        t = time.perf_counter()
        layers = speed_mod.layer_speed(minilm_layer_weights(dense), tokens=2048, tile=128, progress=progress,
                                       **scfg)
        results["speed"] = {"layers": layers}  # whole-encoder speed: per MiniLM row ("speed")
        results["speed"]["seconds"] = time.perf_counter() - t
        save()
        print(report.speed_table(layers), flush=True)

    if "puzzle" in parts:  # after minilm: the TW 50% row's allocation is judged too
        from .puzzle import allocation_of, run_puzzle

        tw50 = next((r for r in results.get("minilm", {}).get("rows", []) if r["pattern"] == "tw"
                     and abs(r["sparsity"] - 0.5) < 1e-9 and r.get("tile") == 128 and "allocation" in r), None)
        results["puzzle"] = run_puzzle(tok, dense, 128 if args.quick else 256, 0.5,
                                       allocation_of(dense, tw50["allocation"]) if tw50 else None, progress)
        save()

    save()
    path = report.write_report(results, args.out)
    print(f"wrote {path} and {json_path} ({(time.perf_counter() - t0) / 60:.1f} min)")
    for crit, measured, ok in report.acceptance(results) + report.task_acceptance(results):
        print(f"  [{'reported' if ok is None else 'met' if ok else 'NOT met'}] {crit}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
