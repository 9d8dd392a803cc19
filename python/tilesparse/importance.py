"""Importance scores: one non-negative score per weight, in the weight's shape.

* :class:`Magnitude` - ``|w|`` (of the effective, masked weight).
* :class:`Taylor` - first-order Taylor: ``sqrt(sum_steps (grad * w)^2)``,
  accumulated by a hook on every backward (training steps or
  :meth:`Taylor.calibrate` batches). The square root keeps the score in the
  units of ``|w|``: a row segment's score (its L2 norm) is then
  ``sqrt(sum over the segment and the steps of (grad * w)^2)``, the Taylor
  estimate of the loss change of removing it. ~100 steps as in the original.
* :class:`ActivationWeighted` - ``|w| * ||x_k||_2`` (Wanda-style): weights are
  scaled by the L2 norm of their input feature over calibration batches, so
  weights fed by always-zero inputs (padding, dead ReLU units) score zero.

Scores of weights feeding inputs that never fire are the pitfall of plain
magnitude (see TILESPARSE.md): prefer the data-aware scores with calibration.

Under ``torch.distributed`` the accumulated statistics are summed over ranks
(:meth:`synchronize`) before masks are computed, so every rank gets the same
masks.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Importance", "Magnitude", "Taylor", "ActivationWeighted", "make_importance", "effective_weight"]


def effective_weight(module: nn.Module) -> Tensor:
    """The module's dense weight with pruned entries zero (dense module: its weight)."""
    if hasattr(module, "dense_weight"):
        return module.dense_weight().detach()
    return module.weight.detach()


def _progress(iterable, total=None, desc=None, progress=None):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=(None if progress is None else not progress),
                leave=False)


class Importance:
    """Base class: ``importance(module, fqn) -> scores`` (weight-shaped, >= 0)."""

    name = "importance"

    def attach(self, modules: Dict[str, nn.Module]) -> None:
        """Starts collecting statistics for ``{fqn: module}`` (no-op by default)."""

    def reset(self) -> None:
        """Forgets the collected statistics (after each mask update)."""

    def remove(self) -> None:
        """Removes hooks."""

    def synchronize(self) -> None:
        """Sums statistics over ranks under torch.distributed."""

    def ready(self, fqn: str) -> bool:
        return True

    def __call__(self, module: nn.Module, fqn: str) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class Magnitude(Importance):
    """``|w|``."""

    name = "magnitude"

    def __call__(self, module: nn.Module, fqn: str) -> Tensor:
        return effective_weight(module).abs()


def _all_reduce_(tensors: Iterable[Tensor]) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


class _Accumulating(Importance):
    def __init__(self) -> None:
        self.acc: Dict[str, Tensor] = {}
        self.steps: Dict[str, int] = {}
        self._handles = []
        self._modules: Dict[str, nn.Module] = {}

    def reset(self) -> None:
        for t in self.acc.values():
            t.zero_()
        for k in self.steps:
            self.steps[k] = 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def synchronize(self) -> None:
        _all_reduce_(self.acc[k] for k in sorted(self.acc))

    def ready(self, fqn: str) -> bool:
        return self.steps.get(fqn, 0) > 0

    def state_dict(self) -> Dict[str, Any]:
        return {"acc": {k: v.clone() for k, v in self.acc.items()}, "steps": dict(self.steps)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, v in state.get("acc", {}).items():
            if k in self.acc:
                self.acc[k].copy_(v)
            else:
                self.acc[k] = v.clone()
        self.steps.update(state.get("steps", {}))

    def _check_ready(self, fqn: str) -> None:
        if not self.ready(fqn):
            raise RuntimeError(f"{type(self).__name__} importance has no statistics for {fqn!r}: run calibrate() "
                               "(or some training steps) before pruning")


class Taylor(_Accumulating):
    """First-order Taylor importance ``sqrt(sum_steps (grad * w)^2)``.

    :meth:`attach` registers a post-accumulate-grad hook on each weight: every
    backward adds ``(weight.grad * weight)^2``. (With gradient accumulation the
    hook sees the partial sums; the estimate stays valid.)
    """

    name = "taylor"

    def attach(self, modules: Dict[str, nn.Module]) -> None:
        for fqn, mod in modules.items():
            if getattr(mod, "finalized", False) or fqn in self._modules:
                continue
            w = mod.weight
            self._modules[fqn] = mod
            self.acc[fqn] = torch.zeros_like(w, dtype=torch.float32 if w.dtype in (torch.float16, torch.bfloat16)
                                             else w.dtype, memory_format=torch.contiguous_format)
            self.steps[fqn] = 0

            def hook(p, fqn=fqn):
                if p.grad is not None:
                    g = p.grad.detach()
                    self.acc[fqn].add_((g.to(self.acc[fqn].dtype) * p.detach().to(self.acc[fqn].dtype)) ** 2)
                    self.steps[fqn] += 1

            self._handles.append(w.register_post_accumulate_grad_hook(hook))

    def __call__(self, module: nn.Module, fqn: str) -> Tensor:
        self._check_ready(fqn)
        return self.acc[fqn].sqrt()

    def calibrate(self, model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, Any], Tensor],
                  steps: Optional[int] = None, progress: Optional[bool] = None) -> None:
        """Runs ``loss_fn(model, batch).backward()`` on up to ``steps`` batches
        (no optimizer step), accumulating scores; clears the gradients after."""
        total = steps if steps is not None else (len(batches) if hasattr(batches, "__len__") else None)
        model.zero_grad(set_to_none=True)
        for i, batch in enumerate(_progress(batches, total, "Taylor calibration", progress)):
            if steps is not None and i >= steps:
                break
            loss = loss_fn(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)


class ActivationWeighted(_Accumulating):
    """``|w| * ||x_k||_2``: each weight scaled by the L2 norm of its input
    feature (for a convolution, its im2col feature) over calibration data."""

    name = "activation"

    def attach(self, modules: Dict[str, nn.Module]) -> None:
        for fqn, mod in modules.items():
            if fqn in self._modules:
                continue
            self._modules[fqn] = mod
            self.steps[fqn] = 0

            def hook(m, args, fqn=fqn):
                x = args[0].detach()
                feats = self._features(m, x)
                ss = (feats.to(torch.float64) ** 2).sum(0)
                if fqn in self.acc:
                    self.acc[fqn].add_(ss)
                else:
                    self.acc[fqn] = ss
                self.steps[fqn] += 1

            self._handles.append(mod.register_forward_pre_hook(hook))

    @staticmethod
    def _features(m: nn.Module, x: Tensor) -> Tensor:
        """Inputs as rows of the GEMM: ``[M, groups * K]``."""
        if hasattr(m, "kernel_size"):  # convolution
            if x.dim() == 3:
                x = x.unsqueeze(0)
            pad = m._pad4 if hasattr(m, "_pad4") else None
            if pad is None:
                if isinstance(m.padding, str):
                    pad = [0, 0, 0, 0]
                    if m.padding == "same":
                        pad = []
                        for d, k in zip(reversed(m.dilation), reversed(m.kernel_size)):
                            pad += [d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2]
                else:
                    pad = [m.padding[1], m.padding[1], m.padding[0], m.padding[0]]
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, list(pad), mode=mode)
            cols = F.unfold(x, m.kernel_size, dilation=m.dilation, stride=m.stride)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return x.reshape(-1, x.shape[-1])

    def __call__(self, module: nn.Module, fqn: str) -> Tensor:
        self._check_ready(fqn)
        w = effective_weight(module)
        norm = self.acc[fqn].sqrt().to(w.dtype)
        groups = getattr(module, "groups", 1)
        n = w.shape[0]
        wv = w.reshape(groups, n // groups, -1).abs()
        return (wv * norm.view(groups, 1, -1)).reshape(w.shape)

    def calibrate(self, model: nn.Module, batches: Iterable, forward_fn: Optional[Callable] = None,
                  steps: Optional[int] = None, progress: Optional[bool] = None) -> None:
        """Runs ``forward_fn(model, batch)`` (default ``model(batch)``) without
        gradients on up to ``steps`` batches."""
        total = steps if steps is not None else (len(batches) if hasattr(batches, "__len__") else None)
        with torch.no_grad():
            for i, batch in enumerate(_progress(batches, total, "activation calibration", progress)):
                if steps is not None and i >= steps:
                    break
                forward_fn(model, batch) if forward_fn is not None else model(batch)


_IMPORTANCES = {"magnitude": Magnitude, "taylor": Taylor, "activation": ActivationWeighted}


def make_importance(importance: Union[str, Importance, Callable]) -> Importance:
    """An :class:`Importance` from a name (``"magnitude"``, ``"taylor"``,
    ``"activation"``), an instance, or a callable ``(module, fqn) -> scores``."""
    if isinstance(importance, Importance):
        return importance
    if isinstance(importance, str):
        if importance not in _IMPORTANCES:
            raise ValueError(f"importance must be one of {tuple(_IMPORTANCES)}, an Importance or a callable, "
                             f"got {importance!r}")
        return _IMPORTANCES[importance]()
    if callable(importance):
        fn = importance

        class _Fn(Importance):
            name = getattr(fn, "__name__", "callable")

            def __call__(self, module, fqn):
                return fn(module, fqn)

        return _Fn()
    raise TypeError(f"importance must be a str, an Importance or a callable, got {type(importance).__name__}")
