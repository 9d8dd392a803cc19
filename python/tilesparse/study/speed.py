"""Speed of tile-wise pruned layers against dense ones, on this machine.

Every measurement runs the dense and the sparse version of the same layer in
the same process, interleaved (dense, sparse, dense, sparse, ...), after a
warm-up, and reports the median of the repeats, so drift in the machine's load
affects both alike.
"""
from __future__ import annotations

import platform
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..layout import TileLayout
from ..patterns import tw_mask

__all__ = ["interleaved_median", "time_tw_layer", "layer_speed", "machine_info", "MINILM_SHAPES"]

# (name, in_features K, out_features N) of the MiniLM encoder's Linear layers
MINILM_SHAPES = (("attention q/k/v/o", 384, 384), ("intermediate", 384, 1536), ("output", 1536, 384))


def interleaved_median(fns: Sequence[Callable[[], object]], repeats: int = 15, warmup: int = 2,
                       min_time: float = 0.0) -> List[float]:
    """Median wall time (s) of each function, run in turn ``repeats`` times
    (after ``warmup`` rounds). A call shorter than ``min_time`` is repeated
    within one timing and averaged."""
    for _ in range(warmup):
        for f in fns:
            f()
    inner = []
    for f in fns:
        t0 = time.perf_counter()
        f()
        dt = time.perf_counter() - t0
        inner.append(max(1, int(min_time / dt)) if dt > 0 and min_time > 0 else 1)
    samples: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(inner[i]):
                f()
            samples[i].append((time.perf_counter() - t0) / inner[i])
    return [statistics.median(s) for s in samples]


def tw_layout_for(weight: Tensor, sparsity: float, tile: int) -> TileLayout:
    """Tile-wise layout of ``weight`` pruned by magnitude to ``sparsity``."""
    return TileLayout.from_mask(tw_mask(weight.detach().abs().double(), sparsity, tile), tile)


@torch.no_grad()
def time_tw_layer(weight: Tensor, bias: Optional[Tensor], tokens: int, sparsity: float, tile: int = 128,
                  repeats: int = 15, csr: bool = True, seed: int = 0) -> Dict[str, float]:
    """Times ``F.linear`` with the dense ``weight`` against ``ops.tw_linear``
    with its tile-wise pruned version (and, with ``csr``, torch's CSR sparse
    matmul of an element-wise pruned weight at the same sparsity) on
    ``x[tokens, K]``. Times in milliseconds; ``speedup`` = dense / tw."""
    g = torch.Generator().manual_seed(seed)
    n, k = weight.shape
    x = torch.randn(tokens, k, generator=g, dtype=weight.dtype)
    layout = tw_layout_for(weight, sparsity, tile)
    values = layout.pack(weight.detach().contiguous())
    fns = [lambda: F.linear(x, weight, bias), lambda: ops.tw_linear(x, values, layout, bias)]
    if csr:
        thr = torch.quantile(weight.abs().flatten().double()[:1 << 24], sparsity).item()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
            w_csr = (weight * (weight.abs() > thr)).to_sparse_csr()
        xt = x.t().contiguous()
        fns.append(lambda: torch.sparse.mm(w_csr, xt))
    t = interleaved_median(fns, repeats=repeats)
    out = {"dense_ms": 1e3 * t[0], "tw_ms": 1e3 * t[1], "speedup": t[0] / t[1], "achieved": layout.sparsity,
           "ideal": 1.0 / max(1e-9, 1.0 - layout.sparsity)}
    if csr:
        out["csr_ms"] = 1e3 * t[2]
        out["csr_speedup"] = t[0] / t[2]
    return out


def layer_speed(weights: Optional[Dict[str, Tuple[Tensor, Optional[Tensor]]]] = None, tokens: int = 2048,
                sparsities: Sequence[float] = (0.5, 0.75, 0.875), tile: int = 128, repeats: int = 15,
                csr: bool = True, progress: Optional[bool] = None) -> List[Dict]:
    """Rows of :func:`time_tw_layer` for every layer shape and sparsity.

    ``weights``: ``{name: (weight [N, K], bias)}``; default: random weights of
    the MiniLM shapes (pass the real MiniLM weights for real masks)."""
    from tqdm.auto import tqdm

    if weights is None:
        g = torch.Generator().manual_seed(0)
        weights = {name: (torch.randn(nf, kf, generator=g) / kf ** 0.5, torch.zeros(nf)) for name, kf, nf in MINILM_SHAPES}
    jobs = [(name, w, b, s) for name, (w, b) in weights.items() for s in sparsities]
    rows = []
    for name, w, b, s in tqdm(jobs, desc="layer speed", leave=False, disable=None if progress is None else not progress):
        r = time_tw_layer(w, b, tokens, s, tile, repeats, csr)
        rows.append({"layer": name, "M": tokens, "K": int(w.shape[1]), "N": int(w.shape[0]), "sparsity": s,
                     "tile": tile, **r})
    return rows


def machine_info() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
