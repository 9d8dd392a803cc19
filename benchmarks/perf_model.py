"""The performance model of the CUDA tile-wise kernels (docs/performance.md).

Prints, for every benchmark shape, the physical cap of a tile-wise layer over
dense and the speedup the model predicts for the v2 forward, for the sm_90a
forward (design A: csrc/cuda/tw_fwd_sm90_kernels.cuh, and design U for
unit-16 layouts: csrc/cuda/tw_fwd_sm90u_kernels.cuh), and for grad_values (v1, v2;
a wgmma version modelled) on H100 and A100, so that the first GPU run
(scripts/gpu_check.sh) tests the model:

    python benchmarks/perf_model.py            # markdown tables
    python benchmarks/perf_model.py --json     # records with every term

The model (bf16, all times in seconds):
  dense   t_d = max(F / R_dense, io / (eta_hbm B_hbm)) + launch    F = 2 M N K, io = 2 (M K + M N + N K)
  cap         = t_d0 / max((1 - s) t_d0, 2 (M K + M N) / B_hbm)   (the issue's cap: x read, y written, nominal
          bandwidth; t_d0 = max(F / R_dense, io / B_hbm), no launch)
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
docs/performance.md).

sm_90 (H100 only; A100 records carry None): counted per wgmma m64n128k16 ("unit", 262,144 FLOP = 64 clocks
of one SM's tensor cores), term by term, in SM clocks:
  tensor  64 per unit (padded positions and padded rows included)
  smem    shared-memory wavefronts (128 B/clk): A gathers (simulated on random layouts: bank conflicts of the
          128B-swizzled x chunk), wgmma's operand reads (a prior: counted, WGMMA_READS), TMA writes (x chunk,
          B stages)
  issue   instructions per consumer warp per k16 step (counted, SM90_ISSUE) / 2 per unit and SMSP
  tma     box lines (<= 128 B each) per unit over TMA_LINES_PER_CLK
  l2      F * q_l2 / B_l2 (x once per cluster of C CTAs, V once per CTA)
  hbm     bytes / (eta_hbm B_hbm), x re-read per slice group when the item order evicts it from L2
  launch  one launch (the per-tile tensor maps and chunk bounds are cached with the layout)
  (small M) tail: the last CTA of a slice group adds the split partials
The SM terms run at R = peak x eta_pipe, eta_pipe = cuBLAS's own fraction of peak over what the same smem
model gives its 128x256 mainloop (so the model reproduces cuBLAS): t = max(throughput terms) + launch + tail,
bound = the largest term. Every constant is a prior, to be replaced by the ceilings gpu_check.sh measures.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Device:
    name: str
    hbm: float          # bytes/s, HBM (nominal)
    l2: float           # bytes/s, L2 -> SM (re-read bandwidth)
    peak: float         # FLOP/s, bf16 tensor-core peak (dense)
    dense: float        # FLOP/s, cuBLAS bf16 on large GEMMs
    mma_sync: float     # fraction of peak that mma.sync reaches (wgmma on sm_90 reaches more)
    gather: float       # fraction of that left by the v2 A gathers (issue slots, shared-memory wavefronts)
    launch: float       # seconds per kernel launch (stream, no graph)
    eta_stream: float   # fraction of HBM bandwidth v2's cp.async split-K weight stream reaches
    sms: int = 132
    tc_flop_clk: float = 4096.0   # bf16 FLOP per clock per SM (tensor cores)
    smem_bpc: float = 128.0       # shared-memory bytes per clock per SM (32 banks x 4 B: one wavefront)
    l2_bytes: float = 50e6
    l2_eff: float = 0.6           # fraction of L2 that keeps a re-used operand resident against a stream
    eta_hbm: float = 0.9          # fraction of nominal HBM bandwidth a deep stream reaches (copy ceiling)
    smem_optin: int = 227 * 1024  # shared memory one block may opt in to (grad_input's chunk width)
    sm_bpc: float = 64.0          # bytes per clock one SM pulls from L2 (the split reduction's tail)
    tma_lines_clk: float = 1.0    # TMA box lines (<= 128 B) per clock per SM (least known prior)
    launch_pdl: float = 1e-6      # launch term with programmatic dependent launch (modelled, not built)
    dsmem_bpc: float = 32.0       # bytes per clock one SM reads from another's shared memory (DSMEM)
    sm90: bool = False            # has wgmma / TMA multicast (sm_90a)

    @property
    def mma(self) -> float:
        """FLOP/s the v2 mainloop sustains when nothing else binds."""
        return self.peak * self.mma_sync * self.gather

    @property
    def clk(self) -> float:
        """SM clock (Hz) at which the tensor cores give the peak."""
        return self.peak / (self.sms * self.tc_flop_clk)


H100 = Device("H100 SXM", 3.35e12, 7.0e12, 989e12, 800e12, 0.62, 0.66, 4e-6, 0.75, sm90=True)
A100 = Device("A100 SXM", 2.0e12, 4.8e12, 312e12, 270e12, 0.85, 0.75, 5e-6, 0.75, sms=108, tc_flop_clk=2048.0,
              l2_bytes=40e6, smem_optin=163 * 1024)
BM, BN = 128, 256  # v2 block: rows x outputs (4 slices of 64)

# (M, K, N): the benchmark's shapes (benchmarks/bench_linear.py --device cuda)
BERT = [(768, 768), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024)]
LLM = [(4096, 14336), (14336, 4096), (8192, 8192)]
LARGE_M = 16384
MID_M = 4096       # the bench's other large M (BERT shapes only)
SMALL_M = [1, 16, 64]
SPARSITIES = [0.5, 0.75, 0.9]
TABLE_SPARSITIES = [0.5, 0.75]

# ---- sm_90a constants (/tmp/sm90_design.md, docs/performance.md "sm_90a forward") ----------------------
UNIT_FLOP = 2 * 64 * 128 * 16   # one wgmma m64n128k16
UNIT_CLK = 64                   # its tensor time on one SM at 4096 FLOP/clk
SLICE = 128                     # outputs per consumer warpgroup (one tile of 128)
SLICES_CTA = 2                  # consumer warpgroups per CTA
BM_A, BM_A_SMALL = 128, 64      # design A rows per CTA (two m64 halves; one at M <= 64)
C_A = 4                         # design A cluster: CTAs sharing one multicast x stream
KC = 64                         # x chunk features (128 B per row, 128B swizzle)
X_CHUNK_BYTES = BM_A * KC * 2   # 16 KB
B_STAGE_STEPS = 4               # k16 steps per B stage ([128 rows x 64 positions] = 16 KB)
BM_U, C_U = 256, 4              # design U: rows per CTA (2 WGs x m128), cluster along M (B multicast)
WGMMA_READS = True              # prior: wgmma's shared-memory operand reads count against 128 B/clk
SIM_K, SIM_TILES, SIM_SEED = 4096, 24, 0


def bars(m: int, k: int, n: int, s: float, cap_: float):
    """The issue's H100 targets: M >= 4096: 0.85 cap at 75%, 0.8 cap at 50%; M <= 64 on 4096x14336 at 75%: 3.0x."""
    if m >= 4096 and s == 0.75:
        return 0.85 * cap_
    if m >= 4096 and s == 0.5:
        return 0.8 * cap_
    if m <= 64 and (k, n) == (4096, 14336) and s == 0.75:
        return 3.0
    return None


def dense_time(dev: Device, m: int, k: int, n: int, launch: bool = True, eta: bool = True) -> float:
    """cuBLAS bf16: compute at R_dense, or its bytes at the same achievable HBM fraction as every other stream
    (eta_hbm: cuBLAS's GEMV/small-M GEMM is a weight stream like ours; gpu_check's copy ceiling replaces both)."""
    flops = 2.0 * m * n * k
    io = 2.0 * (m * k + m * n + n * k)
    bw = dev.hbm * (dev.eta_hbm if eta else 1.0)
    return max(flops / dev.dense, io / bw) + (dev.launch if launch else 0.0)


def cap(dev: Device, m: int, k: int, n: int, s: float) -> float:
    """The physical cap of the issue: x read and y written once, compute scaled by the density (nominal HBM)."""
    t_d = dense_time(dev, m, k, n, launch=False, eta=False)
    return t_d / max((1 - s) * t_d, 2.0 * (m * k + m * n) / dev.hbm)


def floor_time(dev: Device, m: int, k: int, n: int, s: float) -> float:
    """The best any tile-wise kernel does under these priors: the kept FLOPs at cuBLAS's rate, or its fewest bytes
    (x, kept V, indices, y once) at the achievable HBM fraction, plus one launch. Where a bar exceeds
    t_d / floor_time, no design meets it and the binding term is the launch or the HBM fraction, not the kernel."""
    bytes_min = 2.0 * (m * k + m * n + (1 - s) * n * k) + index_bytes(k, n, s)
    return max(2.0 * m * n * k * (1 - s) / dev.dense, bytes_min / (dev.eta_hbm * dev.hbm)) + dev.launch


def index_bytes(k: int, n: int, s: float, tile: int = 128) -> float:
    return 4.0 * (n + n / tile + k * (1 - s) * n / tile)  # cols, row_offsets, rows


def v2_time(dev: Device, m: int, k: int, n: int, s: float, tile: int = 128) -> dict:
    d = 1.0 - s
    flops = 2.0 * m * n * k * d
    hbm_bytes = 2.0 * (m * k + m * n + d * n * k) + index_bytes(k, n, s, tile)
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
    hbm_bytes = 2.0 * (m * k + m * n + d * n * k) + index_bytes(k, n, s, tile)
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


GI_BM, GI_NB, GI_BK, GI_STAGES = 128, 64, 32, 3   # grad_input v1 block (tw_bwd_launch.cuh kGiBM, kGiNB, kGiBK)


def gi_chunk(dev: Device, s: float, k: int) -> int:
    """grad_input v1's K-chunk width (plan_grad_input): a tile keeps ~0.8 NB features of a chunk, within the
    fp32 chunk accumulator's shared memory."""
    pipe = GI_STAGES * (GI_BM * (GI_BK + 8) + GI_BK * (GI_NB + 8)) * 2 + GI_STAGES * 32
    kc_max = ((dev.smem_optin - pipe) // (GI_BM * 4) - 4) // 8 * 8
    kc = int(0.8 * GI_NB / (1.0 - s)) // 8 * 8
    return min(max(64, min(kc, kc_max)), max(64, -(-k // 8) * 8))


def gi_time(dev: Device, m: int, k: int, n: int, s: float, tile: int = 128) -> dict:
    """grad_input v1 (tw_grad_input_mma_kernel, the only grad_input kernel): block = (K-chunk of kc features,
    128 rows); per tile, gy[128 rows x 128 outputs] @ V_t[:, the chunk's kept positions] by mma.sync in items of
    NB = 64 columns, each item's fp32 product added into the chunk's accumulator in shared memory.
    L2: gy once per (tile, chunk): 1 / (d kc) B/FLOP, V once per 128-row block: 1 / 128.
    Shared memory per 32-deep stage of 8 warps (2 x 128 x 64 x 32 FLOP): ldmatrix operand reads 8 x (2 + 2) KB,
    cp.async writes 8 + 4 KB, the accumulator's read-modify-write 128 x 64 x 8 B per 4 stages = 16 KB.
    An item computes all NB columns: FLOP efficiency kept / (NB ceil(kept / NB))."""
    d = 1.0 - s
    flops = 2.0 * m * n * k * d
    kc = gi_chunk(dev, s, k)
    kept = max(1.0, d * min(kc, k))
    waste = GI_NB * math.ceil(kept / GI_NB) / kept
    q_l2 = 1.0 / kept + 1.0 / GI_BM
    smem_q = (8 * 4096 + (GI_BM * GI_BK + GI_BK * GI_NB) * 2 + GI_BM * GI_NB * 8 / (128 / GI_BK)) / (
        2.0 * GI_BM * GI_NB * GI_BK)
    smem_rate = dev.smem_bpc * dev.sms * dev.clk
    hbm = (2.0 * (m * k + m * n + d * n * k) + index_bytes(k, n, s, tile)) / (dev.eta_hbm * dev.hbm)
    terms = dict(mma=flops * waste / (dev.peak * dev.mma_sync), smem=flops * waste * smem_q / smem_rate,
                 l2=flops * q_l2 / dev.l2, hbm=hbm, launch=2 * dev.launch)   # chunk bounds + main
    return _result(terms, q_l2=q_l2, kc=kc)


# prefer_dense_backward (tw_bwd_launch.cuh): the sparse kernels' sustained rates on the bench shapes (gi_time and
# gv_time at M = 16384: grad_input v1 154-205 TFLOP/s on an H100, grad_values v2 239-298), per architecture
# and grad_input on wgmma (sm90_gi_time at 75% on the LLM shapes: 231-248) where it runs
DENSE_RULE_RATES = {"H100 SXM": dict(dense=800e12, grad_input=195e12, grad_values=280e12, hbm=0.9 * 3.35e12, launch=4e-6,
                                     grad_input_sm90=235e12),
                    "A100 SXM": dict(dense=270e12, grad_input=122e12, grad_values=185e12, hbm=0.9 * 2.0e12, launch=5e-6)}


def prefer_dense_backward(dev: Device, op: str, m: int, k: int, n: int, s: float, sm90: bool = False) -> bool:
    """The built rule (prefer_dense_backward), mirrored: the dense fallback where it beats the sparse kernel's
    sustained rate by 10% (sm90: grad_input's sparse kernel is the wgmma one)."""
    r = DENSE_RULE_RATES[dev.name]
    flops = 2.0 * m * n * k
    nv = (1.0 - s) * n * k
    rate = r["grad_input_sm90"] if op == "grad_input" and sm90 and "grad_input_sm90" in r else r[op]
    sparse = flops * (1.0 - s) / rate + 2 * r["launch"]
    dense = flops / r["dense"] + 2.0 * (n * k + nv) / r["hbm"] + 2 * r["launch"]
    return dense < 0.9 * sparse


def gi_sm90_pays(s: float) -> bool:
    """The built rule (gi_sm90_pays in tw_bwd_launch.cuh): grad_input on wgmma where a tile keeps >= 20% of K."""
    return 5 * (1.0 - s) >= 1.0 - 1e-9


def gi_plan(dev: Device, m: int, k: int, n: int, s: float) -> str:
    """grad_input's built dispatch on a layout the sm90 kernel applies to (1-D TW, tile 128): dense where the
    fallback wins (prefer_dense_backward against the kernel that would run), else sm90 where it pays, else v1."""
    sm90 = dev.sm90 and gi_sm90_pays(s)
    if prefer_dense_backward(dev, "grad_input", m, k, n, s, sm90=sm90):
        return "dense"
    return "sm90" if sm90 else "v1"


def dense_grad_time(dev: Device, m: int, k: int, n: int, s: float) -> float:
    """The dense fallback of a backward op: unpack V into a dense [N, K] weight (grad_input) or pack the dense
    weight gradient (grad_values), one cuBLAS GEMM; the extra stream is N K + d N K elements, one more launch."""
    extra = 2.0 * (n * k + (1.0 - s) * n * k) / (dev.eta_hbm * dev.hbm)
    return dense_time(dev, m, k, n) + extra + dev.launch


# =============================================================================================================
# sm_90a: shared-memory and issue counts per wgmma unit
# =============================================================================================================
def cublas_sm90_smem_util(wgmma_reads: bool = WGMMA_READS) -> float:
    """cuBLAS's sm90 128x256 mainloop (2 consumer WGs x m64n256k16 per k16, 256 clk at peak): A + B TMA writes
    (128 + 256) x 16 x 2 B, wgmma reads 2 x (2 KB A + 8 KB B); shared-memory clocks over tensor clocks."""
    writes = (128 + 256) * 16 * 2
    reads = 2 * (64 * 16 * 2 + 256 * 16 * 2) if wgmma_reads else 0
    return (writes + reads) / 128.0 / 256.0


def eta_pipe(dev: Device, wgmma_reads: bool = WGMMA_READS) -> float:
    """The fraction of its bound a wgmma mainloop reaches (clock under load, prologue/epilogue, waves,
    synchronisation), calibrated so that the same model reproduces cuBLAS: dense / peak x max(1, util)."""
    return dev.dense / dev.peak * max(1.0, cublas_sm90_smem_util(wgmma_reads))


def _kept_features(k: int, d: float, unit: int, rng: random.Random, pad: int = 8) -> list:
    """One tile's kept features as tile_mask keeps them from random scores (aligned runs of `unit`), padded to
    a multiple of `pad` by repeating the last one (the layout's padding)."""
    runs = -(-k // unit)
    keep = max(1, round(d * runs))
    sel = sorted(rng.sample(range(runs), keep))
    f = [u * unit + i for u in sel for i in range(unit) if u * unit + i < k]
    while len(f) % pad:
        f.append(f[-1])
    return f


@functools.lru_cache(maxsize=None)
def gather_stats(d: float, unit: int, k: int = SIM_K, tiles: int = SIM_TILES, seed: int = SIM_SEED,
                 permute: bool = False) -> dict:
    """Design A's register-A gathers from the 128B-swizzled x chunk, simulated on random tiles.

    Element (r, f) of chunk c lives at r*128 + (((f%64)/8 ^ r%8) * 16) + (f%8)*2: bank = ((f%64)/8 ^ r%8)*4 +
    (f%8)/2. One LDS.U16 of a warp reads rows 16w + g (8 rows, g = lane/4) x positions 2t + e + 8h (4 kept
    features, t = lane%4): each feature fills the 8 banks of its class (f%8)/2 (the rows spread it over the 8
    chunks), so the wavefronts are the largest number of distinct 16-byte groups sharing one class (1 when
    the 4 features have distinct classes; random features collide: ~2). A step whose two 8-position halves
    are aligned 8-runs takes one ldmatrix.x4 per warp and half (4 conflict-free wavefronts). A step spanning
    several chunks walks them: one predicated pass of its loads per chunk.
    permute (modelled, not built): the layout orders the 16 positions of each step (and V's columns alike) by
    bank class, dealt round-robin over the 4 loads, so that each load's 4 features differ in class where the
    step allows it.
    Returns per m64k16 (4 warps): wavefronts; per k16 step: chunk passes, ldmatrix fraction; padding.
    """
    rng = random.Random(seed * 1000003 + unit * 101 + round(d * 1e4))
    wf = passes = ldm = steps = kept = positions = 0
    for _ in range(tiles):
        f = _kept_features(k, d, unit, rng)
        kept += len(set(f))
        positions += -(-len(f) // 16) * 16
        for j in range(-(-len(f) // 16)):
            pos = [f[p] if p < len(f) else None for p in range(16 * j, 16 * j + 16)]
            steps += 1
            chunks = sorted({x // KC for x in pos if x is not None})
            passes += len(chunks)

            def run8(h):
                a = pos[8 * h:8 * h + 8]
                return all(x is not None for x in a) and a[0] % 8 == 0 and all(a[i] == a[0] + i for i in range(8))

            if run8(0) and run8(1):
                wf += 4 * 4  # 4 warps x ldmatrix.x4 (4 wavefronts)
                ldm += 1
                continue
            if permute:
                live = sorted((x for x in pos if x is not None), key=lambda x: ((x % 8) // 2, x))
                dealt = [live[i::4] for i in range(4)]   # load (e, h) = i takes every 4th of the class order
                pos = [None] * 16
                for i, grp in enumerate(dealt):
                    e, h = i % 2, i // 2
                    for t, x in enumerate(grp):
                        pos[2 * t + e + 8 * h] = x
            for c in chunks:
                for e in (0, 1):
                    for h in (0, 1):
                        cls = {}
                        for t in range(4):
                            x = pos[2 * t + e + 8 * h]
                            if x is not None and x // KC == c:
                                cls.setdefault((x % KC % 8) // 2, set()).add(x % KC // 8)
                        # 4 warps x 2 row halves (rows g and g + 8 share the bank pattern)
                        wf += 4 * 2 * max((len(v) for v in cls.values()), default=0)
    return dict(wavefronts=wf / steps, passes=passes / steps, ldmatrix=ldm / steps,
                pad=positions / kept, density=kept / (tiles * k))


def sm90_issue_counts(st: dict, halves: int = 2, cluster: int = C_A, d: float = 0.25) -> dict:
    """Instructions per consumer warp per k16 step of design A (SASS-level estimate)."""
    p, lm = st["passes"], st["ldmatrix"]
    chunks_per_step = 16.0 / (d * KC * st["pad"])     # a chunk holds 64 d padded positions of the tile
    c = dict(
        lds=(1 - lm) * 8 * halves * p + lm * halves,          # LDS.U16 per half and pass, or one ldmatrix.x4
        pack=(1 - lm) * 4 * halves,                           # PRMT: two 16-bit elements per A register
        index=2,                                              # the step's 4 position features (2 x 64-bit)
        address=(1 - lm) * 16 * p + lm * 4,                   # per feature: chunk-relative, swizzle, predicate
        wgmma=halves + 3,                                     # wgmma x halves, fence, commit, wait_group<1>
        b_ring=3.0 / B_STAGE_STEPS,                           # b_full try_wait + branch, b_empty arrive
        x_ring=2 * p + chunks_per_step * (1 + 2 * cluster),   # acquire per pass; release to every rank (mapa)
        loop=4,                                               # counter, compare, branch, descriptor
    )
    c["total"] = sum(c.values())
    return c


def _waves(items: int, slots: int) -> float:
    """Fraction of the persistent grid's rounds that do work (equal items)."""
    if items <= 0:
        return 1.0
    return items / (math.ceil(items / slots) * slots)


def _stream_time(dev: Device, stream_bytes: float, items: int, slots: int) -> float:
    """A weight stream cut into equal items over `slots` CTAs (one per SM): each round moves its bytes at the
    device's achievable bandwidth, but one CTA pulls at most sm_bpc bytes per clock (a partial last round
    keeps the full bandwidth only while enough CTAs remain)."""
    per_item = stream_bytes / max(items, 1)
    bw, bw_cta = dev.eta_hbm * dev.hbm, dev.sm_bpc * dev.clk
    full, rem = divmod(max(items, 1), slots)
    t = full * max(slots * per_item / bw, per_item / bw_cta)
    if rem:
        t += max(rem * per_item / bw, per_item / bw_cta)
    return t


def _result(terms: dict, additive=("launch", "tail"), **extra) -> dict:
    thr = {k: v for k, v in terms.items() if k not in additive}
    t = max(thr.values()) + sum(terms.get(k, 0.0) for k in additive)
    return dict(t=t, bound=max(terms, key=terms.get), terms=terms, **extra)


def sm90_time(dev: Device, m: int, k: int, n: int, s: float, unit: int = 1, wgmma_reads: bool = WGMMA_READS,
              order: str = "as_designed", pdl: bool = False, eta: float = None, reduce: str = "group",
              permute: bool = False) -> dict:
    """Design A (built): dense x chunk multicast over C CTAs, register-A gathers, B by TMA, one launch.

    Small M (M <= 64): K-split in S splits, fp32 partials, the reduction by the last CTA: `reduce` = "group"
    (as designed: one CTA adds the whole slice group's 2C slices), "rank" (a counter per rank: each of the last
    cluster's CTAs adds its own 2 slices), or "dsmem" (modelled, not built: the cluster spans K instead of
    outputs, S = cluster size <= 8, partials added over distributed shared memory, no global partials)."""
    d = 1.0 - s
    st = gather_stats(round(d, 4), unit, permute=permute)
    eta = eta_pipe(dev, wgmma_reads) if eta is None else eta
    small = m <= 64
    bm = BM_A_SMALL if small else BM_A
    halves = bm // 64
    kpos = k * d * st["pad"]                          # positions per tile (padded)
    steps = math.ceil(kpos / 16)
    nchunks = math.ceil(k / KC)
    slices = math.ceil(n / SLICE)
    groups = math.ceil(slices / (SLICES_CTA * C_A))   # slice groups (one multicast x stream each)
    mblocks = math.ceil(m / bm)
    # shared-memory clocks per unit
    x_chunk = bm * KC * 2
    units_per_chunk = SLICES_CTA * halves * steps / nchunks
    smem = dict(gather=st["wavefronts"], b_read=(SLICE * 16 * 2 / 128.0) if wgmma_reads else 0.0,
                b_write=SLICE * 16 * 2 / halves / 128.0, x_write=x_chunk / units_per_chunk / 128.0)
    smem_clk = sum(smem.values())
    issue = sm90_issue_counts(st, halves, C_A, d)
    issue_clk = issue["total"] * SLICES_CTA * 4 / 4 / (SLICES_CTA * halves)   # per SMSP per unit
    tma_clk = ((bm / C_A) / units_per_chunk + SLICE / (B_STAGE_STEPS * halves)) / dev.tma_lines_clk
    units = slices * mblocks * halves * steps
    sm_rate = dev.sms * dev.clk * eta
    q_l2 = 1.0 / (SLICE * SLICES_CTA * C_A * d) + 1.0 / bm
    flops = 2.0 * m * n * k * d
    v_bytes = 2.0 * d * n * k
    x_bytes = 2.0 * m * k
    y_bytes = 2.0 * m * n
    clusters = dev.sms // C_A
    if small:
        # K-split: S splits of the chunk range; partials fp32 in L2; the last CTA of a group reduces them
        best = None
        for splits in range(1, (8 if reduce == "dsmem" else nchunks) + 1):
            if reduce == "dsmem":   # clusters of `splits` CTAs on one slice pair; x not shared
                items = math.ceil(slices / SLICES_CTA) * splits
                w = _waves(items, dev.sms // splits * splits)
                x_reads = x_bytes * math.ceil(slices / SLICES_CTA)
                ws = 0.0
                tail = (splits - 1) / splits * m * SLICE * SLICES_CTA * 4 / (dev.dsmem_bpc * dev.clk)
            else:
                items = groups * splits
                w = _waves(items, clusters)
                x_reads = x_bytes * groups
                ws = 2.0 * splits * m * n * 4 if splits > 1 else 0.0
                reduced = SLICE * SLICES_CTA * (C_A if reduce == "group" else 1)
                tail = (splits * m * reduced * 4 / (dev.sm_bpc * dev.clk)) if splits > 1 else 0.0
            hbm_bytes = v_bytes + x_bytes + y_bytes + index_bytes(k, n, s) + slices * 128   # x re-reads hit L2
            slots = dev.sms // splits * splits if reduce == "dsmem" else clusters * C_A
            hbm = _stream_time(dev, hbm_bytes, items * (1 if reduce == "dsmem" else C_A), slots)
            terms = dict(
                tensor=units * UNIT_CLK / (sm_rate * w), smem=units * smem_clk / (sm_rate * w),
                issue=units * issue_clk / (sm_rate * w), tma=units * tma_clk / (sm_rate * w),
                l2=(v_bytes + x_reads + ws) / dev.l2, hbm=hbm, tail=tail,
                launch=dev.launch_pdl if pdl else dev.launch)
            r = _result(terms, splits=splits, waves=w)
            if best is None or r["t"] < best["t"]:
                best = r
        best.update(q_l2=None, smem_clk=smem, issue=issue, x_passes=1, gather=st, issue_clk=issue_clk,
                    tma_clk=tma_clk)
        return best
    items = groups * mblocks
    w = _waves(items, clusters)
    # x re-reads from HBM: the designed item order (M-block fastest) sweeps all of x per slice group
    if order == "as_designed":
        x_passes = groups if x_bytes > dev.l2_eff * dev.l2_bytes else 1
    else:  # panel raster: Q slice groups resident (V), x swept once per panel
        v_group = v_bytes / groups
        q = max(1, int(dev.l2_eff * dev.l2_bytes // max(v_group, 1.0)))
        x_passes = math.ceil(groups / q) if x_bytes > dev.l2_eff * dev.l2_bytes else 1
    hbm_bytes = x_bytes * x_passes + v_bytes + y_bytes + index_bytes(k, n, s) + slices * 128
    terms = dict(tensor=units * UNIT_CLK / (sm_rate * w), smem=units * smem_clk / (sm_rate * w),
                 issue=units * issue_clk / (sm_rate * w), tma=units * tma_clk / (sm_rate * w),
                 l2=flops * q_l2 / dev.l2, hbm=hbm_bytes / (dev.eta_hbm * dev.hbm),
                 launch=dev.launch_pdl if pdl else dev.launch)
    return _result(terms, q_l2=q_l2, smem_clk=smem, issue=issue, x_passes=x_passes, waves=w, gather=st,
                   issue_clk=issue_clk, tma_clk=tma_clk, hbm_bytes=hbm_bytes)


def sm90u_time(dev: Device, m: int, k: int, n: int, s: float, wgmma_reads: bool = WGMMA_READS,
               pdl: bool = False) -> dict:
    """Design U (built: csrc/cuda/tw_fwd_sm90u_kernels.cuh, both branches): unit-16 layouts; each k16 step's A is one kept 16-feature run = one TMA
    box [rows x 16] (32 B per row, 32B swizzle), SS wgmma, no gathers, no dense chunk. CTA = 2 consumer WGs x
    m128 rows of one slice (BM = 256); B stages multicast over a cluster of C_U CTAs along M."""
    d = 1.0 - s
    eta = eta_pipe(dev, wgmma_reads)
    small = m <= 64
    kpos = k * d                                      # unit 16: no padding (runs of 16)
    steps = math.ceil(kpos / 16)
    slices = math.ceil(n / SLICE)
    if small:   # one m64 per WG, the two WGs on two slices (A not shared), K-split as design A
        bm, halves_cta, b_share = 64, 2, 1
    else:
        bm, halves_cta, b_share = BM_U, 4, 4          # 4 m64 units per CTA step share the B stage
    a_share = 1                                       # each unit reads its own A rows
    smem = dict(a_write=64 * 16 * 2 / a_share / 128.0, a_read=(64 * 16 * 2 / 128.0) if wgmma_reads else 0.0,
                b_write=SLICE * 16 * 2 / b_share / 128.0, b_read=(SLICE * 16 * 2 / 128.0) if wgmma_reads else 0.0)
    smem_clk = sum(smem.values())
    issue = dict(wgmma=halves_cta / 2 + 3, rings=2, loop=4)   # SS wgmma: descriptors only
    issue["total"] = sum(issue.values())
    issue_clk = issue["total"] * 2 / halves_cta
    tma_clk = (64 + SLICE / (B_STAGE_STEPS * b_share)) / dev.tma_lines_clk   # A: 64 rows of 32 B per unit
    mb = math.ceil(m / bm)
    units = slices * mb * (bm // 64) * steps
    sm_rate = dev.sms * dev.clk * eta
    flops = 2.0 * m * n * k * d
    v_bytes, x_bytes, y_bytes = 2.0 * d * n * k, 2.0 * m * k, 2.0 * m * n
    clusters = dev.sms // C_U
    if small:
        best = None
        nun = max(1, steps)
        for splits in range(1, min(nun, 256) + 1):
            items = math.ceil(slices / 2) * splits
            w = _waves(items, dev.sms)
            ws = 2.0 * splits * m * n * 4 if splits > 1 else 0.0
            hbm = _stream_time(dev, v_bytes + x_bytes + y_bytes + index_bytes(k, n, s), items, dev.sms)
            terms = dict(tensor=units * UNIT_CLK / (sm_rate * w), smem=units * smem_clk / (sm_rate * w),
                         issue=units * issue_clk / (sm_rate * w), tma=units * tma_clk / (sm_rate * w),
                         l2=(v_bytes + x_bytes * slices * d + ws) / dev.l2, hbm=hbm,
                         tail=(splits * m * SLICE * 2 * 4 / (dev.sm_bpc * dev.clk)) if splits > 1 else 0.0,
                         launch=dev.launch_pdl if pdl else dev.launch)
            r = _result(terms, splits=splits, waves=w)
            if best is None or r["t"] < best["t"]:
                best = r
        best.update(q_l2=None, smem_clk=smem, issue=issue, issue_clk=issue_clk, tma_clk=tma_clk)
        return best
    # L2: x's kept runs once per slice (no sharing across tiles), V once per cluster of C_U M-blocks
    q_l2 = 1.0 / SLICE + 1.0 / (bm * C_U)
    items = slices * mb
    w = _waves(math.ceil(items / C_U), clusters)
    # panel raster (part of design U): Q slices' V resident, x swept once per panel
    q = max(1, int(dev.l2_eff * dev.l2_bytes // max(v_bytes / slices, 1.0)))
    x_passes = math.ceil(slices / q) if x_bytes > dev.l2_eff * dev.l2_bytes else 1
    hbm_bytes = x_bytes * x_passes + v_bytes + y_bytes + index_bytes(k, n, s)
    terms = dict(tensor=units * UNIT_CLK / (sm_rate * w), smem=units * smem_clk / (sm_rate * w),
                 issue=units * issue_clk / (sm_rate * w), tma=units * tma_clk / (sm_rate * w),
                 l2=flops * q_l2 / dev.l2, hbm=hbm_bytes / (dev.eta_hbm * dev.hbm),
                 launch=dev.launch_pdl if pdl else dev.launch)
    return _result(terms, q_l2=q_l2, smem_clk=smem, issue=issue, x_passes=x_passes, waves=w,
                   issue_clk=issue_clk, tma_clk=tma_clk, hbm_bytes=hbm_bytes)


def sm90_gv_cluster(d: float, k: int) -> int:
    """The built plan's cluster (sm90_gv_cluster): the largest C in {4, 2} whose CTAs have 256-slot blocks to work
    on >= 85% of the time, with every tile keeping d K slots; else 1."""
    blocks = math.ceil(d * k / 256)
    for c in (4, 2):
        if 100 * blocks >= 85 * math.ceil(blocks / c) * c:
            return c
    return 1


def sm90_gv_time(dev: Device, m: int, k: int, n: int, s: float, unit: int = 1) -> dict:
    """grad_values on the sm_90 mainloop. gV[outputs, kept] = gy^T x, reduction over M.
    A = gy's slice [16 tokens x 64 outputs] by TMA (MN-major: wgmma's transposed A; dense where a slice's columns
    are one run), B = x's kept features [16 tokens x 128 positions] (MN-major). B is always read from shared memory,
    so at unit 1 (modelled, not built) it is gathered from a dense x chunk [16 tokens x 256/d features] into a B
    buffer (LDS + STS + fence.proxy.async); at unit 16 (built: csrc/cuda/tw_gv_sm90u_kernels.cuh) each run is one
    TMA box (design U's rule). CTA = 2 WGs on two 128-position blocks of one slice (gy shared), accumulators
    128 outputs x 128 positions per WG; a cluster of C CTAs on C consecutive 256-position blocks shares gy by
    multicast. Built: waves of (slice, position group) items over M-ranges, the plan's range count."""
    d = 1.0 - s
    eta = eta_pipe(dev)
    flops = 2.0 * m * n * k * d
    c = sm90_gv_cluster(d, k) if unit >= 16 else C_U
    if unit >= 16:
        smem = dict(a_write=8.0, a_read=16.0 if WGMMA_READS else 0.0, b_write=16.0,
                    b_read=32.0 if WGMMA_READS else 0.0)
        q_l2 = 1.0 / 128 + 1.0 / (2 * 128 * c)   # x runs once per slice, gy once per cluster of c x 256 positions
        # TMA lines (<= 128 B) issued per unit: 64 rows of 32 B of x runs, gy's 128 rows of 128 B / (16 units x c)
        tma_clk = (64 + 128 / (16 * c)) / dev.tma_lines_clk
    else:
        st = gather_stats(round(d, 4), 1)
        x_chunk = 16 * (256 / d) * 2 / 4          # the CTA's two position blocks' feature span, per unit
        smem = dict(a_write=8.0, a_read=16.0 if WGMMA_READS else 0.0, x_write=x_chunk / 128.0,
                    gather=st["wavefronts"], b_write=16.0, b_read=32.0 if WGMMA_READS else 0.0)
        q_l2 = 1.0 / (2 * 128 * C_U) + 1.0 / (256 * d)   # gy multicast; the dense x span once per CTA
        tma_clk = 0.0
    smem_clk = sum(smem.values())
    rate = dev.sms * dev.clk * eta
    w, splits, ws, entries = 1.0, 1, 0.0, None
    if unit >= 16:   # the built plan: entries = slices x position groups, M-ranges to fill the last round
        entries = math.ceil(n / SLICE) * math.ceil(math.ceil(d * k / 256) / c)
        clusters = dev.sms // c
        best = None
        for sp in range(1, gv_max_splits(m) + 1):
            t = math.ceil(entries * sp / clusters) / sp * 2.0 * m * 128 * 256 / 5e12 + (
                8.0 * sp * d * n * k / 3e12 + 4e-6 if sp > 1 else 0.0)
            if best is None or t < best[0]:
                best = (t, sp)
        splits = best[1]
        items = entries * splits
        w = items / (math.ceil(items / clusters) * clusters)
        ws = 2.0 * 4 * splits * d * n * k if splits > 1 else 0.0   # fp32 partials written, read by the reduction
    hbm = (2.0 * (m * k + m * n + d * n * k) + index_bytes(k, n, s) + ws) / (dev.eta_hbm * dev.hbm)
    terms = dict(tensor=flops / UNIT_FLOP * UNIT_CLK / (rate * w), smem=flops / UNIT_FLOP * smem_clk / (rate * w),
                 tma=flops / UNIT_FLOP * tma_clk / (rate * w), l2=flops * q_l2 / dev.l2, hbm=hbm,
                 launch=dev.launch * (2 if splits > 1 else 1))
    return _result(terms, q_l2=q_l2, smem_clk=smem, cluster=c, splits=splits, waves=w, entries=entries)


def gv_max_splits(m: int) -> int:
    """The most M-ranges the sm90u plan cuts (gv_sm90u_max_splits): >= 512 tokens each, at most 16."""
    return max(1, min(16, m // 512))


def gv_plan(dev: Device, m: int, entries: int, cluster: int) -> str:
    """The built dispatch (plan_grad_values in csrc/cuda/tw_bwd_launch.cuh) on a unit-16 layout: sm90u where its
    CTAs at the most M-ranges fill the GPU (entries x cluster x gv_max_splits >= SMs, M >= 256), else v2."""
    return "sm90u" if dev.sm90 and m >= 256 and entries * cluster * gv_max_splits(m) >= dev.sms else "v2"


GI90_BM, GI90_NP, GI90_KC_MAX = 128, 64, 240   # grad_input sm90 (tw_gi_sm90_kernels.cuh): rows, positions/item, chunk
GI90_SCATTER_CLK = 300                         # issue clocks of one item's read-modify-write (8 warps x ~150 instr / 4)


def gi90_chunk(k: int) -> int:
    """plan_grad_input_sm90's chunk: as few chunks of at most 240 features (the fp32 accumulator's most,
    128 x 248 x 4 B) as K needs, of even widths (a multiple of 8)."""
    chunks = max(1, -(-k // GI90_KC_MAX))
    return max(8, -(-(-(-k // chunks)) // 8) * 8)


@functools.lru_cache(maxsize=None)
def gi90_items(kc: int, d: float, unit: int) -> tuple:
    """A tile's kept features in one chunk of kc: c = unit x Binomial(kc / unit, d) (aligned runs of `unit` kept
    at random, as tile_mask keeps them). Returns (E[items of 64 positions], E[c], P(c > 0))."""
    runs = max(1, kc // unit)
    e_items = e_c = p_any = 0.0
    for j in range(runs + 1):
        pj = math.comb(runs, j) * d ** j * (1.0 - d) ** (runs - j)
        c = unit * j
        e_items += pj * math.ceil(c / GI90_NP)
        e_c += pj * c
        p_any += pj if c > 0 else 0.0
    return e_items, e_c, p_any


def sm90_gi_time(dev: Device, m: int, k: int, n: int, s: float, unit: int = 1) -> dict:
    """grad_input on wgmma (built: csrc/cuda/tw_gi_sm90_kernels.cuh). CTA = (chunk of kc <= 240 features, 128 rows):
    for every slice (128 outputs) with kept features in the chunk, gy [128 rows x 128 outputs] by TMA (32 KB),
    then per item of 64 kept positions V_t [128 outputs x 64] by TMA (16 KB) and 2 consumers x 8 wgmma
    m64n64k16 (32 clk each), then each consumer adds its 64 x 64 fp32 product into its rows of the chunk's
    accumulator in shared memory (8 B per kept element). Shared memory per item: wgmma reads 2 x 8 x (2 + 2) KB,
    V's TMA write 16 KB; per (slice, chunk): the read-modify-write 128 x c x 8 B and gy's 32 KB. L2: gy once
    per chunk, V once per 128-row block. An item computes all 64 columns: kept / (64 ceil(kept / 64)) of it
    is useful."""
    d = 1.0 - s
    eta = eta_pipe(dev)
    flops = 2.0 * m * n * k * d
    kc = gi90_chunk(k)
    nkc = math.ceil(k / kc)
    last = k - (nkc - 1) * kc   # the last chunk's width
    full, tail = gi90_items(kc, round(d, 6), unit), gi90_items(max(unit, last // unit * unit), round(d, 6), unit)
    e_items, e_c, p_any = ((nkc - 1) * full[i] / nkc + tail[i] / nkc for i in range(3))   # per (slice, chunk)
    pairs = math.ceil(n / SLICE) * nkc * math.ceil(m / GI90_BM)   # (slice, chunk, M-block)
    items = pairs * e_items
    smem_item = dict(wgmma_reads=(2 * 8 * 4096.0) if WGMMA_READS else 0.0, v_write=16384.0)
    smem_pair = dict(rmw=GI90_BM * e_c * 8.0, gy_write=32768.0 * p_any)
    smem_bytes = items * sum(smem_item.values()) + pairs * sum(smem_pair.values())
    rate = dev.sms * dev.clk * eta
    l2_bytes = 2.0 * m * n * nkc * p_any + 2.0 * d * n * k * math.ceil(m / GI90_BM) + 2.0 * m * k
    hbm = (2.0 * (m * k + m * n + d * n * k) + index_bytes(k, n, s)) / (dev.eta_hbm * dev.hbm)
    terms = dict(tensor=items * 16 * 32 / rate, smem=smem_bytes / dev.smem_bpc / rate,
                 issue=items * GI90_SCATTER_CLK / rate, l2=l2_bytes / dev.l2, hbm=hbm, launch=2 * dev.launch)
    per_item = {key: round(v / 128.0, 1) for key, v in smem_item.items()}
    per_item.update({key: round(v / 128.0 / max(e_items, 1e-9), 1) for key, v in smem_pair.items()})
    return _result(terms, q_l2=l2_bytes / flops, smem_clk_item=per_item, kc=kc, items_per_pair=e_items,
                   kept_per_pair=e_c, useful=e_c / max(GI90_NP * e_items, 1e-9))


SM90_TERMS = ("tensor", "smem", "issue", "tma", "l2", "hbm", "launch", "tail")


def _sm90_fields(dev: Device, m: int, k: int, n: int, s: float, t_d: float, cap_: float) -> dict:
    if not dev.sm90:
        return dict(sm90_speedup=None, sm90_bound=None, sm90_terms=None, sm90u_speedup=None, sm90u_bound=None,
                    sm90u_terms=None, sm90_bar=None, sm90_meets=None, sm90u_meets=None, sm90_sensitivity=None)
    a = sm90_time(dev, m, k, n, s)
    u = sm90u_time(dev, m, k, n, s)
    bar = bars(m, k, n, s, cap_)
    us = lambda r: {key: round(v * 1e6, 3) for key, v in r["terms"].items()}  # noqa: E731
    sens = dict(
        no_wgmma_reads=t_d / sm90_time(dev, m, k, n, s, wgmma_reads=False)["t"],
        unit8=t_d / sm90_time(dev, m, k, n, s, unit=8)["t"],
        unit16=t_d / sm90_time(dev, m, k, n, s, unit=16)["t"],
        permute=t_d / sm90_time(dev, m, k, n, s, permute=True)["t"],
        eta1=t_d / sm90_time(dev, m, k, n, s, eta=1.0)["t"],
        sm90u_no_wgmma_reads=t_d / sm90u_time(dev, m, k, n, s, wgmma_reads=False)["t"],
    )
    if m > 64:
        sens["panel_order"] = t_d / sm90_time(dev, m, k, n, s, order="panel")["t"]
    else:
        t_d_pdl = t_d - dev.launch + dev.launch_pdl   # both kernels launched back to back (graph / PDL)
        sens["rank_reduce"] = t_d / sm90_time(dev, m, k, n, s, reduce="rank")["t"]
        sens["dsmem_reduce"] = t_d / sm90_time(dev, m, k, n, s, reduce="dsmem")["t"]
        sens["pdl"] = t_d / sm90_time(dev, m, k, n, s, pdl=True, reduce="dsmem")["t"]
        sens["pdl_both"] = t_d_pdl / sm90_time(dev, m, k, n, s, pdl=True, reduce="dsmem")["t"]
        sens["sm90u_pdl"] = t_d / sm90u_time(dev, m, k, n, s, pdl=True)["t"]
    out = dict(sm90_speedup=t_d / a["t"], sm90_bound=a["bound"], sm90_terms=us(a), sm90_us=a["t"] * 1e6,
               sm90_smem_clk={key: round(v, 2) for key, v in a["smem_clk"].items()},
               sm90_issue_per_step=round(a["issue"]["total"], 1), sm90_x_passes=a["x_passes"],
               sm90_splits=a.get("splits"),
               sm90u_speedup=t_d / u["t"], sm90u_bound=u["bound"], sm90u_terms=us(u), sm90u_us=u["t"] * 1e6,
               sm90u_smem_clk={key: round(v, 2) for key, v in u["smem_clk"].items()},
               sm90_bar=bar, sm90_meets=None if bar is None else t_d / a["t"] >= bar,
               sm90u_meets=None if bar is None else t_d / u["t"] >= bar,
               sm90_sensitivity={key: round(v, 3) for key, v in sens.items()})
    return out


def records():
    out = []
    shapes = ([(LARGE_M, k, n) for k, n in BERT + LLM] + [(MID_M, k, n) for k, n in BERT]
              + [(m, k, n) for m in SMALL_M for k, n in LLM[:1] + BERT[1:2]])
    for dev in (H100, A100):
        for m, k, n in shapes:
            for s in SPARSITIES:
                v2 = v2_time(dev, m, k, n, s)
                t_d = dense_time(dev, m, k, n)
                cap_ = cap(dev, m, k, n, s)
                rec = dict(device=dev.name, M=m, K=k, N=n, sparsity=s, cap=cap_,
                           dense_us=t_d * 1e6, v2_us=v2["t"] * 1e6, speedup=t_d / v2["t"], bound=v2["bound"],
                           q_l2=v2["q_l2"], io_bytes=2 * (m * k + m * n),
                           floor_speedup=t_d / floor_time(dev, m, k, n, s))
                rec.update(_sm90_fields(dev, m, k, n, s, t_d, cap_))
                if m >= 4096:
                    for kern in ("v1", "v2"):
                        g = gv_time(dev, m, k, n, s, kern)
                        rec[f"gv_{kern}_speedup"] = t_d / g["t"]
                        rec[f"gv_{kern}_bound"] = g["bound"]
                        rec[f"gv_{kern}_q_l2"] = g["q_l2"]
                    g = gi_time(dev, m, k, n, s)
                    rec["gi_v1_speedup"], rec["gi_v1_bound"] = t_d / g["t"], g["bound"]
                    rec["grad_dense_speedup"] = t_d / dense_grad_time(dev, m, k, n, s)
                    rec["gi_plan"] = gi_plan(dev, m, k, n, s)
                    rec["gv_plan_unit1"] = "dense" if prefer_dense_backward(dev, "grad_values", m, k, n, s) else "v2"
                    if dev.sm90:
                        for name, g in (("gv_sm90", sm90_gv_time(dev, m, k, n, s, unit=1)),
                                        ("gv_sm90u", sm90_gv_time(dev, m, k, n, s, unit=16)),
                                        ("gi_sm90", sm90_gi_time(dev, m, k, n, s, unit=1)),
                                        ("gi_sm90_unit16", sm90_gi_time(dev, m, k, n, s, unit=16))):
                            rec[f"{name}_speedup"] = t_d / g["t"]
                            rec[f"{name}_bound"] = g["bound"]
                            if name == "gi_sm90":
                                rec["gi_sm90_useful"] = round(g["useful"], 3)
                                rec["gi_sm90_smem_clk_item"] = g["smem_clk_item"]
                            if name == "gv_sm90u":
                                rec["gv_sm90u_cluster"], rec["gv_sm90u_splits"] = g["cluster"], g["splits"]
                                rec["gv_sm90u_waves"] = round(g["waves"], 3)
                                rec["gv_sm90u_plan"] = gv_plan(dev, m, g["entries"], g["cluster"])
                out.append(rec)
    return out


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(recs) -> str:
    lines = ["| device | M | K | N | s | cap | floor | predicted v2 / dense | bound | sm90 (A, unit 1) | bound | "
             "sm90u (U, unit 16) | bound | bar | A / U meet |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["sparsity"] not in TABLE_SPARSITIES:
            continue
        meet = "-" if r["sm90_meets"] is None else (f"{'yes' if r['sm90_meets'] else 'no'} / "
                                                     f"{'yes' if r['sm90u_meets'] else 'no'}")
        lines.append(f"| {r['device']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | {r['cap']:.2f}x | "
                     f"{r['floor_speedup']:.2f}x | {r['speedup']:.2f}x | {r['bound']} | {_x(r['sm90_speedup'])} | {r['sm90_bound'] or '-'} | "
                     f"{_x(r['sm90u_speedup'])} | {r['sm90u_bound'] or '-'} | {_x(r['sm90_bar'])} | {meet} |")
    lines += ["", "grad_values (vs cuBLAS's dense weight gradient); gv sm90 unit 16 = the built sm90u kernel (cluster C, "
              "M-ranges S, the plan's pick on a unit-16 layout); unit 1 modelled, not built", "",
              "| device | M | K | N | s | v1 / dense | v1 bound | v2 / dense | v2 bound | dense fallback | plan (unit 1) | "
              "gv sm90 unit 1 | gv sm90 unit 16 | C, S | plan (unit 16) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["sparsity"] not in TABLE_SPARSITIES or "gv_v2_speedup" not in r:
            continue
        extra = " - | - | - | v2 |"
        if "gv_sm90_speedup" in r:
            extra = (f" {r['gv_sm90_speedup']:.2f}x ({r['gv_sm90_bound']}) | {r['gv_sm90u_speedup']:.2f}x "
                     f"({r['gv_sm90u_bound']}) | {r['gv_sm90u_cluster']}, {r['gv_sm90u_splits']} | "
                     f"{r['gv_sm90u_plan']} |")
        lines.append(f"| {r['device']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | "
                     f"{r['gv_v1_speedup']:.2f}x | {r['gv_v1_bound']} | {r['gv_v2_speedup']:.2f}x | "
                     f"{r['gv_v2_bound']} | {r['grad_dense_speedup']:.2f}x | {r['gv_plan_unit1']} |" + extra)
    lines += ["", "grad_input (vs cuBLAS's dense gX = gy W); gi sm90 = the built wgmma kernel (unit 1 / unit 16 layouts); "
              "plan: the built dispatch on a 1-D TW layout", "",
              "| device | M | K | N | s | v1 / dense | v1 bound | dense fallback | gi sm90 (wgmma) | unit 16 | plan |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["sparsity"] not in TABLE_SPARSITIES or "gi_v1_speedup" not in r:
            continue
        gi90 = f"{r['gi_sm90_speedup']:.2f}x ({r['gi_sm90_bound']})" if "gi_sm90_speedup" in r else "-"
        gi90u = f"{r['gi_sm90_unit16_speedup']:.2f}x" if "gi_sm90_unit16_speedup" in r else "-"
        lines.append(f"| {r['device']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | "
                     f"{r['gi_v1_speedup']:.2f}x | {r['gi_v1_bound']} | {r['grad_dense_speedup']:.2f}x | "
                     f"{gi90} | {gi90u} | {r['gi_plan']} |")
    return "\n".join(lines)


def terms_table(recs, sparsities=TABLE_SPARSITIES) -> str:
    """The sm90 terms (us) of every H100 record: which one binds."""
    lines = ["| M | K | N | s | " + " | ".join(SM90_TERMS) + " | smem clk/unit (gather, b_read, b_write, x_write) "
             "| issue/step | x passes |", "|---|---|---|---|" + "---|" * (len(SM90_TERMS) + 3)]
    for r in recs:
        if r["sm90_terms"] is None or r["sparsity"] not in sparsities:
            continue
        t = r["sm90_terms"]
        sm = r["sm90_smem_clk"]
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | "
                     + " | ".join(f"{t.get(key, 0.0):.1f}" for key in SM90_TERMS)
                     + f" | {sm['gather']:.0f}, {sm['b_read']:.0f}, {sm['b_write']:.0f}, {sm['x_write']:.0f} | "
                     f"{r['sm90_issue_per_step']:.0f} | {r['sm90_x_passes']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--terms", action="store_true", help="also print the sm90 terms of every H100 record")
    args = ap.parse_args()
    recs = records()
    if args.json:
        devs = [dict(asdict(d), mma=d.mma, clk=d.clk, eta_pipe=eta_pipe(d) if d.sm90 else None) for d in (H100, A100)]
        print(json.dumps({"devices": devs, "records": recs}, indent=1))
    else:
        print(markdown(recs))
        if args.terms:
            print()
            print(terms_table(recs))


if __name__ == "__main__":
    main()
