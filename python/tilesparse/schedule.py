"""Sparsity schedules: the target sparsity as a function of the step count.

``schedule(step)`` returns the sparsity the masks should have at ``step``
(the number of :meth:`Pruner.step` calls before this one), or ``None`` while
pruning has not started.

* :class:`OneShot` - prune once to the final sparsity (prune-then-finetune).
* :class:`Stages` - piecewise constant levels ``[(step, sparsity), ...]``: the
  original's staged recipe (e.g. BERT 25% ... 95%, one level per epoch of
  fine-tuning).
* :class:`Cubic` - gradual pruning of Zhu & Gupta (2017), as torch.ao.pruning's
  ``CubicSL``: ``s_t = s_f + (s_0 - s_f) (1 - (t - t_0) / (t_end - t_0))^3``,
  updated every ``frequency`` steps between ``start_step`` and ``end_step``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

__all__ = ["Schedule", "OneShot", "Stages", "Cubic", "make_schedule"]


def _fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    if not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v}")
    return float(v)


def _step(name: str, v, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


class Schedule:
    """Base class: ``__call__(step) -> Optional[float]``."""

    final: float

    def __call__(self, step: int) -> Optional[float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class OneShot(Schedule):
    """``sparsity`` from ``step`` on (default: the first step)."""

    def __init__(self, sparsity: float, step: int = 0) -> None:
        self.final = _fraction("sparsity", sparsity)
        self.step = _step("step", step)

    def __call__(self, step: int) -> Optional[float]:
        return self.final if step >= self.step else None


class Stages(Schedule):
    """Piecewise-constant levels: ``stages = [(start_step, sparsity), ...]`` with
    strictly increasing steps; before the first step nothing is pruned."""

    def __init__(self, stages: Sequence[Tuple[int, float]]) -> None:
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ValueError("stages must be a non-empty list of (step, sparsity) pairs")
        out: List[Tuple[int, float]] = []
        for i, st in enumerate(stages):
            if not isinstance(st, (list, tuple)) or len(st) != 2:
                raise ValueError(f"stages[{i}] must be a (step, sparsity) pair, got {st!r}")
            s, sp = _step(f"stages[{i}] step", st[0]), _fraction(f"stages[{i}] sparsity", st[1])
            if out and s <= out[-1][0]:
                raise ValueError(f"stages steps must be strictly increasing, got {s} after {out[-1][0]}")
            out.append((s, sp))
        self.stages = out
        self.final = out[-1][1]

    def __call__(self, step: int) -> Optional[float]:
        cur = None
        for s, sp in self.stages:
            if step >= s:
                cur = sp
        return cur


class Cubic(Schedule):
    """Zhu & Gupta's cubic ramp from ``initial_sparsity`` at ``start_step`` to
    ``final_sparsity`` at ``end_step``, updated every ``frequency`` steps."""

    def __init__(self, final_sparsity: float, start_step: int = 0, end_step: int = 1000, frequency: int = 100,
                 initial_sparsity: float = 0.0) -> None:
        self.final = _fraction("final_sparsity", final_sparsity)
        self.initial = _fraction("initial_sparsity", initial_sparsity)
        if self.initial > self.final:
            raise ValueError(f"initial_sparsity must be <= final sparsity ({self.final}), got {self.initial}")
        self.start_step = _step("start_step", start_step)
        self.end_step = _step("end_step", end_step)
        if self.end_step <= self.start_step:
            raise ValueError(f"end_step must be > start_step ({start_step}), got {end_step}")
        self.frequency = _step("frequency", frequency, 1)

    def __call__(self, step: int) -> Optional[float]:
        if step < self.start_step:
            return None
        if step >= self.end_step:
            return self.final
        t = self.start_step + ((step - self.start_step) // self.frequency) * self.frequency
        frac = 1.0 - (t - self.start_step) / (self.end_step - self.start_step)
        return self.final + (self.initial - self.final) * frac ** 3


def make_schedule(schedule: Union[str, Schedule, Sequence[Tuple[int, float]]], sparsity: float, *,
                  start_step: int = 0, end_step: Optional[int] = None, frequency: int = 1,
                  initial_sparsity: float = 0.0) -> Schedule:
    """A :class:`Schedule` from ``"oneshot"``, ``"cubic"`` (with ``start_step``,
    ``end_step``, ``frequency``, ``initial_sparsity``), a list of
    ``(step, sparsity)`` stages, or an instance."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str):
        if schedule == "oneshot":
            return OneShot(sparsity, start_step)
        if schedule == "cubic":
            if end_step is None:
                raise ValueError("schedule='cubic' needs end_step")
            return Cubic(sparsity, start_step, end_step, frequency, initial_sparsity)
        raise ValueError(f"schedule must be 'oneshot', 'cubic', a list of (step, sparsity) stages or a Schedule, "
                         f"got {schedule!r}")
    if isinstance(schedule, (list, tuple)):
        return Stages(schedule)
    raise TypeError(f"schedule must be a str, a list of (step, sparsity) stages or a Schedule, "
                    f"got {type(schedule).__name__}")
