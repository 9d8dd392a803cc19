#!/usr/bin/env python3
"""Dense F.linear vs tilesparse tw_linear, forward and backward.

    python benchmarks/bench_linear.py --device cpu    # fp32, M=2048 (issue 2)
    python benchmarks/bench_linear.py --device cpu --kernel avx2 --name cpu_linear_zen3_avx2
    python benchmarks/bench_linear.py --device cuda   # bf16, CUDA events (issue 3)
    python benchmarks/bench_linear.py --device cuda --quick

CPU: --kernel picks the tw_linear kernel (TILESPARSE_CPU_KERNEL; default the
widest the CPU has); the records carry the CPU model and the kernel that ran.
Besides the three main shapes (whose medians the summary reports), the MiniLM
attention projection 384x384 is measured too. To measure an AVX2 machine's
ratios on an AVX-512 one, limit the dense baseline as well:
MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 (both recorded in meta).

Both variants run in the same process on the same random data, interleaved
(dense, sparse, dense, sparse, ...), and the median of the repeats is
reported. Backward = grad_input + grad_values for tw_linear against
grad_input + grad_weight (two matmuls) for dense.

CUDA: CUDA events around each run, >= 20 timed runs after warm-up, the L2
cache flushed before every run when the operands would fit in it, bf16 by
default, tile 128 (--tile 64 for the other size). Writes
<out-dir>/<device>_linear.json (one record per measurement plus one accuracy
record per shape) and <out-dir>/<device>_linear.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency, but keep the script usable without it
    def tqdm(it, **_):
        return it

import tilesparse
from tilesparse import TileLayout, ops

_ops = torch.ops.tilesparse

CPU_SHAPES = [(2048, 2048), (768, 3072), (3072, 768)]
CPU_EXTRA_SHAPES = [(384, 384)]  # MiniLM's attention projections (K, N)
CUDA_SHAPES = [(768, 768), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024)]
LLM_SHAPES = [(4096, 14336), (14336, 4096), (8192, 8192)]  # LLM-sized layers (K, N)
SMALL_M = [1, 16, 64]  # decoding / small batches: the v2_small_m path
SMALL_M_SHAPES = [(4096, 14336), (768, 3072)]
SPARSITIES = [0.0, 0.5, 0.75, 0.9]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: fewer shapes and repeats")
    p.add_argument("--tile", type=int, default=128, help="tile size G (64 or 128)")
    p.add_argument("--k-align", type=int, default=1, help="kept input features per tile: a multiple of this")
    p.add_argument("--unit", type=int, default=1, help="pruning unit: aligned runs of this many input features")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default cpu 7, cuda 30)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", choices=["auto", "avx512", "avx2", "generic"], default="auto",
                   help="CPU tw_linear kernel (sets TILESPARSE_CPU_KERNEL; an unsupported one is an error)")
    p.add_argument("--cuda-fwd-kernel", choices=["auto", "sm90", "sm90a", "v2", "v1"], default="auto",
                   help="CUDA forward kernel (sets TILESPARSE_CUDA_FWD_KERNEL; recorded as the records' kernel)")
    p.add_argument("--name", default=None, help="output file stem (default <device>_linear[_t<tile>])")
    p.add_argument("--shapes", default=None,
                   help="CPU: comma-separated KxN list instead of the default shapes (M=2048), e.g. 384x384,768x3072")
    p.add_argument("--sparsities", default=None, help="comma-separated list (default 0,0.5,0.75,0.9)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="CPU: each timed sample runs the op back to back until it lasts about this long and "
                        "reports the mean per call (default 25; 0: one call per sample)")
    return p.parse_args(argv)


def make_layer(n, k, sparsity, tile, k_align, dtype, device, seed, unit=1):
    """Random weight, tile-wise mask of random scores, packed values."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    mask = ops.tile_mask(torch.rand(n, k, generator=g, dtype=torch.float64), tile, sparsity, 0.0, k_align, unit)
    layout = TileLayout.from_mask(mask, tile).to(device)
    wm = (w * mask).to(device, dtype)
    return wm, layout, layout.pack(wm)


# ---------------------------------------------------------------------------
# timers
# ---------------------------------------------------------------------------
class CpuTimer:
    """Interleaved samples (dense, sparse, dense, ...), median of the repeats.

    On a shared machine a thread that waits for a core waits for the
    scheduler's tick (4 ms at HZ=250): a single call of a few ms then reads as
    a multiple of the tick, whatever the kernel did, and a 3-tile 384x384
    layer's ratio collapses to ~1x. Each sample therefore runs the op back to
    back for about min_sample_ms (the count calibrated on the fastest warm-up
    call) and reports the mean per call, which averages over the ticks when
    only some calls wait. When every call of both variants waits (load above
    the core count), ms-sized layers still read ~1x: check the load average
    in the record.
    """

    def __init__(self, args):
        self.repeats = args.repeats or (3 if args.quick else 7)
        self.warmup = args.warmup if args.warmup is not None else 1
        self.min_sample_s = (25.0 if args.min_sample_ms is None else args.min_sample_ms) / 1e3
        self.calls = []  # calls per sample of each measurement, (dense, sparse)

    @staticmethod
    def _sample(fn, n):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    def time_pair(self, dense_fn, sparse_fn):
        cd = cs = 1
        td = ts = float("inf")
        for _ in range(max(2, self.warmup)):  # the fastest warm-up call (a slow one may have waited for a core)
            td, ts = min(td, self._sample(dense_fn, 1)), min(ts, self._sample(sparse_fn, 1))
        if self.min_sample_s > 0:  # capped so a slow op runs once and a fast one at most 200 times
            cd = max(1, min(200, round(self.min_sample_s / max(td, 1e-6))))
            cs = max(1, min(200, round(self.min_sample_s / max(ts, 1e-6))))
        self.calls.append((cd, cs))
        d, s = [], []
        for _ in range(self.repeats):
            d.append(self._sample(dense_fn, cd))
            s.append(self._sample(sparse_fn, cs))
        return 1e3 * statistics.median(d), 1e3 * statistics.median(s)


class CudaTimer:
    def __init__(self, args):
        self.repeats = max(20, args.repeats or (20 if args.quick else 30))
        self.warmup = args.warmup if args.warmup is not None else 5
        props = torch.cuda.get_device_properties(0)
        self.l2 = getattr(props, "L2_cache_size", 50 * 2 ** 20) or 50 * 2 ** 20
        self.flush_buf = torch.empty(2 * self.l2 // 4 + 1024, dtype=torch.int32, device="cuda")
        self.flush = True

    def _run(self, fn):
        if self.flush:
            self.flush_buf.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        return start, end

    def time_pair(self, dense_fn, sparse_fn):
        for _ in range(self.warmup):
            dense_fn()
            sparse_fn()
        torch.cuda.synchronize()
        events = []
        for _ in range(self.repeats):
            events.append((self._run(dense_fn), self._run(sparse_fn)))
        torch.cuda.synchronize()
        d = [a.elapsed_time(b) for (a, b), _ in events]
        s = [a.elapsed_time(b) for _, (a, b) in events]
        return statistics.median(d), statistics.median(s)


# ---------------------------------------------------------------------------
def run(args):
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if device == "cuda" and not tilesparse.built_with_cuda():
        sys.exit("--device cuda: tilesparse was built without its CUDA kernels")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
    if device == "cpu":
        shapes = [(2048, k, n) for k, n in CPU_SHAPES + CPU_EXTRA_SHAPES]
        timer = CpuTimer(args)
    else:
        shapes = ([(m, k, n) for m in (4096, 16384) for k, n in CUDA_SHAPES] + [(16384, k, n) for k, n in LLM_SHAPES]
                  + [(m, k, n) for m in SMALL_M for k, n in SMALL_M_SHAPES])
        timer = CudaTimer(args)
    sparsities = SPARSITIES
    if args.quick:
        shapes = shapes[:2] if device == "cpu" else [(4096, 768, 768), (4096, 1024, 4096), (16384, 4096, 1024)]
        sparsities = [0.0, 0.75]
    if args.shapes:
        m0 = 2048 if device == "cpu" else 4096
        shapes = [(m0, *map(int, kn.lower().split("x"))) for kn in args.shapes.split(",")]
    if args.sparsities:
        sparsities = [float(v) for v in args.sparsities.split(",")]
    passes = ["forward"] if args.no_backward else ["forward", "backward"]

    records, accuracy = [], []
    torch.manual_seed(args.seed)
    jobs = [(m, k, n, s) for (m, k, n) in shapes for s in sparsities]
    cache = {}
    for m, k, n, s in tqdm(jobs, desc=f"bench {device}", unit="case"):
        key = (k, n, s)
        if key not in cache:
            cache.clear()
            cache[key] = make_layer(n, k, s, args.tile, args.k_align, dtype, device, args.seed, args.unit)
        wm, layout, values = cache[key]
        x = torch.randn(m, k, device=device).to(dtype)
        gy = torch.randn(m, n, device=device).to(dtype)
        if device == "cuda":
            # flush only when the operands would fit in L2
            timer.flush = (m * (k + n) + n * k) * x.element_size() < 4 * timer.l2
        idx = (layout.cols, layout.row_offsets, layout.rows)
        # first calls validate (and cache) the layout outside the timed runs
        _ops.tw_linear(x, values, *idx, None, n, args.tile)
        for pss in passes:
            if pss == "forward":
                dense_fn = lambda: F.linear(x, wm)  # noqa: E731
                sparse_fn = lambda: _ops.tw_linear(x, values, *idx, None, n, args.tile)  # noqa: E731
                flops = 2 * m * k * n
            else:
                def dense_fn():
                    torch.mm(gy, wm)
                    torch.mm(gy.t(), x)

                def sparse_fn():
                    _ops.tw_linear_grad_input(gy, values, *idx, k, args.tile)
                    _ops.tw_linear_grad_values(gy, x, *idx, args.tile, layout.num_values)
                flops = 4 * m * k * n
            with torch.no_grad():
                dense_ms, sparse_ms = timer.time_pair(dense_fn, sparse_fn)
            records.append(dict(kind="timing", device=device_name(device), kernel=kernel_name(device),
                                dtype=str(dtype).replace("torch.", ""),
                                **{"pass": pss}, pattern="tw", M=m, K=k, N=n, sparsity=s,
                                achieved_sparsity=round(layout.sparsity, 4), tile=args.tile, k_align=args.k_align,
                                unit=args.unit,
                                # x read and y written once: the cap is dense / max(d * dense, io / bandwidth)
                                io_bytes=(m * k + m * n) * x.element_size(),
                                dense_ms=round(dense_ms, 5), sparse_ms=round(sparse_ms, 5),
                                calls_per_sample=list(timer.calls[-1]) if device == "cpu" else [1, 1],
                                speedup=round(dense_ms / sparse_ms, 4),
                                dense_tflops=round(flops / dense_ms / 1e9, 2),
                                sparse_effective_tflops=round(flops * layout.density / sparse_ms / 1e9, 2)))
        if s == 0.75 and all(a["M"] != m or a["K"] != k or a["N"] != n for a in accuracy):
            accuracy.append(accuracy_record(x, gy, wm, layout, values, args.tile, device, dtype, m, k, n, s))
    return dtype, records, accuracy, timer


def accuracy_record(x, gy, wm, layout, values, tile, device, dtype, m, k, n, s):
    """Max |error| vs an fp32 reference (from the same rounded inputs), sparse and dense."""
    mm = min(m, 4096)
    x, gy = x[:mm], gy[:mm]
    idx = (layout.cols, layout.row_offsets, layout.rows)
    with torch.no_grad():
        ref = F.linear(x.float(), wm.float())
        y = _ops.tw_linear(x, values, *idx, None, n, tile)
        dense = F.linear(x, wm)
        ref_gx = gy.float() @ wm.float()
        gx = _ops.tw_linear_grad_input(gy, values, *idx, k, tile)
        ref_gv = layout.pack(gy.float().t() @ x.float())
        gv = _ops.tw_linear_grad_values(gy, x, *idx, tile, layout.num_values)
        dense_gw = layout.pack(gy.t() @ x)

    def err(a, b):
        return float((a.float() - b).abs().max()) if b.numel() else 0.0

    return dict(kind="accuracy", device=device_name(device), dtype=str(dtype).replace("torch.", ""), pattern="tw",
                M=mm, K=k, N=n, sparsity=s, tile=tile,
                forward_max_err_sparse=err(y, ref), forward_max_err_dense=err(dense, ref),
                grad_input_max_err_sparse=err(gx, ref_gx), grad_input_max_err_dense=err(gy @ wm, ref_gx),
                grad_values_max_err_sparse=err(gv, ref_gv), grad_values_max_err_dense=err(dense_gw, ref_gv))


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return cpu_model()


def cpu_model():
    """The CPU's marketing name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f") if f in have]
    except OSError:
        pass
    return []


def kernel_name(device):
    """The tw_linear kernel float32 runs on (CPU), or "cuda"."""
    return _ops.cpu_kernel() if device == "cpu" else "cuda:" + os.environ.get("TILESPARSE_CUDA_FWD_KERNEL", "auto")


def summary(records):
    """Median speedup over the main shapes per (pass, sparsity), and the extra shapes' own."""
    main = {(2048, k, n) for k, n in CPU_SHAPES}
    out = []
    for pss in ("forward", "backward"):
        for s in sorted({r["sparsity"] for r in records}):
            rs = [r for r in records if r["pass"] == pss and r["sparsity"] == s]
            med = [r["speedup"] for r in rs if (r["M"], r["K"], r["N"]) in main]
            if med:
                out.append(dict(**{"pass": pss}, sparsity=s, shapes="main", median_speedup=statistics.median(med)))
            for r in rs:
                if (r["M"], r["K"], r["N"]) not in main:
                    out.append(dict(**{"pass": pss}, sparsity=s, shapes=f"{r['M']}x{r['K']}x{r['N']}",
                                    median_speedup=r["speedup"]))
    return out


def to_markdown(meta, records, accuracy):
    lines = [f"# tw_linear vs dense F.linear ({meta['device']}, {meta['dtype']}, kernel {meta['kernel']})", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, tile {meta['tile']}, k_align {meta['k_align']}, "
             f"median of {meta['repeats']} runs" + (
                 f" (each the mean of back-to-back calls lasting >= {meta['min_sample_ms']:g} ms)"
                 if meta.get('min_sample_ms') else "") + (", L2 flushed for small shapes" if meta['device_kind'] == "cuda"
                                                     else f", {meta['threads']} threads, CPU flags "
                                                          f"{'/'.join(meta['cpu_flags'])}, env {meta['isa_env']}, "
                                                          f"load average {meta['load_before']} before / "
                                                          f"{meta['load_after']} after"), "",
             "| pass | M | K | N | sparsity | dense ms | tw ms | speedup |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['pass']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | {r['dense_ms']:.4f} | "
                     f"{r['sparse_ms']:.4f} | {r['speedup']:.2f}x |")
    if meta.get("summary"):
        lines += ["", "Median speedup over the three main shapes (extra shapes listed alone)", "",
                  "| pass | sparsity | shapes | speedup |", "|---|---|---|---|"]
        for r in meta["summary"]:
            lines.append(f"| {r['pass']} | {r['sparsity']:.2f} | {r['shapes']} | {r['median_speedup']:.2f}x |")
    if accuracy:
        lines += ["", "Accuracy (max |err| vs fp32 reference, sparsity 0.75): sparse / dense", "",
                  "| M | K | N | forward | grad_input | grad_values |", "|---|---|---|---|---|---|"]
        for a in accuracy:
            lines.append(f"| {a['M']} | {a['K']} | {a['N']} | {a['forward_max_err_sparse']:.3g} / "
                         f"{a['forward_max_err_dense']:.3g} | {a['grad_input_max_err_sparse']:.3g} / "
                         f"{a['grad_input_max_err_dense']:.3g} | {a['grad_values_max_err_sparse']:.3g} / "
                         f"{a['grad_values_max_err_dense']:.3g} |")
    return "\n".join(lines) + "\n"


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv=None):
    args = parse_args(argv)
    if args.kernel != "auto":
        os.environ["TILESPARSE_CPU_KERNEL"] = args.kernel
    else:
        os.environ.pop("TILESPARSE_CPU_KERNEL", None)
    if args.cuda_fwd_kernel != "auto":
        os.environ["TILESPARSE_CUDA_FWD_KERNEL"] = args.cuda_fwd_kernel
    else:
        os.environ.pop("TILESPARSE_CUDA_FWD_KERNEL", None)
    if args.device == "cpu":
        print(f"CPU {cpu_model()} ({'/'.join(cpu_flags())}), tw_linear kernel {kernel_name('cpu')}, "
              f"load average {load_average()}", flush=True)
    load_before = load_average()
    dtype, records, accuracy, timer = run(args)
    timer_repeats = args.repeats or ((3 if args.quick else 7) if args.device == "cpu" else (20 if args.quick else 30))
    meta = dict(device=device_name(args.device), device_kind=args.device, dtype=str(dtype).replace("torch.", ""),
                torch=torch.__version__, cuda=torch.version.cuda, tilesparse=tilesparse.__version__,
                tile=args.tile, k_align=args.k_align, repeats=max(20, timer_repeats) if args.device == "cuda"
                else timer_repeats, min_sample_ms=1e3 * timer.min_sample_s if args.device == "cpu" else None,
                quick=args.quick, threads=torch.get_num_threads(),
                python=platform.python_version(), kernel=kernel_name(args.device),
                cpu_model=cpu_model() if args.device == "cpu" else None, cpu_flags=cpu_flags(),
                isa_env={k: os.environ[k] for k in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY",
                                                    "TILESPARSE_CPU_KERNEL", "TILESPARSE_CUDA_FWD_KERNEL")
                         if k in os.environ},
                load_before=load_before, load_after=load_average(),
                summary=summary(records) if args.device == "cpu" else [])
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, args.name or (f"{args.device}_linear" + ("" if args.tile == 128 else
                                                                                 f"_t{args.tile}")))
    with open(base + ".json", "w") as f:
        json.dump(dict(meta, records=records, accuracy=accuracy), f, indent=1)
    md = to_markdown(meta, records, accuracy)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
