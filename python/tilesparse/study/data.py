"""Data of the study: real English text (Debian's ``fortunes``) and sklearn's digits.

Nothing is downloaded: the text comes from the ``fortunes`` / ``fortunes-min``
Debian packages (``apt-get install fortunes fortunes-min``), the images from
scikit-learn's bundled copy of the UCI handwritten digits (8x8).
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["FORTUNE_DIR", "load_fortunes", "split_texts", "fortune_split", "load_digits_split"]

FORTUNE_DIR = "/usr/share/games/fortunes"

# Collections that are not prose (ASCII pictures) or not English.
_SKIP_FILES = {"art", "ascii-art", "translate-me"}


def _parse(text: str) -> List[str]:
    """Entries of one fortune file: separated by lines holding only ``%``."""
    return [e for e in re.split(r"^%\s*$", text, flags=re.MULTILINE)]


def _clean(entry: str) -> str:
    return " ".join(entry.split())


def load_fortunes(directory: Optional[str] = None, min_chars: int = 24, max_chars: int = 320,
                  files: Optional[Sequence[str]] = None) -> List[str]:
    """Unique fortune entries (whitespace collapsed) of ``min_chars`` to
    ``max_chars`` characters, in a deterministic order (file name, then
    position), from ``directory`` (default ``/usr/share/games/fortunes``).

    Raises FileNotFoundError (naming the Debian packages) when there is none.
    """
    directory = directory or os.environ.get("TILESPARSE_FORTUNE_DIR", FORTUNE_DIR)
    if files is None:
        paths = sorted(p for p in glob.glob(os.path.join(directory, "*"))
                       if os.path.isfile(p) and not os.path.islink(p) and "." not in os.path.basename(p)
                       and os.path.basename(p) not in _SKIP_FILES)
    else:
        paths = [os.path.join(directory, f) for f in files]
    seen, out = set(), []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for entry in _parse(fh.read()):
                e = _clean(entry)
                if min_chars <= len(e) <= max_chars and e not in seen:
                    seen.add(e)
                    out.append(e)
    if not out:
        raise FileNotFoundError(
            f"no fortune entries under {directory!r}: install Debian's fortunes "
            "(`apt-get install -y fortunes fortunes-min`, the Makefile's sys-deps does) or set TILESPARSE_FORTUNE_DIR")
    return out


def _bucket(text: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the text itself (order-free split)."""
    h = hashlib.sha1((salt + text).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def split_texts(texts: Sequence[str], held_out: float = 0.2, salt: str = "tilesparse") -> Tuple[List[str], List[str]]:
    """Deterministic train / held-out split by a hash of each text, so a text
    lands on the same side whatever else is in the corpus. Both lists keep the
    corpus order."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    train, test = [], []
    for t in texts:
        (test if _bucket(t, salt) < held_out else train).append(t)
    return train, test


def _subsample(texts: List[str], n: Optional[int], salt: str) -> List[str]:
    if n is None or n >= len(texts):
        return list(texts)
    return sorted(texts, key=lambda t: _bucket(t, salt))[:n]


def fortune_split(n_train: Optional[int] = None, n_eval: Optional[int] = None, directory: Optional[str] = None,
                  held_out: float = 0.2) -> Tuple[List[str], List[str]]:
    """``(train, held_out)`` fortune texts; ``n_train`` / ``n_eval`` take a
    deterministic (hash-ordered) subset of each side."""
    train, test = split_texts(load_fortunes(directory), held_out)
    return _subsample(train, n_train, "train"), _subsample(test, n_eval, "eval")


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's bundled digits as ``(x_train, y_train, x_test, y_test)``:
    images ``[B, 1, 8, 8]`` float32 in [0, 1], labels int64; a stratified
    split fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx = list(range(len(y)))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=d.target)
    tr, te = torch.tensor(sorted(tr)), torch.tensor(sorted(te))
    return x[tr], y[tr], x[te], y[te]
