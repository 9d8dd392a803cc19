"""What ptxas made of the sm_90a kernels: per kernel, registers, stack, wgmma count, and whether its wgmmas
are serialized.

ptxas serializes every wgmma of a kernel (info C7518, "wgmma.mma_async instructions are serialized") when it
cannot prove the accumulators are untouched between a wgmma and its wait, e.g. when the wgmmas sit in a branch
it thinks divergent. The kernel stays correct -- the host emulation cannot see it -- but each wgmma then waits
for the previous one (`WARPGROUP.DEPBAR.LE gsb0, 0x0` followed by the next `WARPGROUP.ARRIVE`), which throws
away the asynchrony the design's tensor term assumes. This reads the SASS of the built extension:

    python benchmarks/sass_report.py [path/to/_C.so]      # markdown table; exit 1 if a kernel is serialized

cuobjdump comes from $CUDA_HOME/bin, PATH, or the nvidia backend of the triton wheel that torch installs.
"""
import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys

_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);")
_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def find_cuobjdump():
    """cuobjdump's path, or None."""
    cands = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"), shutil.which("cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cands.append(os.path.join(loc, "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def parse_sass(text: str) -> dict:
    """Per function of a `cuobjdump -sass` listing: wgmma count, serialized waits, local loads/stores."""
    out, fn, prev = {}, None, None
    for line in text.splitlines():
        if "Function :" in line:
            fn = line.split("Function :", 1)[1].strip()
            out[fn] = dict(wgmma=0, serialized=0, local_ldst=0)
            prev = None
            continue
        m = _INSTR.search(line)
        if fn is None or m is None:
            continue
        ins = m.group(1).strip()
        if ins.startswith("@"):                 # predicate guard: the opcode follows it
            ins = ins.split(None, 1)[1] if " " in ins else ins
        if ins.startswith("NOP"):
            continue
        rec = out[fn]
        if ins.startswith("HGMMA"):
            rec["wgmma"] += 1
        if ins.startswith(("LDL", "STL")):
            rec["local_ldst"] += 1
        # a full wait straight before the next wgmma batch's arrive: the C7518 pattern
        if prev is not None and prev.startswith("WARPGROUP.DEPBAR.LE gsb0, 0x0") and ins.startswith("WARPGROUP.ARRIVE"):
            rec["serialized"] += 1
        prev = ins
    return out


def parse_resources(text: str) -> dict:
    """Per function of `cuobjdump --dump-resource-usage`: the last (sm_90a) registers / stack / shared / local."""
    out, fn = {}, None
    for line in text.splitlines():
        if "Function " in line and line.strip().startswith("Function"):
            fn = line.split("Function", 1)[1].strip().rstrip(":")
            continue
        m = _RESOURCE.search(line)
        if fn is not None and m:
            out[fn] = dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups())))
    return out


def report(so: str, cuobjdump: str, arch: str = "sm_90a") -> dict:
    """{kernel: {wgmma, serialized, local_ldst, regs, stack, shared, local}} for the kernels with wgmma."""
    sass = subprocess.run([cuobjdump, "-sass", "-arch", arch, so], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([cuobjdump, "--dump-resource-usage", "-arch", arch, so], capture_output=True, text=True,
                         check=True).stdout
    kern = {f: r for f, r in parse_sass(sass).items() if r["wgmma"] > 0}
    resources = parse_resources(res)
    for f, r in kern.items():
        r.update(resources.get(f, {}))
    return kern


def _demangled(name: str) -> str:
    m = re.match(r"_ZN10tilesparse4cuda\d+(\w+?)I", name)
    return m.group(1) if m else name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("so", nargs="?", help="the built extension (default: tilesparse._C of this checkout)")
    args = ap.parse_args(argv)
    so = args.so
    if so is None:
        spec = importlib.util.find_spec("tilesparse._C")
        so = spec.origin if spec else None
    tool = find_cuobjdump()
    if so is None or tool is None:
        print(f"sass_report: need the built extension ({so}) and cuobjdump ({tool})", file=sys.stderr)
        return 2
    kern = report(so, tool)
    print("| kernel | instantiation | wgmma | serialized waits | regs | stack B | local ld/st |")
    print("|---|---|---|---|---|---|---|")
    for f in sorted(kern):
        r = kern[f]
        print(f"| {_demangled(f)} | `{f}` | {r['wgmma']} | {r['serialized']} | {r.get('regs', '?')} | "
              f"{r.get('stack', '?')} | {r['local_ldst']} |")
    bad = [f for f, r in kern.items() if r["serialized"]]
    if bad:
        print(f"serialized wgmma (ptxas C7518) in: {', '.join(map(_demangled, bad))}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
