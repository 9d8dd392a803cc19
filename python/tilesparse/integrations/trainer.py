"""``PruningCallback``: tile-wise pruning inside a transformers ``Trainer``."""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple, Union

from transformers import TrainerCallback

from ..pruner import Pruner
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
        if not isinstance(finalize, bool):
            raise TypeError(f"finalize must be a bool, got {type(finalize).__name__}")
        if "optimizer" in pruner_kwargs or "model" in pruner_kwargs:
            raise TypeError("PruningCallback takes the model and optimizer from the Trainer")
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
