"""Block-by-block calibration forwards for :func:`tilesparse.oneshot`.

The sequential pass needs every layer group's inputs in the partly pruned
model. Running the model from its start for each group costs ``O(L^2)``
block forwards for ``L`` blocks (24 groups of MiniLM: ~12 whole forwards of
the calibration set). A transformer is a chain of blocks (``encoder.layer[i]``)
each taking the previous one's output as its first argument, so the inputs of
block ``b`` can be kept and block ``b`` run alone: ``O(L)`` block forwards.

:class:`BlockPipeline` captures the first block's inputs (and every block's
other arguments: masks, position embeddings) from one forward per batch,
checks on the first batch that chaining the blocks reproduces what the model
feeds them, then carries two chains, the dense model's and the pruned
model's, one block at a time.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .calibration import ForwardFn, _Stop, capture_inputs

__all__ = ["find_blocks", "resolve_blocks", "run_block", "BlockPipeline"]

# one block call: (first argument, the other positional arguments, keyword arguments)
BlockCall = Tuple[Tensor, Tuple[Any, ...], Dict[str, Any]]


def find_blocks(model: nn.Module, fqns: Sequence[str]) -> Optional[List[str]]:
    """The children of the largest ``nn.ModuleList`` of ``model`` that holds
    every layer in ``fqns`` (``["encoder.layer.0", ...]``), or ``None``."""
    best: Optional[Tuple[str, int]] = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        prefix = f"{name}." if name else ""
        inside = all(f.startswith(prefix) and f[len(prefix):].split(".")[0].isdigit() for f in fqns)
        if inside and (best is None or len(mod) > best[1]):
            best = (prefix, len(mod))
    if best is None:
        return None
    return [f"{best[0]}{i}" for i in range(best[1])]


def _first_tensor(out: Any) -> Optional[Tensor]:
    """A block's output hidden state: the tensor itself, the first item of a
    tuple / list, or the first value of a dict (``ModelOutput``)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict) and out:
        v = next(iter(out.values()))
        return v if isinstance(v, Tensor) else None
    return None


def run_block(block: nn.Module, call: BlockCall) -> Any:
    """``block(x, *args, **kwargs)`` of one captured call (the forward_fn of a block)."""
    x, args, kwargs = call
    return block(x, *args, **kwargs)


class BlockPipeline:
    """The inputs of the current block in the dense and in the pruned model,
    for every calibration batch (see the module docstring).

    :meth:`build` returns ``None`` when the model is not such a chain (a block
    not called exactly once per forward in order, or fed something other than
    the previous block's output); with ``strict`` it raises instead."""

    def __init__(self, names: List[str], model: nn.Module, dense: nn.Module,
                 first: List[Tensor], other: List[List[Tuple[Tuple[Any, ...], Dict[str, Any]]]]) -> None:
        self.names = names
        self.pruned_blocks = [model.get_submodule(n) for n in names]
        self.dense_blocks = [dense.get_submodule(n) for n in names]
        self._other = other          # other[b][batch]: (args[1:], kwargs) of block b
        self.index = 0
        self._xd = list(first)       # the current block's first argument per batch, dense model
        self._xs = list(first)       # ... pruned model (the same before the first block: nothing is pruned there)

    @classmethod
    @torch.no_grad()
    def build(cls, names: Sequence[str], model: nn.Module, dense: nn.Module, fqns: Sequence[str],
              batches: Sequence, forward_fn: ForwardFn, strict: bool = False) -> Optional["BlockPipeline"]:
        names = list(names)

        def fail(why: str):
            if strict:
                raise ValueError(f"oneshot: blocks={names!r}: {why}")
            return None

        if not names:
            return fail("no blocks given")
        for n in names:
            try:
                dense.get_submodule(n)
            except AttributeError:
                return fail(f"{n!r} is not a submodule of the model")
        outside = [f for f in fqns if not any(f.startswith(n + ".") for n in names)]
        if outside:
            return fail(f"the pruned layers {outside} are in none of the blocks")
        blocks = [dense.get_submodule(n) for n in names]
        first: List[Optional[Tensor]] = [None] * len(batches)
        other: List[List[Any]] = [[None] * len(batches) for _ in names]
        probe: List[Optional[Tensor]] = [None] * len(names)   # every block's first argument on batch 0
        order: List[int] = []
        cur = [0]

        def make_hook(i):
            def hook(mod, args, kwargs):
                order.append(i)
                if not args or not isinstance(args[0], Tensor):
                    raise _Stop  # not fed a tensor as its first argument: found below
                bi = cur[0]
                if i == 0:
                    first[bi] = args[0].detach()
                if bi == 0:
                    probe[i] = args[0].detach()
                other[i][bi] = (tuple(args[1:]), dict(kwargs))
                if i == len(blocks) - 1:
                    raise _Stop  # the last block's inputs are all that is needed
            return hook

        handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
        try:
            for bi, batch in enumerate(batches):
                cur[0] = bi
                del order[:]
                try:
                    forward_fn(dense, batch)
                except _Stop:
                    pass
                if order != list(range(len(blocks))):
                    return fail(f"the blocks are not called once each, in order, per forward (calls: {order[:8]})")
                if any(other[i][bi] is None for i in range(len(blocks))):
                    return fail("a block is not called with its input tensor as the first positional argument")
        finally:
            for h in handles:
                h.remove()
        # chaining the blocks must reproduce what the model feeds them
        x = first[0]
        for i in range(len(blocks) - 1):
            args, kwargs = other[i][0]
            y = _first_tensor(blocks[i](x, *args, **kwargs))
            ref = probe[i + 1]
            if y is None or y.shape != ref.shape:
                return fail(f"block {names[i + 1]!r} is not fed the previous block's output")
            scale = float(ref.abs().max().clamp_min(1e-30))
            if float((y - ref).abs().max()) > 1e-4 * scale:
                return fail(f"block {names[i + 1]!r} is not fed the previous block's output "
                            "(the model changes it between blocks)")
            x = y
        return cls(names, model, dense, first, other)

    def block_of(self, fqn: str) -> int:
        for i, n in enumerate(self.names):
            if fqn.startswith(n + "."):
                return i
        raise KeyError(fqn)

    @torch.no_grad()
    def advance(self, index: int) -> None:
        """Runs the blocks before ``index`` (both chains); never goes back."""
        if index < self.index:
            raise RuntimeError(f"the block pipeline is at block {self.index}, cannot return to {index}")
        while self.index < index:
            b = self.index
            for bi in range(len(self._xd)):
                args, kwargs = self._other[b][bi]
                self._xd[bi] = _first_tensor(self.dense_blocks[b](self._xd[bi], *args, **kwargs)).detach()
                self._xs[bi] = _first_tensor(self.pruned_blocks[b](self._xs[bi], *args, **kwargs)).detach()
            self.index += 1

    def calls(self, pruned: bool) -> List[BlockCall]:
        """The current block's calls, one per batch, in the pruned or the dense model."""
        xs = self._xs if pruned else self._xd
        return [(x, *self._other[self.index][bi]) for bi, x in enumerate(xs)]

    @torch.no_grad()
    def dense_rows(self, modules: Sequence[nn.Module], budget: int) -> Optional[List[List[Optional[Tensor]]]]:
        """The GEMM inputs of ``modules`` (layers of the current dense block) on
        every batch, from one run of the block, if they fit in ``budget``
        bytes (estimated from the first batch, scaled by the block's input
        size); else ``None``."""
        calls = self.calls(False)
        if budget <= 0 or not calls:
            return None
        first = capture_inputs(modules, self.dense_blocks[self.index], calls[:1], run_block)
        size = sum(r[0].numel() * r[0].element_size() for r in first if r[0] is not None)
        scale = sum(c[0].numel() for c in calls) / max(calls[0][0].numel(), 1)
        if size * scale > budget:
            return None
        rest = capture_inputs(modules, self.dense_blocks[self.index], calls[1:], run_block) if len(calls) > 1 else \
            [[] for _ in modules]
        return [f + r for f, r in zip(first, rest)]

    def blocks(self) -> Tuple[nn.Module, nn.Module]:
        """``(pruned block, dense block)`` at the current index."""
        return self.pruned_blocks[self.index], self.dense_blocks[self.index]


def resolve_blocks(blocks: Union[str, Sequence[str], None], dense: nn.Module, fqns: Sequence[str]
                   ) -> Tuple[Optional[List[str]], bool]:
    """``(names, strict)`` of ``oneshot``'s ``blocks`` argument."""
    if blocks is None:
        return None, False
    if isinstance(blocks, str):
        if blocks != "auto":
            raise ValueError(f"blocks must be 'auto', None or a list of module names, got {blocks!r}")
        return find_blocks(dense, fqns), False
    names = list(blocks)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"blocks must be 'auto', None or a list of module names, got {blocks!r}")
    return names, True
