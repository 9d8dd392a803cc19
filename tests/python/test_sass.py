"""What ptxas made of the sm_90a kernels (benchmarks/sass_report.py), checked where the CUDA kernels are built.

The host emulation proves the kernels compute the right thing, but not that the compiled code keeps their
wgmmas asynchronous: ptxas silently serializes every wgmma of a kernel (info C7518) when it cannot prove the
accumulators untouched between a wgmma and its wait. That happened once (the grad_values kernel's wgmmas sat
in a branch ptxas thought divergent); this keeps it from coming back unnoticed. No GPU needed: the SASS is in
the built extension.
"""
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("sass_report", os.path.join(ROOT, "benchmarks", "sass_report.py"))
sr = importlib.util.module_from_spec(_spec)
sys.modules["sass_report"] = sr
_spec.loader.exec_module(sr)

# Two wgmma batches as ptxas writes them: pipelined (one wait <= 1 per batch) and serialized (C7518).
_PIPELINED = """
        Function : _ZN10tilesparse4cuda6goodEv
        /*1d30*/                   WARPGROUP.ARRIVE ;
        /*1ed0*/                   HGMMA.64x128x16.F32.BF16 R88, gdesc[UR12].tnspA.tnspB, R88, UP0 ;
        /*1f50*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR16].tnspA.tnspB, R24, gsb0 ;
        /*22a0*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*22b0*/                   SYNCS.ARRIVE.TRANS64.RED.A1T0 RZ, [UR4], RZ ;
        /*2300*/                   WARPGROUP.ARRIVE ;
        /*2310*/                   HGMMA.64x128x16.F32.BF16 R88, gdesc[UR12].tnspA.tnspB, R88, gsb0 ;
        /*2510*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*2520*/                   STL [R1+0xc], R2 ;
        /*2530*/                   EXIT ;
"""
_SERIALIZED = """
        Function : _ZN10tilesparse4cuda3badEv
        /*1d40*/                   WARPGROUP.ARRIVE ;
        /*1f20*/                   HGMMA.64x128x16.F32.BF16 R88, gdesc[UR12].tnspA.tnspB, R88, UP0, gsb0 ;
        /*2030*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*2038*/                   NOP ;
        /*2040*/                   WARPGROUP.ARRIVE ;
        /*2050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR16].tnspA.tnspB, R24, UP0, gsb0 ;
        /*2190*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*21a0*/                   WARPGROUP.ARRIVE ;
        /*21b0*/                   HGMMA.64x128x16.F32.BF16 R88, gdesc[UR12].tnspA.tnspB, R88, gsb0 ;
        /*2210*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
"""


def test_parse_sass_tells_serialized_from_pipelined():
    got = sr.parse_sass(_PIPELINED + _SERIALIZED)
    good, bad = got["_ZN10tilesparse4cuda6goodEv"], got["_ZN10tilesparse4cuda3badEv"]
    assert good == dict(wgmma=3, serialized=0, local_ldst=1)
    assert bad == dict(wgmma=3, serialized=2, local_ldst=0)


def test_parse_resources_keeps_the_last_arch():
    text = ("Resource usage:\n Common:\n  GLOBAL:0\n Function _ZN1fEv:\n  REG:4 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:896\n"
            " Function _ZN1fEv:\n  REG:168 STACK:32 SHARED:1024 LOCAL:0 CONSTANT[0]:1152\n")
    assert sr.parse_resources(text) == {"_ZN1fEv": dict(regs=168, stack=32, shared=1024, local=0)}


def _built_extension():
    torch = pytest.importorskip("torch")  # noqa: F841
    import tilesparse

    if not tilesparse.built_with_cuda():
        pytest.skip("tilesparse._C was built without the CUDA kernels (no nvcc or a CPU-only torch)")
    spec = importlib.util.find_spec("tilesparse._C")
    tool = sr.find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump ($CUDA_HOME/bin, PATH, or the triton wheel's nvidia backend)")
    return spec.origin, tool


def test_sm90a_kernels_keep_their_wgmmas_asynchronous():
    so, tool = _built_extension()
    kern = sr.report(so, tool)
    names = {sr._demangled(f) for f in kern}
    # every sm_90a kernel family is in the binary, with wgmma (a stubbed body would have none)
    assert {"tw_fwd_sm90_kernel", "tw_fwd_sm90u_kernel", "tw_fwd_sm90u_small_kernel", "tw_gv_sm90u_kernel",
            "tw_gi_sm90_kernel"} <= names
    serialized = {f: r["serialized"] for f, r in kern.items() if r["serialized"]}
    assert not serialized, f"ptxas serialized the wgmmas (C7518) of {serialized}"
    for f, r in kern.items():
        assert r.get("local", 0) == 0, f"{f}: {r['local']} B of local memory (spills)"
        assert r.get("regs", 0) <= 168, f"{f}: {r['regs']} registers: 384 threads x 168 is the register file"
    print(f"sm_90a SASS: {len(kern)} kernels with wgmma, none serialized: "
          + ", ".join(f"{n} {sum(r['wgmma'] for f, r in kern.items() if sr._demangled(f) == n)}" for n in sorted(names)))
