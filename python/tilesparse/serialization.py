"""Saving and loading sparse models: ``tilesparse.save`` / ``tilesparse.load``.

A saved model is one safetensors file: the model's ``state_dict`` and, in the
header's ``__metadata__`` under ``"tilesparse"``, a JSON manifest of every
sparse layer: its class, constructor arguments (shapes, ``tile``, ``unit``),
state (``masked`` / ``final``), TEW residue, layout lengths, and the name,
shape and dtype of each of its tensors. The manifest is what lets
:func:`load` turn a freshly built *dense* model into the saved sparse one
without the caller knowing the sparsity or the tile; keeping it inside the
safetensors header means weights and manifest cannot drift apart.

Index buffers of finalized layers (``cols``, ``row_offsets``, ``rows``,
``layout_meta``, ``residue_index``) are stored and restored as they are, never
recomputed, so a file keeps its layout whatever packing rules the loading
version would use. Masked layers store their ``mask``; their index buffers are
derived from it, as the module itself does.

The helpers :func:`layer_manifest`, :func:`build_empty` and
:func:`finish_loading` are shared with the Hugging Face integration
(``tilesparse.integrations.transformers``), which puts the same per-layer
entries into ``config.json``.
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._modules import set_submodule
from .nn import MaskedConv2d, MaskedLinear, TileSparseBase, TileSparseConv2d, TileSparseLinear

__all__ = ["save", "load", "manifest", "layer_manifest", "build_empty", "finish_loading", "MANIFEST_KEY",
           "FORMAT_VERSION"]

MANIFEST_KEY = "tilesparse"
FORMAT_VERSION = 1
_CLASSES = {c.__name__: c for c in (TileSparseLinear, TileSparseConv2d, MaskedLinear, MaskedConv2d)}
_LINEAR_LIKE = (nn.Linear, TileSparseLinear)  # MaskedLinear is an nn.Linear
_CONV_LIKE = (nn.Conv2d, TileSparseConv2d)  # MaskedConv2d is an nn.Conv2d


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _module_config(mod: nn.Module) -> Dict[str, Any]:
    """Constructor arguments of a Linear / Conv2d, dense or sparse (the dense
    module's hyper-parameters, without ``tile``)."""
    if isinstance(mod, _LINEAR_LIKE):
        return {"in_features": mod.in_features, "out_features": mod.out_features, "bias": mod.bias is not None}
    if isinstance(mod, _CONV_LIKE):
        padding = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
        return {"in_channels": mod.in_channels, "out_channels": mod.out_channels,
                "kernel_size": list(mod.kernel_size), "stride": list(mod.stride), "padding": padding,
                "dilation": list(mod.dilation), "groups": mod.groups, "bias": mod.bias is not None,
                "padding_mode": mod.padding_mode}
    raise TypeError(f"{type(mod).__name__} is neither a Linear nor a Conv2d")


def _kind(mod: nn.Module) -> str:
    return "linear" if isinstance(mod, _LINEAR_LIKE) else "conv2d"


def _first_float(mod: nn.Module) -> Tensor:
    for t in list(mod.parameters()) + list(mod.buffers()):
        if t.is_floating_point():
            return t
    raise ValueError(f"{type(mod).__name__} has no floating-point tensor")


def layer_manifest(mod: nn.Module) -> Dict[str, Any]:
    """The manifest entry of one sparse module (JSON-serialisable)."""
    if type(mod).__name__ not in _CLASSES or not isinstance(mod, tuple(_CLASSES.values())):
        raise TypeError(f"not a tilesparse module: {type(mod).__name__}")
    entry: Dict[str, Any] = {"class": type(mod).__name__, "kind": _kind(mod), "config": _module_config(mod),
                             "dtype": _dtype_name(_first_float(mod).dtype)}
    if isinstance(mod, TileSparseBase):
        entry.update(tile=mod.tile, unit=int(getattr(mod, "unit", 1)),
                     state="final" if mod.finalized else "masked", tew=bool(mod.has_residue),
                     layout_meta=[list(m) for m in mod._meta])
    else:
        entry.update(state="masked", tew=False)
    entry["tensors"] = {name: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
                        for name, t in mod.state_dict().items()}
    return entry


def sparse_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(fqn, m) for fqn, m in model.named_modules() if type(m).__name__ in _CLASSES
            and isinstance(m, tuple(_CLASSES.values()))]


def manifest(model: nn.Module) -> Dict[str, Any]:
    """``{"format": 1, "tilesparse": version, "layers": {fqn: entry}}`` of ``model``."""
    from . import __version__

    return {"format": FORMAT_VERSION, "tilesparse": __version__,
            "layers": {fqn: layer_manifest(m) for fqn, m in sparse_layers(model)}}


# ----------------------------------------------------------------- build
def _check_entry(fqn: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"layer {fqn!r}: manifest entry must be an object, got {type(entry).__name__}")
    for key in ("class", "config", "state", "tensors"):
        if key not in entry:
            raise ValueError(f"layer {fqn!r}: manifest entry lacks {key!r}")
    if entry["class"] not in _CLASSES:
        raise ValueError(f"layer {fqn!r}: unknown class {entry['class']!r} (expected one of {sorted(_CLASSES)})")
    if entry["state"] not in ("masked", "final"):
        raise ValueError(f"layer {fqn!r}: state must be 'masked' or 'final', got {entry['state']!r}")


def build_empty(fqn: str, entry: Dict[str, Any], device: Union[str, torch.device] = "meta",
                dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A sparse module shaped as ``entry`` describes (its state, residue and
    the lengths of its packed tensors), with uninitialised storage on
    ``device``; fill it with ``load_state_dict`` (or any loader that assigns
    tensors by name), then call :func:`finish_loading`."""
    _check_entry(fqn, entry)
    cls = _CLASSES[entry["class"]]
    cfg = dict(entry["config"])
    if dtype is None:
        dtype = getattr(torch, entry.get("dtype", "float32"))
    kw: Dict[str, Any] = dict(device="meta", dtype=dtype)
    if issubclass(cls, TileSparseBase):
        kw["tile"] = int(entry["tile"])
    if issubclass(cls, (TileSparseConv2d, MaskedConv2d)):
        for key in ("kernel_size", "stride", "dilation"):
            cfg[key] = tuple(cfg[key])
        if not isinstance(cfg["padding"], str):
            cfg["padding"] = tuple(cfg["padding"])
    unit = int(entry.get("unit", 1))
    if "unit" in inspect.signature(cls.__init__).parameters:
        kw["unit"] = unit
    try:
        mod = cls(**cfg, **kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"layer {fqn!r}: cannot build {entry['class']} from the manifest: {e}") from e
    if unit != int(getattr(mod, "unit", 1)):
        if not hasattr(mod, "unit"):
            raise ValueError(f"layer {fqn!r}: saved with unit={unit}, which this tilesparse version's "
                             f"{entry['class']} does not support")
        mod.unit = unit
    if isinstance(mod, TileSparseBase):
        _shape_tile_sparse(fqn, mod, entry, dtype)
    tensors = entry["tensors"]
    have = mod.state_dict()
    if set(have) != set(tensors):
        raise ValueError(f"layer {fqn!r}: manifest lists tensors {sorted(tensors)}, a {entry['state']} "
                         f"{entry['class']} has {sorted(have)}")
    return mod.to_empty(device=device)


def _shape_tile_sparse(fqn: str, mod: TileSparseBase, entry: Dict[str, Any], dtype: torch.dtype) -> None:
    """Puts a new (meta) module in ``entry``'s state with its tensor shapes."""
    tensors, tew = entry["tensors"], bool(entry.get("tew", False))

    def shape(name):
        if name not in tensors:
            raise ValueError(f"layer {fqn!r}: manifest lacks tensor {name!r} of a {entry['state']} layer")
        return tuple(tensors[name]["shape"])

    if entry["state"] == "masked":
        if tew:
            mod.register_buffer("residue_mask", torch.zeros(shape("residue_mask"), dtype=torch.bool, device="meta"))
            mod.has_residue = True
        return
    meta = entry.get("layout_meta")
    if not isinstance(meta, list) or len(meta) != mod.groups or any(len(m) != 4 for m in meta):
        raise ValueError(f"layer {fqn!r}: layout_meta must list {mod.groups} x 4 lengths, got {meta!r}")
    mod.finalize()
    for name in ("cols", "row_offsets", "rows", "layout_meta"):
        mod._buffers[name] = torch.empty(shape(name), dtype=mod._buffers[name].dtype, device="meta")
    req = mod.values.requires_grad
    mod._parameters["values"] = nn.Parameter(torch.empty(shape("values"), dtype=dtype, device="meta"),
                                             requires_grad=req)
    if tew:
        mod.has_residue = True
        mod.register_buffer("residue_index", torch.empty(shape("residue_index"), dtype=torch.int64, device="meta"))
        mod.residue_values = nn.Parameter(torch.empty(shape("residue_values"), dtype=dtype, device="meta"),
                                          requires_grad=req)
    mod._set_meta(meta)
    mod._nnz_residue = shape("residue_index")[1] if tew else 0


@torch.no_grad()
def finish_loading(fqn: str, mod: nn.Module, entry: Dict[str, Any]) -> None:
    """After the tensors were assigned by name (bypassing the module's own
    ``_load_from_state_dict``): derive a masked layer's index from its loaded
    mask, or check a finalized layer's loaded ``layout_meta`` against the
    manifest."""
    if not isinstance(mod, TileSparseBase):
        return
    if mod.finalized:
        got = mod.layout_meta.tolist()
        if got != [list(m) for m in entry["layout_meta"]]:
            raise ValueError(f"layer {fqn!r}: the file's layout_meta {got} disagrees with the manifest "
                             f"{entry['layout_meta']}")
        mod._set_meta(got)
        mod._nnz_residue = mod.residue_index.shape[1] if mod.has_residue else 0
    else:
        try:
            mod._rebuild_index()
        except ValueError as e:
            raise ValueError(f"layer {fqn!r}: the saved mask is not tile-wise: {e}") from e


# ------------------------------------------------------------ save / load
def _dedup(state: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """safetensors refuses tensors that share memory (tied weights): store
    each identical view once and record the other names as aliases."""
    seen: Dict[Tuple, str] = {}
    out: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    for name, t in state.items():
        t = t.detach()
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t.to("cpu").contiguous().clone() if t.numel() else t.to("cpu").contiguous()
    # partly overlapping views left: clone() above gave each its own storage
    return out, aliases


def save(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Writes ``model``'s ``state_dict`` to the safetensors file ``path``,
    with the manifest of its sparse layers in the header (see the module
    docstring). Load it with :func:`load` into a dense model of the same
    architecture."""
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    man = manifest(model)
    tensors, aliases = _dedup(model.state_dict())
    man["aliases"] = aliases
    save_file(tensors, os.fspath(path), metadata={MANIFEST_KEY: json.dumps(man), "format": "pt"})


def read_manifest(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The manifest stored in the safetensors file ``path``."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path!r} is not a readable safetensors file: {e}") from e
    if MANIFEST_KEY not in meta:
        raise ValueError(f"{path!r} has no tilesparse manifest: it was not written by tilesparse.save")
    try:
        man = json.loads(meta[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r}: the tilesparse manifest is not valid JSON: {e}") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT_VERSION or not isinstance(man.get("layers"), dict):
        raise ValueError(f"{path!r}: unsupported tilesparse manifest (format {man.get('format')!r}, "
                         f"this version reads format {FORMAT_VERSION})")
    return man


def _under(key: str, prefixes: Iterable[str]) -> Optional[str]:
    for p in prefixes:
        if p == "" or key.startswith(p + "."):
            return p
    return None


def _check_target(fqn: str, target: nn.Module, entry: Dict[str, Any]) -> None:
    kind = entry.get("kind", "linear")
    want = _LINEAR_LIKE if kind == "linear" else _CONV_LIKE
    if not isinstance(target, want):
        raise ValueError(f"layer {fqn!r}: saved as a {entry['class']} ({kind}), the model has a "
                         f"{type(target).__name__} there")
    have = _module_config(target)
    if have != entry["config"]:
        diff = {k: (entry["config"].get(k), have.get(k)) for k in set(have) | set(entry["config"])
                if entry["config"].get(k) != have.get(k)}
        raise ValueError(f"layer {fqn!r}: shape mismatch (saved, model): {diff}")


@torch.no_grad()
def load(model: nn.Module, path: Union[str, os.PathLike], *, strict: bool = True) -> nn.Module:
    """Loads a file written by :func:`save` into ``model``, in place.

    ``model`` is the same architecture, dense or sparse: every layer named in
    the manifest is replaced by a new sparse module in the saved state (built
    from the manifest, on the device and in the dtype of the layer it
    replaces), the other tensors are copied as ``load_state_dict`` does.
    Everything is checked before anything changes: a missing or mismatched
    layer or tensor raises ValueError naming it and leaves ``model``
    untouched. ``strict=False`` tolerates missing and unexpected non-sparse
    keys. Returns ``model`` (or the new root if the root itself was sparse).
    """
    from safetensors.torch import load_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    man = read_manifest(path)
    path = os.fspath(path)
    tensors = load_file(path)
    for alias, src in man.get("aliases", {}).items():
        if src not in tensors:
            raise ValueError(f"{path!r}: alias {alias!r} points at missing tensor {src!r}")
        tensors[alias] = tensors[src]
    layers: Dict[str, Dict[str, Any]] = man["layers"]

    # 1. build every sparse layer off the model and fill it
    built: Dict[str, nn.Module] = {}
    for fqn, entry in layers.items():
        _check_entry(fqn, entry)
        try:
            target = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"layer {fqn!r}: saved as a {entry['class']} but the model has no such module") from None
        _check_target(fqn, target, entry)
        ref = _first_float(target)
        mod = build_empty(fqn, entry, device=ref.device, dtype=ref.dtype)
        prefix = fqn + "." if fqn else ""
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        for name, spec in entry["tensors"].items():
            if name not in sub:
                raise ValueError(f"layer {fqn!r}: the file lacks tensor {prefix + name!r}")
            if list(sub[name].shape) != list(spec["shape"]):
                raise ValueError(f"layer {fqn!r}: tensor {name!r} has shape {list(sub[name].shape)} in the file, "
                                 f"the manifest says {spec['shape']}")
        try:
            mod.load_state_dict({n: sub[n] for n in entry["tensors"]}, strict=True)  # masked: derives the index
            if entry["state"] == "final":
                finish_loading(fqn, mod, entry)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"layer {fqn!r}: cannot load: {e}") from e
        built[fqn] = mod

    # 2. check the rest against the model
    current = model.state_dict()
    rest = {k: v for k, v in tensors.items() if _under(k, layers) is None}
    expected = {k: v for k, v in current.items() if _under(k, layers) is None}
    for k, v in rest.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"tensor {k!r}: shape {tuple(v.shape)} in the file, {tuple(expected[k].shape)} "
                             "in the model")
    if strict:
        missing, unexpected = sorted(set(expected) - set(rest)), sorted(set(rest) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{path!r} does not match the model: missing {missing[:8]}, unexpected "
                             f"{unexpected[:8]} (pass strict=False to ignore)")

    # 3. commit

    # the rest first: a tile-sparse module's loader reads a missing residue key as "no residue", so the new
    # modules must not see this partial state dict (the old ones there are replaced next)
    model.load_state_dict({k: v for k, v in rest.items() if k in expected}, strict=False)
    for fqn, mod in built.items():
        model = set_submodule(model, fqn, mod)
    return model
