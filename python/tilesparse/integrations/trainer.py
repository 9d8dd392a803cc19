"""``PruningCallback``: tile-wise pruning inside a transformers ``Trainer``."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Optional, Sequence, Tuple, Union

from torch import nn
from transformers import TrainerCallback

from .._checks import check_common, check_unit_args
from ..importance import make_importance
from ..patterns import check_allocation
from ..pruner import Pruner
from ..schedule import Schedule, make_schedule
from ..sparsify import sparsity_summary
from .hf_quantizer import attach

__all__ = ["PruningCallback"]

logger = logging.getLogger("tilesparse")


class PruningCallback(TrainerCallback):
    """Prunes a model inside ``Trainer.train()`` with a :class:`tilesparse.Pruner`.

    ::

        cb = PruningCallback(sparsity=0.75, tile=128, schedule="cubic")       # gradual (Zhu & Gupta)
        cb = PruningCallback(0.75, schedule=[(0, 0.25), (100, 0.5), (200, 0.75)])  # staged
        Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()

    At the start of training the selected layers are swapped for sparse ones
    (sharing the Parameters, so the Trainer's optimizer keeps training them).
    After every optimizer step :meth:`Pruner.step` updates the masks when the
    schedule says so and otherwise re-zeroes the pruned weights and their
    optimizer state. The current sparsity is added to every log entry
    (``"sparsity"``) and each mask update is logged. ``finalize=True`` packs
    the model at the end of training (then save it with ``save_pretrained``).

    Args:
        sparsity: final target sparsity.
        schedule: ``"cubic"`` (default), ``"oneshot"``, stages
            ``[(step, sparsity), ...]`` or a :class:`~tilesparse.schedule.Schedule`;
            steps count optimizer steps.
        end_step: last step of the cubic ramp (default: 3/4 of the run's
            ``max_steps``, leaving the rest for fine-tuning at the target).
        finalize: pack the model when training ends.
        **pruner_kwargs: passed to :class:`tilesparse.Pruner` (``pattern``,
            ``tile``, ``importance``, ``scope``, ``delta``, ``filter_fn``,
            ``start_step``, ``frequency``, ...).
    """

    def __init__(self, sparsity: float, schedule: Union[str, Sequence[Tuple[int, float]], Any] = "cubic", *,
                 end_step: Optional[int] = None, finalize: bool = False, **pruner_kwargs) -> None:
        _validate(sparsity, schedule, end_step, finalize, pruner_kwargs)
        self.sparsity, self.schedule, self.end_step = sparsity, schedule, end_step
        self.finalize, self.pruner_kwargs = finalize, pruner_kwargs
        self.pruner: Optional[Pruner] = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise RuntimeError("PruningCallback needs the model (the Trainer passes it to callbacks)")
        if self.pruner is not None:  # a second train() call (e.g. resuming) continues the same run
            self.pruner.optimizer = optimizer
            return
        kw = dict(self.pruner_kwargs)
        if self.schedule == "cubic" and self.end_step is None and "end_step" not in kw:
            kw["end_step"] = max(kw.get("start_step", 0) + 1, (3 * state.max_steps) // 4)
        elif self.end_step is not None:
            kw["end_step"] = self.end_step
        self.pruner = Pruner(model, self.sparsity, schedule=self.schedule, optimizer=optimizer, **kw)
        if self.pruner.model is not model:
            raise ValueError("PruningCallback cannot prune a model whose root module is itself a Linear/Conv2d")
        attach(model)

    def on_step_end(self, args, state, control, **kwargs):
        # after optimizer.step() (and zero_grad): once per optimizer step, whatever the accumulation
        if self.pruner is not None and self.pruner.step():
            logger.info("tilesparse: step %d: masks updated to sparsity %.4f (target %.4f)", state.global_step,
                        self.current_sparsity(), self.pruner.current_sparsity)

    def current_sparsity(self) -> float:
        """Measured sparsity over the pruned layers."""
        if self.pruner is None:
            return 0.0
        return float(sparsity_summary(self.pruner.model)["__total__"]["sparsity"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pruner is None or logs is None:
            return
        s = round(self.current_sparsity(), 4)
        logs["sparsity"] = s  # printed by the progress/printer callback, which runs after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["sparsity"] = s

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.pruner is None:
            return
        if self.finalize:
            self.pruner.finalize()
            logger.info("tilesparse: finalized at sparsity %.4f", self.current_sparsity())
        else:
            self.pruner.remove()


_PRUNER_ARGS = set(inspect.signature(Pruner.__init__).parameters) - {"self", "model", "sparsity", "schedule",
                                                                      "optimizer"}


def _validate(sparsity, schedule, end_step, finalize, pruner_kwargs) -> None:
    """Every check :class:`Pruner` makes that needs no model, at construction
    (not when training begins): errors name the argument."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float, got {type(sparsity).__name__}")
    if not isinstance(finalize, bool):
        raise TypeError(f"finalize must be a bool, got {type(finalize).__name__}")
    if "optimizer" in pruner_kwargs or "model" in pruner_kwargs:
        raise TypeError("PruningCallback takes the model and optimizer from the Trainer")
    unknown = sorted(set(pruner_kwargs) - _PRUNER_ARGS)
    if unknown:
        raise TypeError(f"PruningCallback got unexpected keyword argument(s) {unknown}; Pruner takes "
                        f"{sorted(_PRUNER_ARGS)}")
    if end_step is not None and (isinstance(end_step, bool) or not isinstance(end_step, int) or end_step < 1):
        raise ValueError(f"end_step must be a positive int or None, got {end_step!r}")
    if not isinstance(schedule, (str, Schedule, list, tuple)):
        raise TypeError(f"schedule must be 'cubic', 'oneshot', a list of (step, sparsity) stages or a Schedule, "
                        f"got {type(schedule).__name__}")
    kw = pruner_kwargs
    sparsity, tile, k_align, _ = check_common(nn.Module(), sparsity, kw.get("tile", 128), kw.get("pattern", "tw"),
                                              kw.get("scope", "global"), kw.get("col_sparsity", 0.0),
                                              kw.get("delta", 0.0), kw.get("k_align", 1), kw.get("filter_fn"))
    check_unit_args(kw.get("pattern", "tw"), k_align, kw.get("unit", 1))
    check_allocation(kw.get("score_norm", "rms"), kw.get("max_layer_sparsity", "auto"))
    start = kw.get("start_step", 0)
    # a cubic ramp's end_step defaults to 3/4 of max_steps (known at on_train_begin): any later step checks the rest
    make_schedule(schedule, sparsity, start_step=start,
                  end_step=end_step if end_step is not None else kw.get("end_step", (start + 1)
                                                                          if isinstance(start, int) else None),
                  frequency=kw.get("frequency", 1), initial_sparsity=kw.get("initial_sparsity", 0.0))
    make_importance(kw.get("importance", "magnitude"))
    if "progress" in kw and kw["progress"] is not None and not isinstance(kw["progress"], bool):
        raise TypeError(f"progress must be a bool or None, got {type(kw['progress']).__name__}")

