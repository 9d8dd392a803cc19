"""The TW 50% puzzle: where a tile-wise mask at 50% loses against element-wise.

For every encoder Linear of MiniLM, on the dense model's inputs (calibration
sentences), the relative reconstruction error of the layer's output after the
exact refit of its kept weights, ``||X V^T - X W^T||^2 / ||X W^T||^2``, at a
uniform sparsity (every layer at ``s``), for TW with tiles 32 / 64 / 128 and
for EW, all with oneshot's saliency selection and refit (the same machinery
as :func:`tilesparse.oneshot`). Also: the error each layer gets at the
sparsity the allocation gave it (the study's MiniLM rows), so the allocation's
bounds can be judged by the error they buy.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["layer_errors", "run_puzzle"]


def _kind(fqn: str) -> str:
    if ".attention.self." in fqn:
        return fqn.rsplit(".", 1)[-1][0]  # q / k / v
    if ".attention.output." in fqn:
        return "o"
    return "ffn1" if ".intermediate." in fqn else "ffn2"


@torch.no_grad()
def layer_errors(model: nn.Module, batches: Sequence, configs: Sequence[Tuple[str, int, float]], forward_fn,
                 filter_fn, damp: float = 0.01, allocation: Optional[Dict[str, float]] = None,
                 progress: Optional[bool] = None) -> List[Dict]:
    """``[{"layer", "kind", "n", "k", "<pattern>:<tile>:<sparsity>": error, ...}]``
    for every ``(pattern, tile, sparsity)`` of ``configs`` (uniform: every
    layer at that sparsity) and, with ``allocation`` ``{fqn: sparsity}``,
    ``"alloc"``: TW tile 128 at the layer's allocated sparsity."""
    from .._modules import gemm_dims
    from ..calibration import input_second_moments
    from ..oneshot import _augment, _Pattern, _Solver
    from ..reconstruct import kept_set_error, masked_lstsq

    from tqdm.auto import tqdm

    layers = [(f, m) for f, m in model.named_modules() if isinstance(m, nn.Linear) and filter_fn(m, f)]
    out = []
    for fqn, mod in tqdm(layers, desc="puzzle: per-layer errors", leave=False,
                         disable=None if progress is None else not progress):
        H, = input_second_moments([mod], model, batches, with_ones=[True], forward_fn=forward_fn)
        _, n, k = gemm_dims(mod)
        sv = _Solver(H, None, k, damp)
        W = torch.cat([mod.weight.double(), mod.bias.double().reshape(-1, 1)], 1)
        B, Wopt, scores = sv.problem(W)
        energy = float((Wopt * B).sum())
        row = {"layer": fqn, "kind": _kind(fqn), "n": n, "k": k}
        todo = [(p, t, s, f"{p}:{t}:{s:g}") for p, t, s in configs]
        if allocation and fqn in allocation:
            row["alloc_sparsity"] = allocation[fqn]
            todo.append(("tw", 128, allocation[fqn], "alloc"))
        for pattern, tile, s, key in todo:
            pat = _Pattern(pattern, tile, 1, 0.0, 16, 32, "score")
            mask, _ = pat.select(scores[:, :k], s)
            keep = _augment(mask, True)
            if pat.grouped:
                err = kept_set_error(sv.H, B, Wopt, keep)
            else:  # per-row kept sets: the refit by PCG, the error of that solution
                V = masked_lstsq(sv.H, B, keep, Wopt * keep, max_groups=64, iters=100)
                D = V - Wopt
                err = float(((D @ sv.H) * D).sum())
            row[key] = err / max(energy, 1e-30)
        out.append(row)
    return out


def _mean_by_kind(rows: List[Dict], keys: Sequence[str]) -> Dict[str, Dict[str, float]]:
    kinds: Dict[str, Dict[str, float]] = {}
    for kind in ("q", "k", "v", "o", "ffn1", "ffn2"):
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            kinds[kind] = {key: sum(r[key] for r in rs) / len(rs) for key in keys}
    return kinds


def run_puzzle(tokenizer, dense: nn.Module, sentences: int = 512, sparsity: float = 0.5,
               allocation: Optional[Dict[str, float]] = None, progress: Optional[bool] = None) -> Dict:
    """Per-layer errors at uniform ``sparsity`` (TW 32/64/128, EW) and, when
    ``allocation`` ``{fqn: sparsity}`` is given, at the allocated sparsities."""
    from .data import fortune_split
    from .minilm import _forward, encoder_filter, make_batches

    t0 = time.perf_counter()
    train, _ = fortune_split(sentences, 8)
    batches = make_batches(tokenizer, train, 32, 48)
    configs = [("tw", 128, sparsity), ("tw", 64, sparsity), ("tw", 32, sparsity), ("ew", 128, sparsity),
               ("tw", 128, 0.75), ("ew", 128, 0.75)]
    keys = [f"{p}:{t}:{s:g}" for p, t, s in configs]
    rows = layer_errors(dense, batches, configs, _forward, encoder_filter, allocation=allocation, progress=progress)
    if allocation:
        keys += ["alloc", "alloc_sparsity"]
    res = {"sparsity": sparsity, "sentences": len(train), "keys": keys, "layers": rows,
           "by_kind": _mean_by_kind(rows, keys),
           "mean": {key: sum(r[key] for r in rows) / len(rows) for key in keys}}
    res["seconds"] = time.perf_counter() - t0
    return res


_ALLOC_KIND = {"query": "q", "key": "k", "value": "v", "attention output": "o", "intermediate": "ffn1",
               "output": "ffn2"}


def allocation_of(model: nn.Module, kinds: Dict[str, float]) -> Dict[str, float]:
    """``{fqn: sparsity}`` from a study row's mean sparsity per kind of layer."""
    from .minilm import encoder_filter

    by_kind = {_ALLOC_KIND.get(k, k): v for k, v in kinds.items()}
    return {f: by_kind[_kind(f)] for f, m in model.named_modules()
            if isinstance(m, nn.Linear) and encoder_filter(m, f) and _kind(f) in by_kind}

