"""A labelled task: fortune categories, classified by all-MiniLM-L6-v2 with a linear head.

Debian's ``fortunes`` ship one file per category; the category of an entry is
its label. Categories with fewer than ``min_entries`` unique entries are left
out, entries found in two categories are dropped, every category is capped at
``per_class`` entries (hash order, so classes are balanced), and the split is
by a hash of the entry (:func:`tilesparse.study.data.split_texts`).

* **dense**: the encoder + a linear head on the mean-pooled embedding,
  fine-tuned with cross-entropy (accuracy measured after every epoch, to show
  convergence within the budget);
* **pruned**: from the dense fine-tuned model, with :func:`tilesparse.distill`
  (teacher = the dense fine-tuned model): oneshot on the task's training text,
  then ``steps`` steps of task loss + distillation, the same for every
  pattern; two recipes (oneshot + fine-tune, gradual-in-distillation) are
  measured for TW and EW 75% under the same budget and the better one is used
  for every pattern (mean ± std over the seeds, which change the batch order);
* **control**: the dense fine-tuned model through the same fine-tune
  (steps, loss, data, seeds), unpruned: the model "fine-tuned the same way"
  that every pruned row is also compared with.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import mean_pool

__all__ = ["TaskConfig", "TaskData", "task_data", "load_task", "load_transfer", "SentenceClassifier", "run_task"]

Case = Tuple[str, float, int, int]


@dataclass
class TaskConfig:
    min_entries: int = 500        # categories with fewer unique entries are left out
    per_class: int = 400          # cap per category (balanced classes)
    max_length: int = 40
    batch_size: int = 32          # dense fine-tune
    prune_batch_size: int = 16    # pruned fine-tunes (more steps for the same time)
    dense_epochs: int = 2         # dense fine-tune (accuracy after every epoch)
    dense_lr: float = 1e-4
    head_lr: float = 2e-3
    steps: int = 60               # pruned: optimizer steps, every pattern and recipe alike
    lr: float = 3e-4              # pruned fine-tune (distillation)
    calib_batches: int = 16       # oneshot calibration: batches of prune_batch_size (256 sentences)
    cases: Tuple[Case, ...] = (("tw", 0.5, 128, 1), ("tw", 0.75, 128, 1), ("tw", 0.875, 128, 1),
                               ("ew", 0.75, 128, 1), ("bw", 0.75, 128, 1))
    seeds: Tuple[int, ...] = (0, 1, 2)
    compare: Tuple[Case, ...] = (("tw", 0.75, 128, 1), ("ew", 0.75, 128, 1))  # recipes measured on these
    start_fraction: float = 2 / 3  # gradual: oneshot to this fraction of the target, then the cubic ramp
    updates: int = 2              # gradual: mask updates on the ramp (each one a calibrated oneshot: ~20 s here)
    grid_step: float = 0.1        # oneshot's allocation grid (0.05 by default: half the cost here)
    transfer: bool = True         # pruned: every second batch from the left-out categories' unlabelled text
                                  # (distillation terms only). Measured, seed 0, 300 steps (dense 70.26% in that
                                  # run): TW 75% 67.86 -> 68.63%, EW 75% 69.93 -> 70.92%
                                  # (`scripts/probe_task_recipe.py tw:base tw:transfer ew:base ew:transfer`)
    control: bool = True          # the same fine-tune of the unpruned dense model, every seed: the reference
                                  # "fine-tuned the same way". Measured, seed 0, 450 steps: 73.53% against the
                                  # dense fine-tune's 71.90% (`scripts/probe_task_recipe.py dense:transfer`)
    budget_steps: Tuple[int, ...] = ()  # the budget curve: the chosen recipe at these step counts too (seed 0)
    budget_cases: Tuple[Case, ...] = (("tw", 0.75, 128, 1),)
    speed: bool = True


def load_task(min_entries: int = 500, per_class: int = 500, directory: Optional[str] = None
              ) -> Tuple[List[str], List[int], List[str], Dict[str, int]]:
    """``(texts, labels, class names, {category: unique entries})`` of the
    fortune categories kept (all categories' counts are in the dict)."""
    import glob

    from .data import FORTUNE_DIR, _SKIP_FILES, _bucket, load_fortunes

    directory = directory or os.environ.get("TILESPARSE_FORTUNE_DIR", FORTUNE_DIR)
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*"))
                   if os.path.isfile(p) and not os.path.islink(p) and "." not in os.path.basename(p)
                   and os.path.basename(p) not in _SKIP_FILES)
    per_file = {f: load_fortunes(directory, files=[f]) for f in files}
    seen: Dict[str, int] = {}
    for entries in per_file.values():
        for e in set(entries):
            seen[e] = seen.get(e, 0) + 1
    counts = {f: sum(seen[e] == 1 for e in v) for f, v in per_file.items()}
    names = [f for f in files if counts[f] >= min_entries]
    if len(names) < 2:
        raise ValueError(f"fewer than 2 fortune categories with >= {min_entries} entries under {directory!r}")
    texts, labels = [], []
    for c, f in enumerate(names):
        own = sorted((e for e in per_file[f] if seen[e] == 1), key=lambda t: _bucket(t, "class"))[:per_class]
        texts += own
        labels += [c] * len(own)
    return texts, labels, names, counts


def load_transfer(names: Sequence[str], counts: Dict[str, int], task_texts: Sequence[str],
                  directory: Optional[str] = None) -> List[str]:
    """The unlabelled transfer set of the pruned fine-tunes: the entries of the
    categories :func:`load_task` left out (``counts`` holds every category,
    ``names`` the kept ones), less any entry of a kept category, in a
    deterministic order. The student sees the teacher's outputs on them, never
    a label; none of them is a training or test entry of the task."""
    from .data import load_fortunes

    left = sorted(n for n in counts if n not in set(names))
    if not left:
        return []
    own = set(task_texts) | set(load_fortunes(directory, files=list(names)))  # and what load_task dropped as shared
    return sorted(set(load_fortunes(directory, files=left)) - own)


def interleave(labelled: Sequence, unlabelled: Sequence) -> List:
    """``labelled[0], unlabelled[0], labelled[1], ...`` (the longer one's rest at the end)."""
    out: List = []
    for i in range(max(len(labelled), len(unlabelled))):
        out += ([labelled[i]] if i < len(labelled) else []) + ([unlabelled[i]] if i < len(unlabelled) else [])
    return out


class SentenceClassifier(nn.Module):
    """``encoder`` (a Hugging Face encoder) + a linear head on the mean-pooled,
    L2-normalised embedding (sentence-transformers' embedding of MiniLM).
    ``seed``: of the head's initialisation. ``forward`` returns a dict with ``logits``, ``last_hidden_state`` and
    (``output_hidden_states=True``) ``hidden_states``, what
    :class:`tilesparse.losses.EncoderDistillLoss` reads."""

    def __init__(self, encoder: nn.Module, num_classes: int, scale: float = 20.0, seed: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.random.fork_rng(devices=[]):  # the head's init from ``seed``, not from what ran before
            torch.manual_seed(seed)
            self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        self.scale = scale  # the embedding has norm 1: logits need a larger range

    def forward(self, input_ids: Tensor, attention_mask: Tensor, output_hidden_states: bool = False) -> Dict:
        o = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        logits = self.head(self.scale * mean_pool(o.last_hidden_state, attention_mask))
        return {"logits": logits, "last_hidden_state": o.last_hidden_state,
                "hidden_states": o.hidden_states if output_hidden_states else None}


def task_filter(module: nn.Module, fqn: str) -> bool:
    """The encoder layers' Linear modules (not the embeddings, not the head)."""
    from ..nn import SPARSE_MODULES

    return fqn.startswith("encoder.encoder.") and isinstance(module, (nn.Linear,) + SPARSE_MODULES)


def _batches(tokenizer, texts, labels, batch_size, max_length) -> List[Dict[str, Tensor]]:
    from .minilm import make_batches

    y = torch.tensor(labels)
    return [{"input_ids": ids, "attention_mask": m, "labels": y[idx]}
            for idx, ids, m in make_batches(tokenizer, texts, batch_size, max_length)]


@dataclass
class TaskData:
    """The task's text and batches, as :func:`task_data` builds them for the study and its probes."""
    names: List[str]              # the kept categories (class c is names[c])
    counts: Dict[str, int]        # unique entries of every category, kept or left out
    texts: List[str]              # every task entry (training and held out)
    labels: Dict[str, int]        # entry -> class
    train_texts: List[str]
    test_texts: List[str]
    train: List[Dict[str, Tensor]]     # labelled batches of batch_size (dense fine-tune)
    small: List[Dict[str, Tensor]]     # labelled batches of prune_batch_size (calibration, pruned fine-tunes)
    test: List[Dict[str, Tensor]]      # held-out batches of 64
    transfer_texts: List[str]          # the unlabelled transfer set ([] unless cfg.transfer)
    transfer: List[Dict[str, Tensor]]  # its batches of prune_batch_size (no labels)

    @property
    def classes(self) -> int:
        return len(self.names)


def task_data(cfg: TaskConfig, tokenizer) -> TaskData:
    """Load the task (:func:`load_task`), split it by a hash of the entry
    (20% held out) and tokenize it into the batches every run uses."""
    from .data import split_texts
    from .minilm import make_batches

    texts, labels, names, counts = load_task(cfg.min_entries, cfg.per_class)
    lab = dict(zip(texts, labels))
    tr, te = split_texts(texts, 0.2, salt="task")
    extra = load_transfer(names, counts, texts) if cfg.transfer else []
    return TaskData(
        names=list(names), counts=dict(counts), texts=list(texts), labels=lab, train_texts=tr, test_texts=te,
        train=_batches(tokenizer, tr, [lab[t] for t in tr], cfg.batch_size, cfg.max_length),
        small=_batches(tokenizer, tr, [lab[t] for t in tr], cfg.prune_batch_size, cfg.max_length),
        test=_batches(tokenizer, te, [lab[t] for t in te], 64, cfg.max_length),
        transfer_texts=extra,
        transfer=[{"input_ids": ids, "attention_mask": m}
                  for _, ids, m in make_batches(tokenizer, extra, cfg.prune_batch_size, cfg.max_length)])


def _shuffled(batches: Sequence, seed: int) -> List:
    g = torch.Generator().manual_seed(seed)
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def _trainable(model: nn.Module) -> List[nn.Parameter]:
    """Everything but the token embeddings (30522 x 384: their dense gradient costs more than the encoder's)."""
    frozen = {id(p) for p in model.encoder.embeddings.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def _task_loss(out, batch) -> Tensor:
    """Cross-entropy on the batch's labels; 0 on a transfer batch (no labels: distillation terms only)."""
    if "labels" not in batch:
        return out["logits"].sum() * 0.0
    return F.cross_entropy(out["logits"], batch["labels"])


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Dict], classes: int) -> Dict[str, float]:
    """Accuracy and macro-F1 (fractions)."""
    was = model.training
    model.eval()
    pred, true = [], []
    for b in batches:
        pred.append(model(b["input_ids"], b["attention_mask"])["logits"].argmax(-1))
        true.append(b["labels"])
    model.train(was)
    p, t = torch.cat(pred), torch.cat(true)
    f1 = []
    for c in range(classes):
        tp = int(((p == c) & (t == c)).sum())
        fp, fn = int(((p == c) & (t != c)).sum()), int(((p != c) & (t == c)).sum())
        f1.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"accuracy": float((p == t).float().mean()), "macro_f1": sum(f1) / classes}


def finetune_dense(model: SentenceClassifier, train: Sequence[Dict], test: Sequence[Dict], classes: int,
                   cfg: TaskConfig, progress: Optional[bool]) -> List[Dict]:
    """Cross-entropy fine-tune of the dense model; the held-out accuracy after every epoch."""
    from tqdm.auto import tqdm

    torch.manual_seed(0)
    head = list(model.head.parameters())
    enc = [p for p in _trainable(model) if all(p is not h for h in head)]
    for p in model.encoder.embeddings.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([{"params": enc, "lr": cfg.dense_lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=0.01)
    steps = cfg.dense_epochs * len(train)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm)
                                              * 0.5 * (1 + math.cos(math.pi * s / steps)))
    curve = []
    model.train()
    bar = tqdm(total=steps, desc="dense fine-tune", leave=False, disable=None if progress is None else not progress)
    for epoch in range(cfg.dense_epochs):
        losses = []
        for b in _shuffled(train, epoch):
            loss = _task_loss(model(b["input_ids"], b["attention_mask"]), b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
        ev = evaluate(model, test, classes)
        curve.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), **ev})
        bar.set_postfix(acc=f"{ev['accuracy']:.3f}")
    bar.close()
    model.eval()
    return curve


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def start_sparsity(case: Case, recipe: str, cfg: TaskConfig) -> float:
    """The sparsity of the first oneshot: the target (``"oneshot"``) or
    ``start_fraction`` of it (``"gradual"``)."""
    return case[1] if recipe == "oneshot" else round(case[1] * cfg.start_fraction, 4)


def prune_finetune(teacher: SentenceClassifier, train: Sequence[Dict], case: Case, recipe: str, seed: int,
                   cfg: TaskConfig, progress: Optional[bool], pruned: Optional[nn.Module] = None,
                   transfer: Sequence[Dict] = (), teacher_cache=False):
    """One pruned model with :func:`tilesparse.distill`; ``recipe`` ``"oneshot"``
    (oneshot to the target, then fine-tune) or ``"gradual"``. ``pruned``: the
    oneshot model of this case at :func:`start_sparsity` already computed (it
    does not depend on the seed: the same calibration batches for every seed).
    ``transfer``: unlabelled batches, every second one of the loader when given
    (both orders depend on the seed); calibration stays on ``train``.
    ``teacher_cache``: a :class:`tilesparse.TeacherCache` of ``teacher`` shared
    by the runs (the teacher's outputs on a batch computed once). Pattern
    ``"dense"``: the control, the same fine-tune of the unpruned ``pruned``
    (sparsity 0: no oneshot, no mask)."""
    from ..distill import distill
    from ..losses import EncoderDistillLoss

    pattern, s, tile, unit = case
    start = start_sparsity(case, recipe, cfg)
    if pattern == "dense":
        if pruned is None or s != 0:
            raise ValueError("the dense control needs the dense model as `pruned` and sparsity 0")
        pattern, start = "tw", 0.0  # distill's pattern argument is unused at sparsity 0
    student = copy.deepcopy(pruned if pruned is not None else teacher)
    every = max(1, (2 * cfg.steps) // 3 // cfg.updates)
    end = every * cfg.updates  # the last update lands on the end of the ramp (no tiny extra one)
    loader = _shuffled(train, 100 + seed)
    if transfer:
        loader = interleave(loader, _shuffled(transfer, 200 + seed))
    res = distill(student, teacher, loader, s, steps=cfg.steps, pattern=pattern, tile=tile,
                  unit=unit, start_sparsity=start, end_step=end, update_every=every,
                  calib=_shuffled(train, 7)[:cfg.calib_batches], filter_fn=task_filter,
                  loss_fn=EncoderDistillLoss(), task_loss_fn=_task_loss, params=_trainable(student), lr=cfg.lr,
                  prune_start=pruned is None,
                  oneshot_kwargs={"grid_step": cfg.grid_step}, teacher_cache=teacher_cache, progress=progress)
    return res


def run_task(cfg: TaskConfig = TaskConfig(), tokenizer=None, encoder: Optional[nn.Module] = None,
             progress: Optional[bool] = None, on_update=None) -> Tuple[Dict, Dict]:
    """Returns ``(task, details)``: ``task`` in the schema of the issue
    (``name``, ``classes``, ``dense``, ``rows``), ``details`` everything else
    (categories and counts, the dense curve, the recipe comparison, per-seed
    values, speedups, times)."""
    from ..distill import hf_forward
    from ..teacher_cache import TeacherCache
    from .minilm import load_minilm, model_speed

    t0 = time.perf_counter()
    if encoder is None:
        tokenizer, encoder = load_minilm()
    d = task_data(cfg, tokenizer)
    names, counts, tr, te, lab = d.names, d.counts, d.train_texts, d.test_texts, d.labels
    small, test = d.small, d.test
    C = len(names)
    per_class_train = [sum(lab[t] == c for t in tr) for c in range(C)]
    dense = SentenceClassifier(copy.deepcopy(encoder), C)
    curve = finetune_dense(dense, d.train, test, C, cfg, progress)
    dense_ev = evaluate(dense, test, C)
    print(f"task: {C} classes, dense accuracy {dense_ev['accuracy']:.4f} after {cfg.dense_epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    details = {"config": asdict(cfg), "categories": names, "entries": {n: counts[n] for n in names},
               "left_out": {n: v for n, v in counts.items() if n not in names}, "train": len(tr), "test": len(te),
               "train_per_class": dict(zip(names, per_class_train)), "dense_curve": curve,
               "transfer": len(d.transfer_texts),
               "dense_seconds": time.perf_counter() - t0, "runs": [], "recipes": {}}
    task = {"name": f"fortune categories ({C} classes, all-MiniLM-L6-v2 + linear head)", "classes": C,
            "dense": {"accuracy": dense_ev["accuracy"], "macro_f1": dense_ev["macro_f1"]}, "rows": []}

    cache = TeacherCache(dense)  # every run distills from this teacher over the same batches
    oneshots: Dict[Tuple[Case, float], Tuple[nn.Module, float]] = {}  # (case, sparsity) -> oneshot, shared by the seeds

    def pruned(case, s):
        """The oneshot of ``case`` at sparsity ``s`` (the target, or the gradual start), shared by the seeds."""
        from ..oneshot import oneshot

        key = (tuple(case), s)
        if key not in oneshots:
            t = time.perf_counter()
            m = oneshot(copy.deepcopy(dense), _shuffled(small, 7)[:cfg.calib_batches], s, pattern=case[0],
                        tile=case[2], unit=case[3], filter_fn=task_filter, forward_fn=hf_forward,
                        grid_step=cfg.grid_step, progress=False)
            oneshots[key] = (m, time.perf_counter() - t)
            if s == case[1]:
                details.setdefault("oneshot", []).append({"key": list(case), **evaluate(m, test, C),
                                                          "seconds": time.perf_counter() - t})
        return oneshots[key][0]

    def run(case, recipe, seed, steps=cfg.steps, record="runs"):
        t = time.perf_counter()
        res = prune_finetune(dense, small, case, recipe, seed, replace(cfg, steps=steps), progress,
                             pruned(case, start_sparsity(case, recipe, cfg)), d.transfer, cache)
        ev = evaluate(res.model, test, C)
        run = {"pattern": case[0], "sparsity": case[1], "tile": case[2], "unit": case[3], "recipe": recipe,
               "seed": seed, "steps": steps, **ev, "achieved": res.updates[-1][2], "updates": res.updates,
               "loss": [res.losses[0], res.losses[-1]], "update_seconds": res.update_seconds,
               "seconds": time.perf_counter() - t}
        details.setdefault(record, []).append(run)
        print(f"task: {case[0]} {case[1]:.1%} {recipe} seed {seed} {steps} steps: accuracy {ev['accuracy']:.4f} "
              f"({run['seconds']:.0f} s)", flush=True)
        if on_update is not None:
            on_update(task, details)
        return run, res.model

    # the recipes, under the same budget, on the comparison cases (seed 0)
    models = {}
    for case in cfg.compare:
        for recipe in ("oneshot", "gradual"):
            r, m = run(case, recipe, cfg.seeds[0])
            models[(case, recipe)] = m
    score = {rc: sum(r["accuracy"] for r in details["runs"] if r["recipe"] == rc) / max(1, len(cfg.compare))
             for rc in ("oneshot", "gradual")}
    recipe = max(score, key=score.get) if cfg.compare else "oneshot"
    details["recipes"] = {"mean_accuracy": score, "chosen": recipe}
    for case in cfg.cases:
        vals = [r for r in details["runs"] if r["recipe"] == recipe and tuple(r[k] for k in
                ("pattern", "sparsity", "tile", "unit")) == tuple(case)]
        model0 = models.get((tuple(case), recipe))
        for seed in cfg.seeds:
            if any(v["seed"] == seed for v in vals):
                continue
            r, m = run(case, recipe, seed)
            vals.append(r)
            if seed == cfg.seeds[0]:
                model0 = m
        mean, sd = _mean_std([v["accuracy"] for v in vals])
        f1m, f1sd = _mean_std([v["macro_f1"] for v in vals])
        task["rows"].append({"pattern": case[0], "sparsity": case[1], "tile": case[2], "unit": case[3],
                             "accuracy": mean, "accuracy_std": sd, "macro_f1": f1m})
        extra = {"key": list(case), "macro_f1_std": f1sd,
                 "seeds": [v["seed"] for v in vals], "achieved": sum(v["achieved"] for v in vals) / len(vals)}
        if cfg.speed and case[0] in ("tw", "tew") and model0 is not None:
            sb = [(torch.arange(b["input_ids"].shape[0]), b["input_ids"], b["attention_mask"])
                  for b in test[: max(1, len(test) // 4)]]
            extra["speed"] = model_speed(dense.encoder, model0.encoder, sb)
        details.setdefault("rows", []).append(extra)
        if on_update is not None:
            on_update(task, details)
    # the control: the same fine-tune (steps, loss, data, seeds) of the unpruned dense model
    if cfg.control:
        for seed in cfg.seeds:
            t = time.perf_counter()
            res = prune_finetune(dense, small, ("dense", 0.0, 128, 1), "oneshot", seed, cfg, progress, dense,
                                 d.transfer, cache)
            ev = evaluate(res.model, test, C)
            details.setdefault("control_runs", []).append({"seed": seed, **ev, "achieved": res.updates[-1][2],
                                                          "seconds": time.perf_counter() - t})
            print(f"task: dense control seed {seed} {cfg.steps} steps: accuracy {ev['accuracy']:.4f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        mean, sd = _mean_std([r["accuracy"] for r in details["control_runs"]])
        task["control"] = {"accuracy": mean, "accuracy_std": sd,
                           "macro_f1": _mean_std([r["macro_f1"] for r in details["control_runs"]])[0]}
        if on_update is not None:
            on_update(task, details)
    # the budget curve: does the same recipe with more steps close the gap? (seed 0; the row's own run is the
    # config's step count)
    for case in cfg.budget_cases:
        for steps in cfg.budget_steps:
            run(tuple(case), recipe, cfg.seeds[0], steps, "budget")  # run() reports it to on_update
    details["teacher_cache"] = {"entries": len(cache), "hits": cache.hits, "misses": cache.misses,
                                "bytes": cache.nbytes}
    details["seconds"] = time.perf_counter() - t0
    return task, details
