"""Probe: does the MiniLM fine-tune gain from more unique distillation text? One oneshot per case (the study's
full config: 2048 calibration sentences), then the study's distillation (400 steps of 16) twice from it: over the
2048 training sentences (the study's budget until now: ~3 passes over them) and over N unique training sentences
(the 2048 and more of the training side; never a held-out one). Prints one JSON line per (case, text).

    PYTHONPATH=python python3 scripts/probe_minilm_text.py [N] [tw:0.75 ew:0.75 tw:0.5 ...]

N defaults to 6400 (one pass at 400 x 16). ~4 minutes of setup, then ~2 per oneshot and ~3 per fine-tune on 2 cores.
"""
import copy
import json
import sys
import time
from dataclasses import replace

from tilesparse.study.__main__ import full_configs, parse_cases
from tilesparse.study.minilm import MiniLMStudy


def main() -> None:
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and args[0].isdigit() else 6400
    cases = parse_cases(",".join(args or ["tw:0.75"]))
    cfg = replace(full_configs()[0], n_distill=n, magnitude=False, speed=False, layer_drop=())
    t0 = time.perf_counter()
    study = MiniLMStudy(cfg, progress=False)
    print("setup", study.n_train, "training,", study.n_distill, "distillation sentences",
          round(time.perf_counter() - t0), "s", flush=True)
    for case in cases:
        m, row = study.variant(*case, finetune=False)
        print(json.dumps(dict(case=list(case), stage="oneshot", **row["calibrated"])), flush=True)
        full = study.distill_batches
        for name, batches in (("train", study.train), ("more", full)):
            t = time.perf_counter()
            s, r = copy.deepcopy(m), dict(row)
            study.distill_batches = batches  # what the study's fine-tune (tilesparse.distill) runs over
            study._finetune(s, r, name)
            sentences = sum(b[0].numel() for b in batches)
            print(json.dumps(dict(case=list(case), stage="finetuned", text=sentences, **r["finetuned"],
                                  loss=r["loss"], seconds=round(time.perf_counter() - t))), flush=True)
        study.distill_batches = full

if __name__ == "__main__":
    main()
