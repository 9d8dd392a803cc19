"""The real-model study of tilesparse: quality and speed of tile-wise pruning
against the other sparsity patterns.

* :mod:`.minilm` - all-MiniLM-L6-v2 sentence embeddings on held-out English
  text (Debian's ``fortunes``), pruned with each pattern by ``tilesparse.oneshot`` and distilled
  back to the dense model (and a layer-dropped dense MiniLM); cosine to dense
  and nearest-neighbour agreement.
* :mod:`.digits` - a small CNN on sklearn's 8x8 digits; test accuracy.
* :mod:`.speed` - pruned layers (``tw_linear``) against dense ``F.linear`` on
  this machine, interleaved medians.
* :mod:`.report` - markdown tables and matplotlib plots.

``python -m tilesparse.study [--quick] [--out docs]`` runs it all and writes
``study.md`` and the PNGs; ``python -m tilesparse.demo`` is the short version.
"""
from . import data, digits, minilm, report, speed  # noqa: F401

__all__ = ["data", "digits", "minilm", "report", "speed"]
