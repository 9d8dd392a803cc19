"""Helpers on a model's module tree shared by sparsify, serialization and the integrations.

Kept below :mod:`tilesparse.sparsify` (they import only torch and
:mod:`tilesparse.nn`) so that no module needs a private name of sparsify.
"""
from __future__ import annotations

from typing import Tuple

from torch import nn

from .nn import TileSparseBase

__all__ = ["excluded_linear", "gemm_dims", "set_submodule"]


def excluded_linear(module: nn.Module) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly instead of calling it.
    return type(module).__name__ == "NonDynamicallyQuantizableLinear"


def gemm_dims(module: nn.Module) -> Tuple[int, int, int]:
    """(groups, N_g, K) of a Linear / Conv2d (dense or sparse)."""
    if isinstance(module, TileSparseBase):
        return module.gemm_shape
    w = module.weight
    g = getattr(module, "groups", 1) if isinstance(module, nn.Conv2d) else 1
    return g, w.shape[0] // g, w[0].numel()


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    """Puts ``new`` at ``fqn`` in ``model``; returns the root (``new`` itself when ``fqn`` is the root, ``""``)."""
    if fqn == "":
        return new
    parent_name, _, name = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, name, new)
    return model
