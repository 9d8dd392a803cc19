"""One-shot model conversion: ``sparsify`` (swap + prune) and ``finalize``.

``sparsify(model, ...)`` swaps the ``nn.Linear`` / ``nn.Conv2d`` layers of a
model in place (torchao ``sparsify_`` style) for tile-sparse modules in the
masked state, pruned to the target sparsity; ``finalize(model)`` converts them
to the packed final state. The swapped modules share the original
Parameters, so an optimizer built before ``sparsify`` keeps working until
``finalize`` (which creates new, smaller Parameters).
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .importance import Importance, _progress, make_importance
from ._checks import check_common, check_unit_args
from ._modules import excluded_linear, gemm_dims, set_submodule
from .nn import MaskedConv2d, MaskedLinear, TileSparseBase, TileSparseConv2d, TileSparseLinear
from .patterns import TILE_PATTERNS, check_allocation, masks_for

__all__ = ["sparsify", "finalize", "densify", "default_filter", "sparsity_summary", "mask_optimizer"]

FilterFn = Callable[[nn.Module, str], bool]

# Called with the model after layers were swapped for sparse ones. The transformers integration registers
# itself here from above (tilesparse.integrations imports sparsify, never the reverse).
_SWAP_HOOKS: List[Callable[[nn.Module], None]] = []


def register_swap_hook(hook: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    """Calls ``hook(model)`` whenever :func:`swap_modules` (``sparsify``, ``Pruner``,
    ``oneshot``) has swapped layers of ``model``; registering twice is a no-op."""
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    if hook not in _SWAP_HOOKS:
        _SWAP_HOOKS.append(hook)
    return hook
_SPARSE = (TileSparseLinear, TileSparseConv2d, MaskedLinear, MaskedConv2d)


def default_filter(module: nn.Module, fqn: str, *, tile: int = 128, pattern: str = "tw") -> bool:
    """Which layers :func:`sparsify` and :class:`Pruner` prune by default.

    ``nn.Linear`` and ``nn.Conv2d`` (and already-swapped tile-sparse modules),
    except ``nn.MultiheadAttention``'s ``out_proj`` (MHA reads its weight
    directly). For the tile patterns (``tw``, ``tew``) a layer needs at least
    ``tile`` output features per group: a smaller layer is a single partial
    tile, where tile-wise pruning degenerates to removing whole input features
    of the layer (too coarse, and nothing to gain in speed). Depthwise
    convolutions (one output per group) are skipped for every pattern.
    """
    if not isinstance(module, (nn.Linear, nn.Conv2d, TileSparseBase)) or excluded_linear(module):
        return False
    g, n_g, k = gemm_dims(module)
    if n_g <= 1 or k <= 1:
        return False
    if pattern in TILE_PATTERNS:
        return n_g >= tile
    return True


def _swap_one(module: nn.Module, pattern: str, tile: int) -> nn.Module:
    """The sparse module (masked state, all-ones mask, sharing Parameters)."""
    if isinstance(module, _SPARSE):
        return module
    if pattern in TILE_PATTERNS:
        cls = TileSparseConv2d if isinstance(module, nn.Conv2d) else TileSparseLinear
        new = cls.from_dense(module, tile=tile)
    else:
        cls = MaskedConv2d if isinstance(module, nn.Conv2d) else MaskedLinear
        new = cls.from_dense(module)
    new.train(module.training)
    for h_id, h in module._forward_pre_hooks.items():
        new._forward_pre_hooks[h_id] = h
    for h_id, h in module._forward_hooks.items():
        new._forward_hooks[h_id] = h
    return new


def swap_modules(model: nn.Module, pattern: str, tile: int, filter_fn: Optional[FilterFn]
                 ) -> Tuple[nn.Module, List[Tuple[str, nn.Module]]]:
    """Swaps every selected layer; returns the (possibly new) root and the
    ``(fqn, sparse module)`` list. Already-sparse modules are kept as they are
    (a finalized one is left out: its layout is fixed)."""
    chosen = []
    for fqn, mod in model.named_modules(remove_duplicate=True):
        if isinstance(mod, _SPARSE):
            wanted = TileSparseBase if pattern in TILE_PATTERNS else (MaskedLinear, MaskedConv2d)
            if isinstance(mod, wanted) and not getattr(mod, "finalized", False) and \
                    (filter_fn is None or filter_fn(mod, fqn)):
                chosen.append((fqn, mod))
            continue
        if not isinstance(mod, (nn.Linear, nn.Conv2d)) or excluded_linear(mod):
            continue
        if any(fqn.startswith(c + ".") for c, _ in chosen if c):
            continue
        ok = filter_fn(mod, fqn) if filter_fn is not None else default_filter(mod, fqn, tile=tile, pattern=pattern)
        if ok:
            chosen.append((fqn, mod))
    out = []
    for fqn, mod in chosen:
        new = _swap_one(mod, pattern, tile)
        if new is not mod:
            model = set_submodule(model, fqn, new)
        out.append((fqn, new))
    if out:
        for hook in _SWAP_HOOKS:  # e.g. the transformers integration: save_pretrained records the sparse layers
            hook(model)
    return model, out


def compute_masks(entries: Sequence[Tuple[str, nn.Module]], importance: Importance, pattern: str,
                  sparsity: float, *, scope: str = "global", tile: int = 128, col_sparsity=0.0, delta: float = 0.0,
                  k_align: int = 1, unit: int = 1, score_norm: Optional[str] = "rms",
                  max_layer_sparsity: Union[float, str, None] = "auto",
                  progress: Optional[bool] = None) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """``(mask, residue)`` per module, as ``[groups, N_g, K]`` bool tensors."""
    scores, owner = [], []
    for i, (fqn, mod) in enumerate(_progress(entries, len(entries), "scoring", progress)):
        s = importance(mod, fqn)
        g, n_g, k = gemm_dims(mod)
        if s.numel() != g * n_g * k:
            raise ValueError(f"importance returned {tuple(s.shape)} scores for {fqn!r}, whose weight has "
                             f"{g * n_g * k} elements")
        sv = s.detach().reshape(g, n_g, k).to(device="cpu", dtype=torch.float64)
        for j in range(g):
            scores.append(sv[j])
            owner.append(i)
    masks = masks_for(pattern, scores, None if pattern == "nm" else sparsity, tile, scope=scope,
                      col_sparsity=col_sparsity, delta=delta, k_align=k_align, unit=unit, score_norm=score_norm,
                      max_layer_sparsity=max_layer_sparsity)
    per: List[List] = [[] for _ in entries]
    for i, m in zip(owner, masks):
        per[i].append(m)
    out = []
    for (fqn, mod), ms in zip(entries, per):
        dev = mod.mask.device
        if pattern == "tew":
            out.append((torch.stack([a for a, _ in ms]).to(dev), torch.stack([b for _, b in ms]).to(dev)))
        else:
            out.append((torch.stack(ms).to(dev), None))
        if not bool(out[-1][0].any()) and (out[-1][1] is None or not bool(out[-1][1].any())):
            warnings.warn(f"tilesparse: layer {fqn!r} is pruned entirely (scope={scope!r}, score_norm={score_norm!r}, "
                          f"max_layer_sparsity={max_layer_sparsity!r}); its scores are small next to the other "
                          "layers' or its pruning group is as large as the layer. Consider the defaults "
                          "score_norm='rms' and max_layer_sparsity='auto', scope='layer', or a smaller unit.",
                          stacklevel=3)
    return out


def sparsify(model: nn.Module, sparsity: float = 0.75, tile: int = 128, pattern: str = "tw",
             filter_fn: Optional[FilterFn] = None, scope: str = "global",
             importance: Union[str, Importance, Callable] = "magnitude", col_sparsity: Union[float, str] = 0.0,
             delta: float = 0.0, k_align: int = 1, *, unit: int = 1, score_norm: Optional[str] = "rms",
             max_layer_sparsity: Union[float, str, None] = "auto", progress: Optional[bool] = None) -> nn.Module:
    """Prunes a model one-shot, in place, and returns it.

    Swaps every selected ``nn.Linear`` / ``nn.Conv2d`` (``filter_fn(module,
    fqn) -> bool``; default :func:`default_filter`) for a
    :class:`~tilesparse.nn.TileSparseLinear` / ``TileSparseConv2d`` (patterns
    ``tw``, ``tew``) or a ``MaskedLinear`` / ``MaskedConv2d`` (``ew``, ``vw``,
    ``bw``, ``nm``) in the masked state, and prunes them to ``sparsity``:

    * ``scope="global"`` (default, as the original): one threshold across all
      selected layers (row-segment scores for tw/tew, so layers end at
      different sparsities that together reach ``sparsity``);
      ``scope="layer"``: every layer at ``sparsity``.
    * ``score_norm`` (global scope): ``"rms"`` (default) divides each layer's
      scores by their root mean square before the threshold, so layers whose
      weights differ in scale (fan-in, init, learned gains) are compared by
      relative importance; None compares raw scores.
    * ``importance``: ``"magnitude"`` or an :class:`~tilesparse.importance.Importance`
      holding calibration statistics (Taylor, activation-weighted), or a
      callable ``(module, fqn) -> weight-shaped scores``.
    * ``col_sparsity`` (2-D TW): fraction of output features pruned first
      (``"sqrt"``: ``1 - sqrt(1 - sparsity)``); ``delta`` (TEW): the residue.
    * ``k_align``: every tile keeps a multiple of ``k_align`` input features.
    * ``unit`` (tw/tew): aligned runs of ``unit`` input features
      ``[u*unit, (u+1)*unit)`` of a tile are kept or pruned together, so the
      kernels gather contiguous runs (unit 8/16: 16/32-byte copies in 16-bit
      types); ``k_align`` and ``unit`` must divide one another.
    * ``max_layer_sparsity`` (global scope): caps any one layer's sparsity; the
      threshold is re-solved over the other layers, so the total still meets
      ``sparsity``. ``"auto"`` (default): ``1 - (1 - sparsity) / 4`` (every
      layer keeps at least a quarter of the average density); a float; or
      None (no cap: with ``score_norm=None`` too, the original's rule, which
      can prune a whole layer whose scores are small).

    The returned model is the same object unless the root itself was swapped.
    Call :func:`finalize` when the masks are final.
    """
    sparsity, tile, k_align, delta = check_common(model, sparsity, tile, pattern, scope, col_sparsity, delta,
                                                   k_align, filter_fn)
    unit = check_unit_args(pattern, k_align, unit)
    check_allocation(score_norm, max_layer_sparsity)
    imp = make_importance(importance)
    model, entries = swap_modules(model, pattern, tile, filter_fn)
    if not entries:
        return model
    masks = compute_masks(entries, imp, pattern, sparsity, scope=scope, tile=tile, col_sparsity=col_sparsity,
                          delta=delta, k_align=k_align, unit=unit, score_norm=score_norm,
                          max_layer_sparsity=max_layer_sparsity, progress=progress)
    for (fqn, mod), (mask, residue) in zip(entries, masks):
        set_module_mask(mod, mask, residue, unit)
    return model


def set_module_mask(mod: nn.Module, mask: Tensor, residue: Optional[Tensor], unit: int) -> None:
    """``mod.set_mask``, recording ``unit`` on the tile-sparse modules."""
    if isinstance(mod, TileSparseBase):
        mod.set_mask(mask, residue, unit=unit)
    else:
        mod.set_mask(mask, residue)


def mask_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer):
    """NVIDIA-ASP-style guard: after every ``optimizer.step()`` the pruned
    weights of ``model``'s masked-state sparse modules, and their optimizer
    state, are set to zero again. (Their gradients are already exactly zero;
    this also undoes anything else that wrote there.) Returns the hook handle
    (``handle.remove()`` to undo). :class:`~tilesparse.Pruner` does the same
    in its ``step()``."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    mods = [m for m in model.modules() if isinstance(m, _SPARSE)]

    def hook(opt, args, kwargs):
        with torch.no_grad():
            for m in mods:
                m.apply_mask(opt)

    return optimizer.register_step_post_hook(hook)


def finalize(model: nn.Module) -> nn.Module:
    """Converts every tile-sparse module of ``model`` to the packed final state
    (Masked* modules keep their mask). Returns ``model``. Build the optimizer
    afterwards: the packed Parameters are new."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for mod in model.modules():
        if isinstance(mod, _SPARSE):
            mod.finalize()
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replaces every sparse module by a plain ``nn.Linear`` / ``nn.Conv2d``
    holding its pruned weight. Returns the (possibly new) root."""
    targets = [(fqn, mod) for fqn, mod in model.named_modules() if isinstance(mod, _SPARSE)]
    for fqn, mod in targets:
        model = set_submodule(model, fqn, mod.to_dense())
    return model


def sparsity_summary(model: nn.Module) -> Dict[str, Dict[str, float]]:
    """``{fqn: {"sparsity": s, "numel": n}}`` of every sparse module, plus
    ``"__total__"`` over them (weights of the GEMMs only)."""
    out: Dict[str, Dict[str, float]] = {}
    pruned = total = 0
    for fqn, mod in model.named_modules():
        if isinstance(mod, _SPARSE):
            g, n_g, k = gemm_dims(mod)
            n = g * n_g * k
            out[fqn] = {"sparsity": mod.sparsity, "numel": n}
            pruned += mod.sparsity * n
            total += n
    out["__total__"] = {"sparsity": pruned / total if total else 0.0, "numel": total}
    return out
