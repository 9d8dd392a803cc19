"""tilesparse: tile-wise structured sparsity for PyTorch.

Importing the package loads the compiled operators (``torch.ops.tilesparse``);
a failure to load them is an error, never silently ignored.
"""
import torch  # noqa: F401  (the operators link against libtorch)

from . import _C  # noqa: F401  registers torch.ops.tilesparse.*
from . import ops
from .layout import TileLayout

__version__ = "0.1.0"


def built_with_cuda() -> bool:
    """Whether this build of tilesparse._C contains the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("tilesparse::tw_linear", "CUDA")


__all__ = ["ops", "TileLayout", "built_with_cuda", "__version__"]

# prune-then-finetune layer (issue 4)
from . import nn  # noqa: E402
from . import patterns, importance, schedule  # noqa: E402
from .nn import TileSparseLinear, TileSparseConv2d  # noqa: E402
from .sparsify import sparsify, finalize, densify, mask_optimizer, sparsity_summary  # noqa: E402
from .pruner import Pruner  # noqa: E402

__all__ += ["nn", "patterns", "importance", "schedule", "TileSparseLinear", "TileSparseConv2d", "sparsify",
            "finalize", "densify", "mask_optimizer", "sparsity_summary", "Pruner"]

# saving and loading (issue 12); `import tilesparse` also registers the
# Hugging Face round trip with transformers when it is installed
from .serialization import save, load  # noqa: E402
from .integrations import install_transformers_hook as _install_transformers_hook  # noqa: E402

_install_transformers_hook()
__all__ += ["save", "load"]

# calibrated one-shot pruning with reconstruction (issue 11)
from .oneshot import oneshot  # noqa: E402

__all__ += ["oneshot"]

# gradual pruning inside distillation (issue 20)
from . import losses  # noqa: E402
from .distill import DistillResult, distill  # noqa: E402
from .losses import EncoderDistillLoss  # noqa: E402
from .teacher_cache import TeacherCache  # noqa: E402

__all__ += ["losses", "distill", "DistillResult", "EncoderDistillLoss", "TeacherCache"]
