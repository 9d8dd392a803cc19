"""``tilesparse.TeacherCache``: the teacher's outputs, computed once per batch.

Distillation runs the (frozen, eval-mode) teacher on every batch of every
step. When batches repeat, a second epoch, or several students distilled from
one teacher over the same data (patterns, sparsities, seeds), the teacher's
outputs repeat too. The cache keys a batch by its content (dtype, shape and a
BLAKE2b digest of the bytes of every tensor in it), so a ``DataLoader`` that
yields equal batches as new tensors still hits, and a reshuffled batch (other
rows) misses, as it must.

Memory: the outputs are kept as the teacher returned them (device, dtype); a
BERT-style encoder run with ``output_hidden_states=True`` keeps
``(layers + 1) * batch * tokens * hidden`` values per batch. ``max_bytes``
bounds the total: past it, new batches are computed and not stored.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["TeacherCache", "batch_key"]


def _digest(h, obj: Any, where: str) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    elif isinstance(obj, Mapping):
        h.update(b"M")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(h, obj[k], f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for i, v in enumerate(obj):
            _digest(h, v, f"{where}[{i}]")
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"S{obj!r}".encode())
    else:
        raise TypeError(f"TeacherCache keys batches by their content: {where} is a {type(obj).__name__} "
                        "(expected tensors, dicts, lists, tuples or plain scalars)")


def batch_key(batch: Any) -> bytes:
    """The content key of ``batch``: equal for batches with equal tensors
    (dtype, shape, values) and equal scalars, whatever the objects."""
    h = hashlib.blake2b(digest_size=20)
    _digest(h, batch, "batch")
    return h.digest()


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


class TeacherCache:
    """``cache(batch)`` is ``forward_fn(teacher, batch)`` under ``torch.no_grad()``,
    computed once per distinct batch.

    ::

        cache = tilesparse.TeacherCache(teacher)          # one cache, several students
        for pattern in ("tw", "ew"):
            tilesparse.distill(copy.deepcopy(teacher), teacher, loader, 0.75, steps=2000,
                               pattern=pattern, teacher_cache=cache)
        cache.hits, cache.misses, cache.nbytes

    Args:
        teacher: the frozen teacher (put it in eval mode; it must not change
            while the cache is in use: cached outputs are not recomputed).
        forward_fn: ``(model, batch) -> outputs``; default
            :func:`tilesparse.distill.hf_forward`.
        max_bytes: bound on the stored outputs (default 4 GiB); ``None``: no bound.
    """

    def __init__(self, teacher: nn.Module, forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
                 max_bytes: Optional[int] = 4 << 30) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"forward_fn must be callable, got {type(forward_fn).__name__}")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be an int >= 0 or None, got {max_bytes!r}")
        if forward_fn is None:
            from .distill import hf_forward

            forward_fn = hf_forward
        self.teacher, self.forward_fn, self.max_bytes = teacher, forward_fn, max_bytes
        self._store: Dict[bytes, Any] = {}
        self.hits = self.misses = self.nbytes = 0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, batch: Any) -> Any:
        key = batch_key(batch)
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self.misses += 1
        with torch.no_grad():
            out = self.forward_fn(self.teacher, batch)
        size = _nbytes(out)
        if self.max_bytes is None or self.nbytes + size <= self.max_bytes:
            self._store[key] = out
            self.nbytes += size
        return out

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = self.nbytes = 0

    def __repr__(self) -> str:
        return (f"TeacherCache({type(self.teacher).__name__}, entries={len(self)}, hits={self.hits}, "
                f"misses={self.misses}, nbytes={self.nbytes})")
