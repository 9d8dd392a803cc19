"""Integrations with other libraries (imported on demand, never by ``import tilesparse``).

* :mod:`tilesparse.integrations.transformers`: Hugging Face ``save_pretrained`` /
  ``from_pretrained`` round trip (as a transformers quantization method) and the
  ``Trainer`` :class:`~tilesparse.integrations.transformers.PruningCallback`.
"""
import importlib.abc
import importlib.util
import sys

_HF_QUANTIZERS = "transformers.quantizers.auto"


def _register_transformers() -> None:
    from . import hf_quantizer  # noqa: F401  registers the "tilesparse" quantization method


class _RegisterWhenImported(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers tilesparse with transformers right after transformers'
    quantizer registry is imported, so ``import tilesparse`` neither pays for
    importing transformers (seconds) nor needs it installed."""

    def find_spec(self, name, path=None, target=None):
        if name != _HF_QUANTIZERS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_transformers()


def install_transformers_hook() -> None:
    """Called by ``import tilesparse``: registers now if transformers' quantizer
    registry is loaded, else when it is; and records sparse layers in a
    transformers model's config whenever layers are swapped."""
    install_swap_hook()
    if _HF_QUANTIZERS in sys.modules:
        _register_transformers()
    elif importlib.util.find_spec("transformers") is not None and \
            not any(isinstance(f, _RegisterWhenImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenImported())


def install_swap_hook() -> None:
    """Hooks :func:`attach_if_transformers` into :func:`tilesparse.sparsify.swap_modules`
    (from above: this package imports sparsify, sparsify never imports it)."""
    from ..sparsify import register_swap_hook

    register_swap_hook(attach_if_transformers)


def attach_if_transformers(model) -> None:
    """Records the sparse layers in a transformers model's config (see
    :func:`tilesparse.integrations.transformers.attach`); a no-op for other models."""
    tf = sys.modules.get("transformers")
    if tf is None or not hasattr(model, "config") or not hasattr(model, "save_pretrained"):
        return
    from .hf_quantizer import attach

    attach(model)
