"""The performance model of the CUDA tile-wise kernels (docs/performance.md).

Prints, for every benchmark shape, the physical cap of a tile-wise layer over
dense and the speedup the model predicts for the v2 forward and for
grad_values (v1 and v2) on H100 and A100, so that the first GPU run
(scripts/gpu_check.sh) tests the model:

    python benchmarks/perf_model.py            # markdown table
    python benchmarks/perf_model.py --json     # records with every term

The model (bf16, all times in seconds):
  dense   t_d = max(F / R_dense, io / B_hbm)             F = 2 M N K, io = 2 (M K + M N + N K)
  cap         = t_d / max((1 - s) t_d, 2 (M K + M N) / B_hbm)    (the issue's cap: x read, y written)
  v2      t_s = max(F_s / R_mma, F_s * q_l2 / B_l2, bytes_hbm / B_hbm) + launches
          F_s = (1 - s) F;  q_l2 = 1 / (BN (1 - s)) + 1 / BM  (x once per 128-row block and 256 outputs,
          V once per block);  bytes_hbm = 2 (M K + M N + (1 - s) N K) + index bytes
  small M (M <= 64): t_s = bytes_hbm / (eta B_hbm) + launches, eta = achievable fraction of HBM bandwidth.
  grad_values (gV = gy^T x over the kept slots, vs cuBLAS's dense gW, same FLOPs as the dense forward):
      t_gv = max(F_s / R_mma, F_s * q / B_l2, bytes_hbm / B_hbm) + launches, with
      v1: q = 1 / 128 + 1 / (128 (1 - s))      (gy once per 128 outputs; x's sectors per tile: all of them)
      v2: q = 1 / (256 (1 - s)) + 1 / ((1 - s) KC)   (x chunk of KC features once per 256 outputs of 4 tiles,
          gy once per chunk), KC = 112 / (1 - s) rounded down to a multiple of 128 in [128, 512]
R_mma is what the v2 mainloop can sustain: mma.sync's own ceiling on the device times the fraction left by
the A-fragment gathers (32 2-byte shared-memory loads and ~4 issue slots per mma per warp step,
docs/performance.md). Every constant below is a prior, to be replaced by the ceilings gpu_check.sh measures.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Device:
    name: str
    hbm: float          # bytes/s, HBM
    l2: float           # bytes/s, L2 -> SM (re-read bandwidth)
    peak: float         # FLOP/s, bf16 tensor-core peak (dense)
    dense: float        # FLOP/s, cuBLAS bf16 on large GEMMs
    mma_sync: float     # fraction of peak that mma.sync reaches (wgmma on sm_90 reaches more)
    gather: float       # fraction of that left by the v2 A gathers (issue slots, shared-memory wavefronts)
    launch: float       # seconds per kernel launch (stream, no graph)
    eta_stream: float   # fraction of HBM bandwidth a split-K weight stream reaches

    @property
    def mma(self) -> float:
        """FLOP/s the v2 mainloop sustains when nothing else binds."""
        return self.peak * self.mma_sync * self.gather


H100 = Device("H100 SXM", 3.35e12, 7.0e12, 989e12, 800e12, 0.62, 0.66, 4e-6, 0.75)
A100 = Device("A100 SXM", 2.0e12, 4.8e12, 312e12, 270e12, 0.85, 0.75, 5e-6, 0.75)
BM, BN = 128, 256  # v2 block: rows x outputs (4 slices of 64)

# (M, K, N): the benchmark's shapes (benchmarks/bench_linear.py --device cuda)
BERT = [(768, 768), (768, 3072), (3072, 768), (1024, 4096)]
LLM = [(4096, 14336), (14336, 4096), (8192, 8192)]
LARGE_M = 16384
SMALL_M = [1, 16, 64]
SPARSITIES = [0.5, 0.75, 0.9]
TABLE_SPARSITIES = [0.5, 0.75]


def dense_time(dev: Device, m: int, k: int, n: int, launch: bool = True) -> float:
    flops = 2.0 * m * n * k
    io = 2.0 * (m * k + m * n + n * k)
    return max(flops / dev.dense, io / dev.hbm) + (dev.launch if launch else 0.0)


def cap(dev: Device, m: int, k: int, n: int, s: float) -> float:
    """The physical cap of the issue: x read and y written once, compute scaled by the density."""
    t_d = dense_time(dev, m, k, n, launch=False)
    return t_d / max((1 - s) * t_d, 2.0 * (m * k + m * n) / dev.hbm)


def v2_time(dev: Device, m: int, k: int, n: int, s: float, tile: int = 128) -> dict:
    d = 1.0 - s
    flops = 2.0 * m * n * k * d
    idx = 4.0 * (n + n / tile + k * d * n / tile)  # cols, row_offsets, rows
    hbm_bytes = 2.0 * (m * k + m * n + d * n * k) + idx
    launches = 1 + (1 if m <= 64 else 0)  # main, split reduction (chunk bounds cached with the layout)
    if m <= 64:
        t_hbm = hbm_bytes / (dev.eta_stream * dev.hbm)
        return dict(t=t_hbm + launches * dev.launch, bound="hbm stream", q_l2=None, hbm_bytes=hbm_bytes)
    q_l2 = 1.0 / (BN * d) + 1.0 / BM
    terms = {"mma": flops / dev.mma, "l2": flops * q_l2 / dev.l2, "hbm": hbm_bytes / dev.hbm}
    bound = max(terms, key=terms.get)
    return dict(t=terms[bound] + launches * dev.launch, bound=bound, q_l2=q_l2, hbm_bytes=hbm_bytes)


def gv_chunk(s: float, k: int) -> int:
    """v2 grad_values' x chunk width (tw_bwd_launch.cuh gv_v2_chunk_width, ignoring shared memory)."""
    kc = int(112.0 / (1.0 - s)) // 128 * 128
    return max(128, min(kc, 512, max(128, -(-k // 128) * 128)))


def gv_time(dev: Device, m: int, k: int, n: int, s: float, kernel: str, tile: int = 128) -> dict:
    """grad_values, bf16, M >= 4096 (one M-split per block or a few)."""
    d = 1.0 - s
    flops = 2.0 * m * n * k * d
    idx = 4.0 * (n + n / tile + k * d * n / tile)
    hbm_bytes = 2.0 * (m * k + m * n + d * n * k) + idx
    if kernel == "v1":
        q_l2 = 1.0 / 128 + 1.0 / (128 * d)
        launches = 1
    else:
        kc = gv_chunk(s, k)
        q_l2 = 1.0 / (256 * d) + 1.0 / (d * kc)
        launches = 2  # chunk bounds, main
    terms = {"mma": flops / dev.mma, "l2": flops * q_l2 / dev.l2, "hbm": hbm_bytes / dev.hbm}
    bound = max(terms, key=terms.get)
    return dict(t=terms[bound] + launches * dev.launch, bound=bound, q_l2=q_l2)


def records():
    out = []
    shapes = [(LARGE_M, k, n) for k, n in BERT + LLM] + [(m, k, n) for m in SMALL_M for k, n in LLM[:1] + BERT[1:2]]
    for dev in (H100, A100):
        for m, k, n in shapes:
            for s in SPARSITIES:
                v2 = v2_time(dev, m, k, n, s)
                t_d = dense_time(dev, m, k, n)
                rec = dict(device=dev.name, M=m, K=k, N=n, sparsity=s, cap=cap(dev, m, k, n, s),
                           dense_us=t_d * 1e6, v2_us=v2["t"] * 1e6, speedup=t_d / v2["t"], bound=v2["bound"],
                           q_l2=v2["q_l2"], io_bytes=2 * (m * k + m * n))
                if m >= 4096:
                    for kern in ("v1", "v2"):
                        g = gv_time(dev, m, k, n, s, kern)
                        rec[f"gv_{kern}_speedup"] = t_d / g["t"]
                        rec[f"gv_{kern}_bound"] = g["bound"]
                        rec[f"gv_{kern}_q_l2"] = g["q_l2"]
                out.append(rec)
    return out


def markdown(recs) -> str:
    lines = ["| device | M | K | N | s | cap | predicted v2 / dense | bound |", "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["sparsity"] not in TABLE_SPARSITIES:
            continue
        lines.append(f"| {r['device']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | {r['cap']:.2f}x | "
                     f"{r['speedup']:.2f}x | {r['bound']} |")
    lines += ["", "grad_values (vs cuBLAS's dense weight gradient)", "",
              "| device | M | K | N | s | v1 / dense | v1 bound | v2 / dense | v2 bound |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["sparsity"] not in TABLE_SPARSITIES or "gv_v2_speedup" not in r:
            continue
        lines.append(f"| {r['device']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | "
                     f"{r['gv_v1_speedup']:.2f}x | {r['gv_v1_bound']} | {r['gv_v2_speedup']:.2f}x | {r['gv_v2_bound']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    args = ap.parse_args()
    recs = records()
    if args.json:
        print(json.dumps({"devices": [dict(asdict(d), mma=d.mma) for d in (H100, A100)], "records": recs}, indent=1))
    else:
        print(markdown(recs))


if __name__ == "__main__":
    main()
