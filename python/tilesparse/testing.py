"""Shared test helpers: devices and dtypes to sweep, tolerances, and reference
implementations written independently of the code under test (plain torch,
float64, brute force), so tests compare the kernels against something else.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .layout import TileLayout


def devices() -> List[str]:
    """CPU always; CUDA when a device is present and the CUDA kernels are built."""
    from . import built_with_cuda

    out = ["cpu"]
    if torch.cuda.is_available() and built_with_cuda():
        out.append("cuda")
    return out


def device_params() -> list:
    """``devices()`` plus a skipped "cuda" entry when CUDA is unavailable, for
    ``pytest.mark.parametrize`` (so a CPU-only run reports the CUDA cases as skipped)."""
    import pytest

    out = list(devices())
    if "cuda" not in out:
        out.append(pytest.param("cuda", marks=pytest.mark.skip(reason="no CUDA device or no CUDA kernels built")))
    return out


# float32 CPU operators run a fused kernel family of the widest ISA the CPU
# has (avx512, then avx2; the TEW residue runs its AVX2 kernels under either),
# other dtypes the generic one; TILESPARSE_CPU_KERNEL selects one. Tests sweep
# every family: those this CPU lacks are reported as skipped, naming the kernel.
CPU_KERNELS = ["avx512", "avx2", "generic"]


def supported_cpu_kernels() -> List[str]:
    """The CPU kernel families this CPU and build run (``torch.ops.tilesparse.cpu_kernels_supported``)."""
    return list(torch.ops.tilesparse.cpu_kernels_supported())


def cpu_kernel_params(dtype: Optional[torch.dtype] = None) -> list:
    """One ``pytest.param`` per CPU kernel family (``name``, or ``(dtype, name)``
    with an id ``float32-avx2`` when ``dtype`` is given); those this CPU cannot
    run are skipped with a reason that names them."""
    import pytest

    supported = supported_cpu_kernels()
    out = []
    for name in CPU_KERNELS:
        marks = [] if name in supported else [pytest.mark.skip(
            reason=f"CPU kernel {name!r} not supported by this CPU (supported: {', '.join(supported)})")]
        if dtype is None:
            out.append(pytest.param(name, id=name, marks=marks))
        else:
            out.append(pytest.param((dtype, name), id=f"{str(dtype).split('.')[-1]}-{name}", marks=marks))
    return out


@contextlib.contextmanager
def cpu_kernel(name: Optional[str]) -> Iterator[None]:
    """Selects the CPU kernel family (``TILESPARSE_CPU_KERNEL``; None: the default choice) for the block."""
    old = os.environ.get("TILESPARSE_CPU_KERNEL")
    if name is None:
        os.environ.pop("TILESPARSE_CPU_KERNEL", None)
    else:
        os.environ["TILESPARSE_CPU_KERNEL"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TILESPARSE_CPU_KERNEL", None)
        else:
            os.environ["TILESPARSE_CPU_KERNEL"] = old


FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def tolerance(dtype: torch.dtype) -> dict:
    """atol/rtol for comparing a kernel with a float64 reference in `dtype`."""
    return {
        torch.float64: dict(atol=1e-10, rtol=1e-10),
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
        torch.float16: dict(atol=1e-2, rtol=1e-2),
    }[dtype]


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, reduction_len: int = 1) -> None:
    """Compares a kernel output in its own dtype with a float64 reference.

    The absolute tolerance grows with sqrt(reduction_len) (the length of the
    dot products behind each output), since rounding errors of a sum of
    ``reduction_len`` products add up like a random walk.
    """
    tol = tolerance(actual.dtype)
    scale = max(1.0, float(reduction_len) ** 0.5)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=tol["atol"] * scale,
                               rtol=tol["rtol"])


# ---------------------------------------------------------------------------
# References for tw_linear and the packed format
# ---------------------------------------------------------------------------
def reference_tw_linear(x, weight, mask, bias=None):
    """Dense masked linear in float64: the independent reference for tw_linear."""
    y = F.linear(x.double(), (weight.double() * mask), None if bias is None else bias.double())
    return y


def reference_layout(mask: torch.Tensor, tile: int, pad: int = 8) -> Tuple[List[int], List[int], List[int]]:
    """(cols, row_offsets, rows) of a tile-wise mask, in plain Python (docs/format.md):
    each tile's kept features, then its last one repeated up to a multiple of ``pad`` slots."""
    mask = mask.cpu().bool()
    cols = [c for c in range(mask.shape[0]) if bool(mask[c].any())]
    row_offsets, rows = [0], []
    for start in range(0, len(cols), tile):
        kept = [r for r in range(mask.shape[1]) if bool(mask[cols[start], r])]
        if kept:
            kept += [kept[-1]] * (-len(kept) % pad)
        rows += kept
        row_offsets.append(len(rows))
    return cols, row_offsets, rows


def reference_pack(weight: torch.Tensor, cols: Sequence[int], row_offsets: Sequence[int], rows: Sequence[int],
                   tile: int) -> torch.Tensor:
    """Packed values per docs/format.md, built block by block in Python (zero in padding slots)."""
    blocks = []
    for t in range(len(row_offsets) - 1):
        tc = list(cols[t * tile:(t + 1) * tile])
        tr = list(rows[row_offsets[t]:row_offsets[t + 1]])
        block = weight.cpu()[tc][:, tr].clone()
        for i in range(1, len(tr)):
            if tr[i] == tr[i - 1]:  # padding: the last kept feature repeated
                block[:, i] = 0
        blocks.append(block.reshape(-1))
    if not blocks:
        return weight.new_empty((0,)).cpu()
    return torch.cat(blocks)


# ---------------------------------------------------------------------------
# References for mask selection
# ---------------------------------------------------------------------------
def is_tile_wise(mask: torch.Tensor, tile: int) -> bool:
    """Independent check of the TW structure: kept features, grouped in order
    into tiles of `tile`, keep identical input-feature sets within a tile."""
    kept = mask.any(dim=1).nonzero().flatten()
    for start in range(0, kept.numel(), tile):
        group = mask[kept[start:start + tile]]
        if not bool((group == group[0]).all()):
            return False
    return True


def reference_column_scores(scores: torch.Tensor) -> torch.Tensor:
    """Column (output feature) score: L2 norm of its row divided by K."""
    s = scores.double().cpu()
    k = s.shape[1]
    return s.norm(dim=1) / k if k else torch.zeros(s.shape[0], dtype=torch.float64)


def reference_lowest_columns(col_scores: torch.Tensor, n_prune: int) -> List[int]:
    """Indices of the `n_prune` lowest column scores, ties broken towards the lower index."""
    order = sorted(range(col_scores.numel()), key=lambda c: (float(col_scores[c]), c))
    return sorted(order[:n_prune])


def reference_segment_scores(scores: torch.Tensor, tile: int, cols: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Row-segment scores [T, K] of the tiles formed by regrouping `cols`
    (default: every output feature) into tiles of `tile`:
    ``out[t, r] = ||scores[cols_t, r]||_2 / g_t``."""
    s = scores.double().cpu()
    if cols is None:
        cols = list(range(s.shape[0]))
    out = []
    for start in range(0, len(cols), tile):
        group = s[list(cols[start:start + tile])]
        out.append(group.norm(dim=0) / group.shape[0])
    if not out:
        return torch.zeros(0, s.shape[1], dtype=torch.float64)
    return torch.stack(out)


def mask_sparsity(mask: torch.Tensor) -> float:
    """Fraction of pruned entries (0 for an empty mask)."""
    return 1.0 - float(mask.sum()) / mask.numel() if mask.numel() else 0.0


# ---------------------------------------------------------------------------
# Random tile-wise masks, built without tile_mask
# ---------------------------------------------------------------------------
def random_tw_mask(n: int, k: int, tile: int, row_density: float = 0.5, col_density: float = 1.0,
                   seed: int = 0, full_tile: bool = True) -> torch.Tensor:
    """A random tile-wise bool mask [n, k], independent of tile_mask.

    Keeps a random ``col_density`` share of output features (2-D TW when < 1,
    so tiles have non-contiguous cols), regroups them into tiles of `tile`,
    and keeps a random ``row_density`` share of input features per tile (at
    least one, so every kept feature stays kept). With ``full_tile`` the
    first tile keeps every input feature (the kernels' no-gather path).
    """
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, k, dtype=torch.bool)
    if n == 0 or k == 0:
        return mask
    n_cols = max(1, round(col_density * n))
    cols = torch.randperm(n, generator=g)[:n_cols].sort().values
    for t, start in enumerate(range(0, n_cols, tile)):
        if full_tile and t == 0:
            keep = torch.ones(k, dtype=torch.bool)
        else:
            keep = torch.rand(k, generator=g) < row_density
            if not keep.any():
                keep[int(torch.randint(k, (1,), generator=g))] = True
        mask[cols[start:start + tile]] = keep
    return mask


def random_layout(n: int, k: int, tile: int, sparsity: float, col_sparsity: float = 0.0, seed: int = 0,
                  device="cpu"):
    """A random tile-wise weight, its mask (from tile_mask) and layout."""
    from .ops import tile_mask

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    mask = tile_mask(w.abs(), tile, sparsity, col_sparsity)
    return w.to(device), mask.to(device), TileLayout.from_mask(mask, tile).to(device)


def layout_with_empty_tile(device="cpu") -> Tuple[TileLayout, torch.Tensor]:
    """A hand-built valid layout of a [14, 6] weight, tile 4, covering what
    from_mask never produces: tile 1 (features 4..7) keeps no input features
    (k_t = 0). Tile 0 keeps all of them (no-gather path), tile 2 is
    non-contiguous (features 8, 10, 11, 12) and tile 3 is partial (feature 13).
    Returns (layout, mask of the weights it stores)."""
    cols = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13], dtype=torch.int32)
    row_offsets = torch.tensor([0, 6, 6, 8, 11], dtype=torch.int32)
    rows = torch.tensor([0, 1, 2, 3, 4, 5, 1, 4, 0, 2, 5], dtype=torch.int32)
    layout = TileLayout._build(cols, row_offsets, rows, (14, 6), 4)
    mask = torch.zeros(14, 6, dtype=torch.bool)
    mask[0:4] = True
    for c in (8, 10, 11, 12):
        mask[c, [1, 4]] = True
    mask[13, [0, 2, 5]] = True
    return layout.to(device), mask.to(device)


def random_csr(rows: int, cols: int, density: float, seed: int = 0, device="cpu", empty_rows: int = 2
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row_ptr, cols, mask)`` of a random CSR pattern ``[rows, cols]`` (int32
    indices; ``mask`` the dense bool pattern), with the first ``empty_rows``
    rows empty and column order within a row shuffled (the operators must not
    assume it sorted)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    mask[:empty_rows] = False
    row_ptr = torch.zeros(rows + 1, dtype=torch.int32)
    row_ptr[1:] = mask.sum(1).cumsum(0).to(torch.int32)
    parts = [r.nonzero().flatten()[torch.randperm(int(r.sum()), generator=g)] for r in mask]
    col_idx = (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)).to(torch.int32)
    return row_ptr.to(device), col_idx.to(device), mask.to(device)


def reference_csr_dense(row_ptr: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: Sequence[int]
                        ) -> torch.Tensor:
    """The dense float64 matrix of a CSR (a Python loop over rows; duplicates add)."""
    out = torch.zeros(*shape, dtype=torch.float64)
    rp, c, v = row_ptr.cpu().tolist(), cols.cpu().tolist(), values.detach().double().cpu()
    for n in range(shape[0]):
        for j in range(rp[n], rp[n + 1]):
            out[n, c[j]] += v[j]
    return out
