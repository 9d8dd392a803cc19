"""The package's import structure: no import circle, no private names taken from sparsify."""
import ast
import os
import subprocess
import sys

import pytest

import tilesparse

PKG = os.path.dirname(tilesparse.__file__)

# Orders that used to run into sparsify -> integrations -> hf_quantizer -> serialization -> sparsify
# (the transformers registry first: tilesparse then registers its quantizer while it is being imported).
ORDERS = [
    ["tilesparse.serialization"],
    ["tilesparse.integrations.hf_quantizer"],
    ["tilesparse.integrations.transformers", "tilesparse.sparsify"],
    ["transformers.quantizers.auto", "tilesparse.serialization"],
    ["transformers.quantizers.auto", "tilesparse.integrations.hf_quantizer", "tilesparse.sparsify"],
    ["transformers.quantizers.auto", "tilesparse.sparsify", "tilesparse.integrations.transformers"],
    ["tilesparse.oneshot", "tilesparse.distill", "tilesparse.pruner"],
]


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "+".join(x.split(".")[-1] for x in o))
def test_submodules_import_in_a_fresh_interpreter(order):
    if any(m.startswith("transformers") for m in order):
        pytest.importorskip("transformers")
    code = "; ".join(f"import {m}" for m in order) + \
        "; import sys; s = sys.modules['tilesparse.sparsify']; " \
        "assert any(h.__name__ == 'attach_if_transformers' for h in s._SWAP_HOOKS)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node


def test_no_module_imports_a_private_name_from_sparsify():
    bad = []
    for path in _modules():
        for node in _imports(path):
            if (node.module or "").split(".")[-1] == "sparsify":
                bad += [f"{os.path.relpath(path, PKG)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, bad


def test_sparsify_does_not_import_the_integrations():
    # the transformers integration hooks itself in from above (register_swap_hook)
    path = os.path.join(PKG, "sparsify.py")
    mods = [n.module or "" for n in _imports(path)] + \
        [a.name for n in ast.walk(ast.parse(open(path).read())) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if "integrations" in m], mods
