"""torch.ao.pruning interop: a tile-wise ``BaseSparsifier``.

::

    from torch.ao.pruning import CubicSL
    sparsifier = TileWiseSparsifier(sparsity_level=0.75, tile=128)
    sparsifier.prepare(model, config=None)       # all nn.Linear (or a config list)
    scheduler = CubicSL(sparsifier, init_sl=0.0, init_t=0, delta_t=100, total_t=10)
    for step in ...:
        ...; optimizer.step()
        sparsifier.step(); scheduler.step()
    sparsifier.convert_to_tilesparse()            # -> TileSparseLinear/Conv2d (masked state), or
    sparsifier.squash_mask()                      # -> plain modules with TW zeros

``update_mask`` scores each weight (``|w|`` of the masked weight, so earlier
pruning decisions persist) and writes a tile-wise mask per GEMM group
(:func:`tilesparse.ops.tile_mask`); each layer is pruned to its own
``sparsity_level`` (torch.ao's per-layer model; use
:func:`tilesparse.sparsify` or :class:`tilesparse.Pruner` for one global
threshold).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier

from .nn import TileSparseConv2d, TileSparseLinear
from .patterns import check_unit, resolve_col_sparsity, tw_mask

__all__ = ["TileWiseSparsifier"]


class TileWiseSparsifier(BaseSparsifier):
    """Tile-wise masks for torch.ao.pruning.

    Args (defaults of every config entry; a config dict may override them):
        sparsity_level: fraction of the weight pruned (a scheduler such as
            ``CubicSL`` changes it over time).
        tile: output features per tile.
        col_sparsity: 2-D TW column fraction: a float (capped at the current
            level), or ``"sqrt"`` (``1 - sqrt(1 - level)`` at every level).
        k_align: kept input features per tile are a multiple of this.
        unit: aligned runs of ``unit`` input features of a tile are kept or
            pruned together (``k_align`` and ``unit`` divide one another).
    """

    def __init__(self, sparsity_level: float = 0.5, tile: int = 128, col_sparsity: Union[float, str] = 0.0,
                 k_align: int = 1, unit: int = 1) -> None:
        if isinstance(sparsity_level, bool) or not isinstance(sparsity_level, (int, float)):
            raise TypeError(f"sparsity_level must be a float, got {type(sparsity_level).__name__}")
        if not 0.0 <= sparsity_level <= 1.0:
            raise ValueError(f"sparsity_level must be in [0, 1], got {sparsity_level}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
            raise ValueError(f"tile must be a positive int, got {tile!r}")
        if isinstance(k_align, bool) or not isinstance(k_align, int) or k_align <= 0:
            raise ValueError(f"k_align must be a positive int, got {k_align!r}")
        if isinstance(unit, bool) or not isinstance(unit, int) or unit <= 0:
            raise ValueError(f"unit must be a positive int, got {unit!r}")
        check_unit(k_align, unit)
        if isinstance(col_sparsity, str) and col_sparsity != "sqrt":
            raise ValueError(f"col_sparsity must be a float or 'sqrt', got {col_sparsity!r}")
        super().__init__(defaults={"sparsity_level": float(sparsity_level), "tile": tile,
                                   "col_sparsity": col_sparsity, "k_align": k_align, "unit": unit})

    def make_config_from_model(self, model: nn.Module, SUPPORTED_MODULES=None) -> None:
        """Default config: every nn.Linear and nn.Conv2d."""
        super().make_config_from_model(model, SUPPORTED_MODULES={nn.Linear, nn.Conv2d})

    @torch.no_grad()
    def update_mask(self, module: nn.Module, tensor_name: str, sparsity_level: float, tile: int = 128,
                    col_sparsity: Union[float, str] = 0.0, k_align: int = 1, unit: int = 1,
                    **kwargs: Any) -> None:
        param = module.parametrizations[tensor_name][0]
        mask = param.mask
        param.tile = tile  # read by TileSparse*.from_dense when converting
        level = min(max(float(sparsity_level), 0.0), 1.0)
        if level <= 0.0:
            mask.copy_(torch.ones_like(mask))
            return
        if level >= 1.0:
            mask.copy_(torch.zeros_like(mask))
            return
        w = getattr(module, tensor_name).detach()  # masked weight
        groups = getattr(module, "groups", 1) if w.dim() == 4 else 1
        wv = w.reshape(groups, w.shape[0] // groups, -1).abs().to(torch.float64)
        col = "sqrt" if col_sparsity == "sqrt" else min(float(col_sparsity), level)
        new = torch.stack([tw_mask(wv[g], level, tile, resolve_col_sparsity(col, level), k_align, unit)
                           for g in range(groups)])
        mask.copy_(new.reshape(mask.shape).to(mask.dtype))

    def convert_to_tilesparse(self, model: Optional[nn.Module] = None, finalize: bool = False) -> nn.Module:
        """Replaces every prepared layer with a TileSparseLinear/TileSparseConv2d
        holding its current mask (masked state, or final with ``finalize``),
        removing the parametrization. Returns the model."""
        model = self.model if model is None else model
        for config in self.groups:
            fqn = config["module_fqn"]
            module = config["module"]
            cls = TileSparseConv2d if isinstance(module, nn.Conv2d) else TileSparseLinear
            new = cls.from_dense(module, tile=config.get("tile", 128), unit=config.get("unit", 1), copy=True)
            if finalize:
                new.finalize()
            if fqn in ("", None):
                model = new
            else:
                parent_name, _, name = fqn.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, name, new)
            config["module"] = new
        self.groups = []
        return model
