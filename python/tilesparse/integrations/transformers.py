"""Hugging Face transformers integration.

**Round trip.** tilesparse registers itself as a transformers quantization
method named ``"tilesparse"`` (``register_quantization_config`` /
``register_quantizer``; tested with transformers 5.24). A model pruned with :func:`tilesparse.sparsify` or
:class:`tilesparse.Pruner` carries a :class:`TileSparseConfig` as
``model.config.quantization_config``; ``save_pretrained`` writes it to
``config.json`` (``"quant_method": "tilesparse"`` plus the manifest of every
sparse layer: class, shapes, tile, unit, state, TEW, layout lengths, tensor
shapes) and the weights to safetensors as usual. ``from_pretrained`` of that
directory, with tilesparse imported, builds the model on the meta device, lets
:class:`TileSparseHfQuantizer` replace the listed layers by sparse modules in
the saved state with the saved tensor shapes, loads the tensors by name
(index buffers as stored, never recomputed), then derives the masked layers'
indices from their masks.

Why the quantizer registry and not a custom model class: it is the extension
point ``from_pretrained`` consults for *every* model class (``AutoModel*``,
``BertModel``, pipelines) before it reads weights, it is keyed by a field of
``config.json``, and it needs no ``trust_remote_code``. ``PreTrainedModel``
subclasses or ``AutoConfig.register`` would need one registration per
architecture.

**Without tilesparse imported**, ``from_pretrained`` of that directory
raises ``ValueError: Unknown fusion type: tilesparse: ... `import tilesparse`
before from_pretrained`` (masked or finalized): the config also carries the
``fusion_config`` entry :data:`REQUIRES_TILESPARSE`, which transformers
validates before building the model, and which the quantizer removes first when
tilesparse is imported (see :mod:`tilesparse.integrations.hf_quantizer`).

**Trainer.** :class:`PruningCallback` runs a :class:`tilesparse.Pruner`
(gradual or staged) inside ``Trainer.train()``.
"""
from .hf_quantizer import QUANT_METHOD, REQUIRES_TILESPARSE, TileSparseConfig, TileSparseHfQuantizer, attach
from .trainer import PruningCallback

__all__ = ["TileSparseConfig", "TileSparseHfQuantizer", "attach", "PruningCallback", "QUANT_METHOD",
           "REQUIRES_TILESPARSE"]
