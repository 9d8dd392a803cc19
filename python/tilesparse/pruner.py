"""Pruner: prune-then-finetune with a schedule (NVIDIA-ASP-like usage).

::

    pruner = tilesparse.Pruner(model, sparsity=0.75, tile=128, optimizer=opt)  # swaps layers, keeps params
    pruner.prune()                     # one-shot now (or let step() follow the schedule)
    for batch in data:
        loss = ...; loss.backward()
        opt.step(); opt.zero_grad()
        pruner.step()                  # updates masks on schedule, keeps pruned weights at zero
    model = pruner.finalize()          # packed state; build a new optimizer for further training

The swapped modules share the model's Parameters, so an optimizer created
before the Pruner keeps updating them. On every mask update the pruned weights
and their optimizer state (``exp_avg``, ``momentum_buffer``, ... : every
weight-shaped tensor of the optimizer's state) are zeroed; their gradients are
zero by construction, so they stay zero.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .importance import ActivationWeighted, Importance, Taylor, make_importance
from .schedule import Schedule, make_schedule
from ._checks import check_common, check_unit_args
from .patterns import check_allocation
from .sparsify import (FilterFn, compute_masks, finalize, set_module_mask,
                       swap_modules)

__all__ = ["Pruner"]


class Pruner:
    """Prunes ``model`` on a schedule while it trains.

    Args:
        model: the model; its selected ``nn.Linear`` / ``nn.Conv2d`` layers are
            swapped in place (see :func:`tilesparse.sparsify`), sharing Parameters.
        sparsity: final target sparsity.
        pattern, tile, scope, col_sparsity, delta, k_align, unit, filter_fn,
            score_norm, max_layer_sparsity: as :func:`tilesparse.sparsify`
            (``"auto"`` caps at ``1 - (1 - level) / 4`` of each scheduled level). A float
            ``col_sparsity`` is the column share at the final sparsity and
            scales with the scheduled level.
        importance: ``"magnitude"``, ``"taylor"`` (accumulated ``(grad*w)^2``
            since the last mask update: run :meth:`calibrate` or train some
            steps first), ``"activation"``, or an Importance.
        schedule: ``"oneshot"`` (prune at ``start_step``), a list of
            ``(step, sparsity)`` stages, ``"cubic"`` (Zhu & Gupta, with
            ``start_step``, ``end_step``, ``frequency``, ``initial_sparsity``)
            or a :class:`~tilesparse.schedule.Schedule`.
        optimizer: any ``torch.optim`` optimizer over the model's parameters;
            its state for pruned weights is zeroed on each mask update.
        progress: tqdm bars (None: only on a terminal).
    """

    def __init__(self, model: nn.Module, sparsity: float, pattern: str = "tw", tile: int = 128,
                 importance: Union[str, Importance, Callable] = "magnitude",
                 schedule: Union[str, Schedule, Sequence[Tuple[int, float]]] = "oneshot", scope: str = "global",
                 col_sparsity: Union[float, str] = 0.0, delta: float = 0.0, k_align: int = 1,
                 filter_fn: Optional[FilterFn] = None, optimizer: Optional[torch.optim.Optimizer] = None, *,
                 start_step: int = 0, end_step: Optional[int] = None, frequency: int = 1,
                 initial_sparsity: float = 0.0, unit: int = 1, score_norm: Optional[str] = "rms",
                 max_layer_sparsity: Union[float, str, None] = "auto", progress: Optional[bool] = None) -> None:
        sparsity, tile, k_align, delta = check_common(model, sparsity, tile, pattern, scope, col_sparsity, delta,
                                                       k_align, filter_fn)
        self.unit = check_unit_args(pattern, k_align, unit)
        check_allocation(score_norm, max_layer_sparsity)
        self.score_norm = score_norm
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.sparsity, self.pattern, self.tile, self.scope = sparsity, pattern, tile, scope
        self.col_sparsity, self.delta, self.k_align = col_sparsity, delta, k_align
        self.optimizer = optimizer
        self.max_layer_sparsity = max_layer_sparsity
        self.progress = progress
        self.schedule = make_schedule(schedule, sparsity, start_step=start_step, end_step=end_step,
                                      frequency=frequency, initial_sparsity=initial_sparsity)
        self.model, entries = swap_modules(model, pattern, tile, filter_fn)
        self.modules: Dict[str, nn.Module] = dict(entries)
        self.importance = make_importance(importance)
        self.importance.attach(self.modules)
        self.step_count = 0
        self.current_sparsity: Optional[float] = None

    # ------------------------------------------------------------------
    def calibrate(self, batches: Iterable, loss_fn: Optional[Callable] = None, steps: Optional[int] = None,
                  forward_fn: Optional[Callable] = None) -> None:
        """Collects importance statistics on calibration batches (tqdm bar):
        Taylor runs ``loss_fn(model, batch).backward()``; activation-weighted
        runs ``forward_fn(model, batch)`` (default ``model(batch)``)."""
        if isinstance(self.importance, Taylor):
            if loss_fn is None:
                raise ValueError("loss_fn is required to calibrate Taylor importance")
            self.importance.calibrate(self.model, batches, loss_fn, steps, self.progress)
        elif isinstance(self.importance, ActivationWeighted):
            self.importance.calibrate(self.model, batches, forward_fn, steps, self.progress)
        else:
            raise RuntimeError(f"importance {self.importance.name!r} needs no calibration")

    @torch.no_grad()
    def prune(self, sparsity: Optional[float] = None) -> None:
        """Recomputes every mask at ``sparsity`` (default: the final one) now,
        zeroes the pruned weights and their optimizer state, and resets the
        importance statistics."""
        if sparsity is None:
            sparsity = self.sparsity
        if self.pattern == "nm":
            sparsity = 0.5
        sparsity = float(sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        entries = list(self.modules.items())
        if any(getattr(m, "finalized", False) for _, m in entries):
            raise RuntimeError("the model was finalized: its masks can no longer change")
        if entries:
            self.importance.synchronize()
            delta = min(self.delta, max(0.0, 0.999 - sparsity)) if self.pattern == "tew" else 0.0
            masks = compute_masks(entries, self.importance, self.pattern, sparsity, scope=self.scope,
                                  tile=self.tile, col_sparsity=self._col(sparsity), delta=delta,
                                  k_align=self.k_align, unit=self.unit, score_norm=self.score_norm,
                                  max_layer_sparsity=self.max_layer_sparsity, progress=self.progress)
            for (fqn, mod), (mask, residue) in zip(entries, masks):
                set_module_mask(mod, mask, residue, self.unit)
                mod.apply_mask(self.optimizer)
        self.importance.reset()
        self.current_sparsity = sparsity

    def _col(self, sparsity: float):
        if isinstance(self.col_sparsity, str) or self.pattern not in ("tw", "tew"):
            return self.col_sparsity
        # a fixed column share of the final target, scaled along the schedule
        return min(self.col_sparsity * (sparsity / self.sparsity) if self.sparsity > 0 else 0.0, sparsity)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Re-zeroes the pruned weights (and their optimizer state)."""
        for mod in self.modules.values():
            mod.apply_mask(self.optimizer)

    def step(self) -> bool:
        """Call after ``optimizer.step()``. Updates the masks when the schedule's
        target changes, else re-zeroes pruned weights. Returns whether the
        masks were updated."""
        target = self.schedule(self.step_count)
        updated = False
        if target is not None and (self.current_sparsity is None or
                                   not math.isclose(target, self.current_sparsity, abs_tol=1e-12)):
            ready = all(self.importance.ready(f) for f in self.modules)
            if ready:
                self.prune(target)
                updated = True
        if not updated:
            self.apply_masks()
        self.step_count += 1
        return updated

    def finalize(self) -> nn.Module:
        """Removes the importance hooks and converts the model to the packed
        final state; returns the model (build a new optimizer for it)."""
        self.importance.remove()
        self.model = finalize(self.model)
        return self.model

    def remove(self) -> None:
        """Removes the importance hooks, leaving the model in the masked state."""
        self.importance.remove()

    # ------------------------------------------------------------------
    def layer_sparsity(self) -> Dict[str, float]:
        """Current sparsity of every pruned layer."""
        return {fqn: mod.sparsity for fqn, mod in self.modules.items()}

    def state_dict(self) -> Dict[str, Any]:
        """Schedule position and importance statistics (masks live in the
        model's own state_dict)."""
        return {"step_count": self.step_count, "current_sparsity": self.current_sparsity,
                "importance": self.importance.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("step_count", "current_sparsity"):
            if key not in state:
                raise KeyError(f"state is missing {key!r}")
        self.step_count = int(state["step_count"])
        self.current_sparsity = state["current_sparsity"]
        self.importance.load_state_dict(state.get("importance", {}))

    def __repr__(self) -> str:
        return (f"Pruner(sparsity={self.sparsity}, pattern={self.pattern!r}, tile={self.tile}, "
                + (f"unit={self.unit}, " if self.unit != 1 else "") + f"scope={self.scope!r}, "
                f"importance={self.importance.name!r}, schedule={self.schedule!r}, layers={len(self.modules)}, "
                f"step={self.step_count}, current_sparsity={self.current_sparsity})")
