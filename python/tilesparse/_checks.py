"""Argument checks shared by :func:`tilesparse.sparsify` and :class:`tilesparse.Pruner`."""
from __future__ import annotations

from torch import nn

from .patterns import TILE_PATTERNS, check_pattern, check_unit, resolve_col_sparsity

__all__ = ["check_float", "check_int", "check_common", "check_unit_args"]


def check_float(name: str, v, lo=0.0, hi=1.0, hi_inclusive=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    v = float(v)
    if not (lo <= v <= hi if hi_inclusive else lo <= v < hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}{']' if hi_inclusive else ')'}, got {v}")
    return v


def check_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    return v


def check_common(model, sparsity, tile, pattern, scope, col_sparsity, delta, k_align, filter_fn):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_pattern(pattern)
    tile = check_int("tile", tile)
    k_align = check_int("k_align", k_align)
    if pattern == "nm":
        if sparsity is not None and abs(float(sparsity) - 0.5) > 1e-9:
            raise ValueError(f"pattern 'nm' (2:4) has a fixed sparsity of 0.5; got sparsity={sparsity} "
                             "(pass sparsity=0.5)")
        sparsity = 0.5
    sparsity = check_float("sparsity", sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if pattern in TILE_PATTERNS:
        resolve_col_sparsity(col_sparsity, sparsity)  # validates
    elif col_sparsity not in (0, 0.0):
        raise ValueError(f"col_sparsity applies to the tile patterns only, got {col_sparsity} with {pattern!r}")
    delta = check_float("delta", delta)
    if delta > 0 and pattern != "tew":
        raise ValueError(f"delta applies to pattern 'tew' only, got delta={delta} with pattern {pattern!r}")
    if pattern == "tew" and delta <= 0:  # otherwise "tew" would silently be "tw"
        raise ValueError("pattern 'tew' needs delta > 0, the fraction of weights restored as the unstructured "
                         f"residue (about 0.01-0.05; oneshot uses 0.02), got delta={delta}")
    if pattern == "tew" and sparsity + delta >= 1.0:
        raise ValueError(f"sparsity + delta must be < 1, got {sparsity} + {delta}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable (module, fqn) -> bool, got {type(filter_fn).__name__}")
    return sparsity, tile, k_align, delta


def check_unit_args(pattern: str, k_align: int, unit) -> int:
    """Validated ``unit``: tile patterns only, dividing or divided by ``k_align``."""
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise TypeError(f"unit must be an int, got {type(unit).__name__}")
    if unit != 1 and pattern not in TILE_PATTERNS:
        raise ValueError(f"unit applies to the tile patterns only, got unit={unit} with {pattern!r}")
    return check_unit(k_align, unit)[1]
