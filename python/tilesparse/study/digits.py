"""A small CNN on sklearn's 8x8 digits, pruned with each pattern and fine-tuned.

``DigitsCNN``: conv 1->32 (3x3) - pool - conv 32->64 (3x3) - pool - linear
256->128 - linear 128->10. Pruned layers: ``conv2`` (GEMM ``N=64``,
``K=32*3*3=288``) and ``fc1`` (``N=128``, ``K=256``); the first convolution
(``K=9``) and the classifier (``N=10``) stay dense, as usual. conv2 and fc1 are
pruned by ``tilesparse.oneshot`` on calibration images (im2col inputs for conv2). These layers are
far smaller than the 128-wide tiles of the original work, so the tile is 32
(``conv2`` is 2 tiles, ``fc1`` 4 tiles).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SPARSE_MODULES
from ..sparsify import finalize, sparsify, sparsity_summary

__all__ = ["DigitsCNN", "DigitsConfig", "digits_filter", "train", "accuracy", "prune_cnn", "run_digits"]

PRUNED_LAYERS = ("conv2", "fc1")


class DigitsCNN(nn.Module):
    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 2 * 2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)   # 8x8 -> 4x4
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # 4x4 -> 2x2
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def digits_filter(module: nn.Module, fqn: str) -> bool:
    """The layers the study prunes: ``conv2`` and ``fc1``."""
    return fqn in PRUNED_LAYERS


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 512) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for s in range(0, len(y), batch):
        correct += int((model(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum())
    return 100.0 * correct / max(len(y), 1)


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float = 2e-3, batch: int = 64, seed: int = 0,
          progress: Optional[bool] = None, desc: str = "train") -> List[float]:
    """Adam with a cosine learning-rate decay, shuffled mini-batches; pruned
    weights (and their Adam state) are re-zeroed after every step. Returns the
    mean loss of each epoch."""
    from tqdm.auto import tqdm

    if epochs <= 0:
        return []
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps_per = -(-len(y) // batch)
    total = epochs * steps_per
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    sparse = [m for m in model.modules() if isinstance(m, SPARSE_MODULES)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=None if progress is None else not progress):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        tot = 0.0
        for s in range(0, len(y), batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for m in sparse:
                m.apply_mask(opt)
            tot += float(loss.detach()) * len(idx)
        out.append(tot / len(y))
    model.eval()
    return out


def prune_cnn(model: nn.Module, pattern: str, sparsity: float, calib: Tensor, tile: int = 32, delta: float = 0.02,
              filter_fn: Callable = digits_filter, progress: Optional[bool] = None, **oneshot_kw) -> nn.Module:
    """Prunes ``conv2`` and ``fc1`` with :func:`tilesparse.oneshot` on the
    ``calib`` images (for ``conv2`` its im2col patches): sequential
    reconstruction toward the dense outputs (which among other things undoes
    the shift of the pre-activations that pruning non-negative, post-ReLU
    inputs causes) and error-driven allocation between the two layers."""
    from ..oneshot import oneshot

    kw = dict(delta=delta) if pattern == "tew" else {}
    return oneshot(model, [calib[i:i + 256] for i in range(0, len(calib), 256)], 0.5 if pattern == "nm" else sparsity,
                   pattern=pattern, tile=tile, filter_fn=filter_fn, progress=progress, **kw, **oneshot_kw)


@dataclass
class DigitsConfig:
    patterns: Tuple[str, ...] = ("tw", "tew", "ew", "vw", "bw", "nm")
    sparsities: Tuple[float, ...] = (0.5, 0.75, 0.9)
    tile: int = 32
    seeds: Tuple[int, ...] = (0, 1, 2)
    epochs: int = 40          # dense training
    finetune_epochs: int = 15
    lr: float = 2e-3
    finetune_lr: float = 1e-3
    delta: float = 0.02
    calib: int = 512                  # calibration images for tilesparse.oneshot
    bounds: Tuple[float, float] = (0.0, 0.95)  # oneshot's per-layer sparsity bounds


def _cases(cfg: DigitsConfig) -> List[Tuple[str, float]]:
    out = []
    for p in cfg.patterns:
        for s in (cfg.sparsities if p != "nm" else (0.5,)):
            out.append((p, s))
    return out


def run_digits(cfg: DigitsConfig = DigitsConfig(), progress: Optional[bool] = None, data=None,
               threads: Optional[int] = 1) -> Dict:
    """Trains the dense CNN once per seed, prunes a copy with every pattern
    and sparsity (magnitude baseline; ``tilesparse.oneshot``), fine-tunes the
    calibrated one, and records the test accuracy of
    each stage per seed. Runs on ``threads`` torch threads (default 1: the
    layers are so small that more threads only add overhead)."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_digits(cfg, progress, data)
    finally:
        torch.set_num_threads(prev)


def _run_digits(cfg: DigitsConfig, progress: Optional[bool], data) -> Dict:
    from tqdm.auto import tqdm

    from .data import load_digits_split

    x, y, xt, yt = data if data is not None else load_digits_split()
    dense_acc: List[float] = []
    rows: Dict[Tuple[str, float], Dict] = {}
    cases = _cases(cfg)
    bar = tqdm(total=len(cfg.seeds) * (1 + len(cases)), desc="digits CNN", disable=None if progress is None
               else not progress)
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        dense = DigitsCNN()
        train(dense, x, y, cfg.epochs, cfg.lr, seed=seed, progress=False)
        dense_acc.append(accuracy(dense, xt, yt))
        calib = x[:cfg.calib]
        bar.update(1)
        for pattern, s in cases:
            kw = dict(delta=cfg.delta) if pattern == "tew" else {}
            sp = 0.5 if pattern == "nm" else s
            mag = sparsify(copy.deepcopy(dense), sp, cfg.tile, pattern, digits_filter, "layer", "magnitude", **kw)
            m = prune_cnn(copy.deepcopy(dense), pattern, s, calib, cfg.tile, cfg.delta, bounds=cfg.bounds,
                          progress=False)
            r = rows.setdefault((pattern, s), {"pattern": pattern, "sparsity": sp, "tile": cfg.tile, "unit": 1,
                                               "magnitude": [], "calibrated": [], "finetuned": [],
                                               "achieved": sparsity_summary(m)["__total__"]["sparsity"]})
            r["magnitude"].append(accuracy(mag, xt, yt))
            r["calibrated"].append(accuracy(m, xt, yt))
            train(m, x, y, cfg.finetune_epochs, cfg.finetune_lr, seed=seed + 1000, progress=False)
            finalize(m)
            r["finetuned"].append(accuracy(m, xt, yt))
            bar.set_postfix(last=f"{pattern} {s:.0%}: {r['calibrated'][-1]:.1f}->{r['finetuned'][-1]:.1f}")
            bar.update(1)
    bar.close()
    from dataclasses import asdict

    return {"config": asdict(cfg), "dense": dense_acc, "rows": list(rows.values()),
            "layers": {"conv2": "N=64, K=288", "fc1": "N=128, K=256"}}
