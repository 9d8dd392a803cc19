"""The ``"tilesparse"`` transformers quantization method: config, quantizer, :func:`attach`.

Imported by ``import tilesparse`` right after transformers' quantizer registry
(see :mod:`tilesparse.integrations`), so it imports only that registry's
modules (importing ``transformers.PreTrainedModel`` here would be circular).
See :mod:`tilesparse.integrations.transformers` for the design.
"""
from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .. import serialization
from .._modules import set_submodule

__all__ = ["TileSparseConfig", "TileSparseHfQuantizer", "attach", "QUANT_METHOD", "REQUIRES_TILESPARSE"]

QUANT_METHOD = "tilesparse"

# The one `fusion_config` entry of a tile-sparse model's config.json. transformers (5.x) only *warns* about an
# unknown `quant_method` and would go on to build a dense model (random or dense-equivalent layers), but it
# validates `fusion_config` in from_pretrained, after the quantizer is chosen and before any weight is read:
# without tilesparse imported it raises `ValueError: Unknown fusion type: <this key>`; with tilesparse imported
# TileSparseHfQuantizer.update_attn_implementation removes the entry first. Any key starting with
# _MARKER_PREFIX is ours, so checkpoints keep loading if the wording changes.
_MARKER_PREFIX = "tilesparse:"
REQUIRES_TILESPARSE = (f"{_MARKER_PREFIX} this checkpoint was saved by tilesparse (tile-sparse layers); "
                       "`import tilesparse` before from_pretrained")


def _is_marker(key) -> bool:
    return isinstance(key, str) and key.startswith(_MARKER_PREFIX)


def _mark(config) -> None:
    """Adds the REQUIRES_TILESPARSE entry to ``config.fusion_config`` (first; any fusions already there stay)."""
    current = getattr(config, "fusion_config", None)
    if current is not None and not isinstance(current, Mapping):
        return  # not ours to rewrite (transformers rejects it anyway); the finalized layers' guards still apply
    others = {k: v for k, v in (current or {}).items() if not _is_marker(k)}
    config.fusion_config = {REQUIRES_TILESPARSE: True, **others}


def _unmark(config) -> None:
    """Removes tilesparse's entry from ``config.fusion_config`` (and the attribute if nothing else is left)."""
    current = getattr(config, "fusion_config", None)
    if not isinstance(current, Mapping) or not any(_is_marker(k) for k in current):
        return
    others = {k: v for k, v in current.items() if not _is_marker(k)}
    if others:
        config.fusion_config = others
        return
    try:
        delattr(config, "fusion_config")
    except AttributeError:
        config.fusion_config = None


class TileSparseConfig(QuantizationConfigMixin):
    """``config.quantization_config`` of a tile-sparse model.

    ``layers`` maps every sparse layer's name to its manifest entry (see
    :mod:`tilesparse.serialization`). Bound to a model (:func:`attach`), the
    entries are re-read from that model whenever the config is serialised, so
    ``save_pretrained`` always records the current masks' state (masked, or
    finalized later) without any extra call.
    """

    def __init__(self, layers: Optional[Dict[str, Dict[str, Any]]] = None, format: int = serialization.FORMAT_VERSION,
                 tilesparse: Optional[str] = None, quant_method: str = QUANT_METHOD, **kwargs) -> None:
        from .. import __version__

        if quant_method != QUANT_METHOD:
            raise ValueError(f"quant_method must be {QUANT_METHOD!r}, got {quant_method!r}")
        if format != serialization.FORMAT_VERSION:
            raise ValueError(f"this tilesparse version reads manifest format {serialization.FORMAT_VERSION}, "
                             f"the config has format {format!r}")
        self.quant_method = QUANT_METHOD
        self.format = format
        self.tilesparse = tilesparse or __version__
        self.layers = dict(layers or {})
        self._model: Optional[weakref.ref] = None

    def bind(self, model: nn.Module) -> "TileSparseConfig":
        self._model = weakref.ref(model)
        return self

    def current_layers(self) -> Dict[str, Dict[str, Any]]:
        model = self._model() if self._model is not None else None
        if model is not None:
            self.layers = serialization.manifest(model)["layers"]
        return self.layers

    def to_dict(self) -> Dict[str, Any]:
        return {"quant_method": self.quant_method, "format": self.format, "tilesparse": self.tilesparse,
                "layers": self.current_layers()}

    def __iter__(self):
        yield from self.to_dict().items()

    def __deepcopy__(self, memo):
        # from_pretrained deep-copies configs; copy.deepcopy(model) must bind the copy to the model's copy
        new = TileSparseConfig(**copy.deepcopy(self.to_dict(), memo))
        model = self._model() if self._model is not None else None
        if model is not None:
            new._model = weakref.ref(memo.get(id(model), model))
        return new

    def __getstate__(self):  # torch.save(model) pickles the config: a weak reference cannot be pickled
        state = dict(self.__dict__, layers=self.current_layers())
        state["_model"] = None
        return state

    def __repr__(self) -> str:
        return f"TileSparseConfig(layers={len(self.current_layers())}, format={self.format})"


def attach(model: nn.Module) -> None:
    """Makes ``save_pretrained`` of a transformers ``model`` record its sparse
    layers (sets ``model.config.quantization_config`` to a bound
    :class:`TileSparseConfig`). :func:`tilesparse.sparsify`,
    :class:`tilesparse.Pruner` and :class:`PruningCallback` call it; call it
    yourself after swapping in sparse modules by hand."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        return
    current = getattr(config, "quantization_config", None)
    if current is not None and not isinstance(current, TileSparseConfig) and \
            (current.get("quant_method") if isinstance(current, dict) else getattr(current, "quant_method", None)) \
            != QUANT_METHOD:
        raise ValueError(f"model {type(model).__name__} is already quantized with {current!r}: tilesparse cannot "
                         "record its layers in the same config")
    config.quantization_config = TileSparseConfig().bind(model)
    _mark(config)
    # save_pretrained takes the state dict from model.hf_quantizer (get_state_dict_and_metadata): that is where
    # the finalized layers' guards are added. `is_quantized` stays unset, so .half()/.float() keep working.
    if not isinstance(getattr(model, "hf_quantizer", None), TileSparseHfQuantizer):
        model.hf_quantizer = TileSparseHfQuantizer(config.quantization_config, pre_quantized=True)


GUARD = "weight"


def _guard_keys(model: nn.Module):
    """``<layer>.weight`` of every finalized layer: the key a dense model expects
    there. save_pretrained stores an empty tensor under it, so that transformers
    without tilesparse imported stops with a size mismatch on that key instead
    of silently initialising a random weight where the REQUIRES_TILESPARSE
    entry does not stop it first (transformers without ``fusion_config``, or a
    ``fusion_config=`` argument that replaces it); with tilesparse imported the
    key is ignored."""
    return [f"{fqn}.{GUARD}" if fqn else GUARD for fqn, m in serialization.sparse_layers(model)
            if getattr(m, "finalized", False)]


def _resolve(model: nn.Module, fqn: str) -> str:
    """The layer's name in ``model``: checkpoints of a task model
    (``bert.encoder...``) load into the base model and back."""
    names = dict(model.named_modules())
    if fqn in names:
        return fqn
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and fqn.startswith(prefix + ".") and fqn[len(prefix) + 1:] in names:
        return fqn[len(prefix) + 1:]
    if prefix and f"{prefix}.{fqn}" in names:
        return f"{prefix}.{fqn}"
    raise ValueError(f"layer {fqn!r}: listed in the checkpoint's tilesparse config but {type(model).__name__} "
                     "has no such module")


class TileSparseHfQuantizer(HfQuantizer):
    """Builds the sparse layers before ``from_pretrained`` loads the weights
    (no quantization happens: the checkpoint already holds the sparse
    tensors)."""

    requires_calibration = False
    requires_parameters_quantization = False  # transformers 4.x
    required_packages = ["tilesparse"]

    def __init__(self, quantization_config: TileSparseConfig, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self._built: Dict[str, Tuple[nn.Module, Dict[str, Any]]] = {}

    def validate_environment(self, *args, **kwargs) -> None:
        if not self.pre_quantized:
            raise ValueError("TileSparseConfig describes a saved sparse model: prune a model with "
                             "tilesparse.sparsify / tilesparse.Pruner instead of passing it to from_pretrained")

    def update_attn_implementation(self, config):
        # from_pretrained hands the model's config to the quantizer here, before it reads `fusion_config`
        parent = getattr(super(), "update_attn_implementation", None)
        if parent is not None:
            config = parent(config)
        _unmark(config)
        return config

    def _process_model_before_weight_loading(self, model, **kwargs):
        self._built = {}
        for fqn, entry in self.quantization_config.layers.items():
            name = _resolve(model, fqn)
            target = model.get_submodule(name)
            serialization._check_target(name, target, entry)
            ref = serialization._first_float(target)
            mod = serialization.build_empty(name, entry, device=ref.device, dtype=ref.dtype)
            set_submodule(model, name, mod)
            self._built[name] = (mod, entry)
        guards = {re.escape(k) + "$" for k in _guard_keys(model)}
        model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | guards
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, (mod, entry) in self._built.items():
            missing = sorted(n for n, t in mod.state_dict().items() if t.is_meta)
            if missing:
                raise ValueError(f"layer {name!r}: the checkpoint lacks its tensors {missing}")
            serialization.finish_loading(name, mod, entry)
        self._built = {}
        if isinstance(self.quantization_config, TileSparseConfig):
            self.quantization_config.bind(model)
        _mark(model.config)  # saving the loaded model again writes the entry again
        return model

    def get_state_dict_and_metadata(self, model):
        # save_pretrained calls this before it writes config.json: bind the config to the model being saved
        config = getattr(model.config, "quantization_config", None)
        if isinstance(config, TileSparseConfig):
            config.bind(model)
        _mark(model.config)
        state = model.state_dict()
        ref = next((t for t in state.values() if t.is_floating_point()), None)
        for key in _guard_keys(model):
            state[key] = torch.zeros(0, dtype=ref.dtype if ref is not None else torch.float32)
        return state, {}

    def is_serializable(self, safe_serialization=None) -> bool:  # 4.x passes safe_serialization
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:  # Trainer refuses "purely quantized" models otherwise
        return True

    def update_dtype(self, dtype):
        return dtype


if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantization_config(QUANT_METHOD)(TileSparseConfig)
    register_quantizer(QUANT_METHOD)(TileSparseHfQuantizer)


