#!/usr/bin/env bash
# One prepared call for a GPU machine (no network): fits a 9-minute device
# command, every stage under its own timeout, a summary table printed last.
#
#   bash scripts/gpu_check.sh [OUT_DIR] [STAGES...]
#
# Stages (default: all, in this order):
#   build     pip install -e . for TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), then every
#             kernel's registers and shared memory (cuobjdump --dump-resource-usage)
#   test      the CUDA tests with -x (tests/python/test_cuda.py), then the whole suite
#   sanitize  compute-sanitizer memcheck (valid layouts; a malformed one inside graph
#             capture, where no validation runs) and racecheck, on tiny cases
#   ceilings  device copy bandwidth, an 8192^3 bf16 matmul, L2 re-read bandwidth
#   bench     benchmarks/bench_linear.py --device cuda (BERT, LLM and small-M shapes)
#   gvab      grad_values v1 vs v2 vs cuBLAS's dense gW (TILESPARSE_CUDA_GRAD_VALUES_KERNEL),
#             M=16384, interleaved medians (docs/performance.md predicts the ratios)
#   ncu       one v2 forward launch (M=16384, 768->3072, 75%): L2 sectors, shared-memory
#             wavefronts, instructions, tensor-pipe activity, DRAM bytes
# OUT_DIR defaults to $OUT, else ./gpu_check_out. Per-stage timeouts in seconds:
# T_BUILD T_TEST T_SANITIZE T_CEILINGS T_BENCH T_GVAB T_NCU; BENCH_ARGS go to bench_linear.py.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
shift || true
STAGES="${*:-build test sanitize ceilings bench gvab ncu}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python3}"
SUMMARY="$OUTDIR/summary.md"
ROWS=()
status() { ROWS+=("| $1 | $2 |"); echo "[gpu_check] $1: $2"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
# run NAME TIMEOUT LOG CMD...: one stage's command under its timeout
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status "$name" "TIMEOUT after ${limit} s (log: $(basename "$log"))"
  else
    status "$name" "rc=$rc in $(( $(date +%s) - t0 )) s (log: $(basename "$log"))"
  fi
  return $rc
}

{
  echo "# tilesparse GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
  nvcc --version 2>&1 | tail -1 || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" 2>&1
  git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null || true
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS stages: $STAGES"
  echo '```'
  echo
} > "$SUMMARY"
cat "$SUMMARY"

if has build; then
  run build "${T_BUILD:-300}" "$OUTDIR/build.log" "$PY" -m pip install --no-build-isolation --no-deps -v -e .
  rc=$?
  [ $rc -ne 0 ] && tail -40 "$OUTDIR/build.log"
  "$PY" -c "import tilesparse, sys; sys.exit(0 if tilesparse.built_with_cuda() else 1)" \
    || status build_cuda "the build has no CUDA kernels"
  SO="$(ls "$ROOT"/python/tilesparse/_C*.so 2>/dev/null | head -1)"
  if [ -n "$SO" ] && command -v cuobjdump > /dev/null; then
    cuobjdump --dump-resource-usage "$SO" > "$OUTDIR/resources.log" 2>&1
    status resources "$(grep -c 'REG:' "$OUTDIR/resources.log") kernel entries with registers/shared memory (resources.log)"
  fi
fi

if has test; then
  run cuda_tests "${T_TEST:-150}" "$OUTDIR/pytest_cuda.log" "$PY" -m pytest -x -q -rs -p no:cacheprovider \
    "$ROOT/tests/python/test_cuda.py"
  grep -E "^(FAILED|ERROR)" "$OUTDIR/pytest_cuda.log" | head -10
  status cuda_tests_result "$(tail -1 "$OUTDIR/pytest_cuda.log")"
  run all_tests "${T_TEST:-150}" "$OUTDIR/pytest.log" "$PY" -m pytest -x -q -rs -p no:cacheprovider "$ROOT/tests/python"
  grep -E "^(FAILED|ERROR)" "$OUTDIR/pytest.log" | head -10
  status all_tests_result "$(tail -1 "$OUTDIR/pytest.log")"
fi

if has sanitize; then
  t0=$(date +%s)
  SAN_PY="$(mktemp /tmp/ts_sanitize_XXXX.py)"
  cat > "$SAN_PY" <<'EOF'
import torch
import tilesparse
from tilesparse import TileLayout, ops
T = torch.ops.tilesparse
torch.manual_seed(0)
# v2 needs K % 8 == 0 and tile % 64 == 0: M = 300 takes its 128-row blocks, M = 5 / 37 the small-M path
for (n, k, tile, s, cs, m) in [(300, 70, 128, 0.75, 0.0, 37), (200, 77, 64, 0.5, 0.3, 19), (130, 64, 32, 0.0, 0.0, 5),
                               (256, 264, 128, 0.75, 0.0, 300), (192, 136, 64, 0.5, 0.3, 5), (256, 520, 128, 0.9, 0.0, 37)]:
    w = torch.randn(n, k, dtype=torch.float64)
    mask = ops.tile_mask(w.abs(), tile, s, cs)
    lay = TileLayout.from_mask(mask, tile).to("cuda")
    for dt in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        v = lay.pack((w * mask).to("cuda", dt))
        x = torch.randn(m, k, device="cuda").to(dt)
        b = torch.randn(n, device="cuda").to(dt)
        gy = torch.randn(m, n, device="cuda").to(dt)
        ops.tw_linear(x, v, lay, b)
        T.tw_linear_grad_input(gy, v, lay.cols, lay.row_offsets, lay.rows, k, tile)
        T.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
        lay.unpack(v)
torch.cuda.synchronize()
import sys
if sys.argv[1:] != ["malformed"]:
    print("sanitizer case done")
    sys.exit(0)
# Malformed layout, run inside graph capture where no validation runs: the
# kernels must clamp every index (memcheck reports any out-of-bounds access).
n, k, tile = 200, 40, 64
w = torch.randn(n, k, dtype=torch.float64)
mask = ops.tile_mask(w.abs(), tile, 0.5)
lay = TileLayout.from_mask(mask, tile).to("cuda")
cols, ro, rows = lay.cols.clone(), lay.row_offsets.clone(), lay.rows.clone()
cols[3] = 10 ** 6; cols[5] = -7
rows[:] = torch.randint(-10 ** 6, 10 ** 6, rows.shape, device="cuda", dtype=torch.int32)
ro[1] = ro[2] + 1000
for dt in (torch.bfloat16, torch.float32):
    v = torch.randn(lay.num_values, device="cuda").to(dt)
    x = torch.randn(33, k, device="cuda").to(dt)
    gy = torch.randn(33, n, device="cuda").to(dt)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            T.tw_linear(x, v, cols, ro, rows, None, n, tile)
            T.tw_linear_grad_input(gy, v, cols, ro, rows, k, tile)
            T.tw_linear_grad_values(gy, x, cols, ro, rows, tile, lay.num_values)
            T.tw_unpack(v, cols, ro, rows, tile, n, k)
        g.replay()
    torch.cuda.synchronize()
print("sanitizer case done")
EOF
  if command -v compute-sanitizer > /dev/null; then
    # 1) valid layouts, every allocation its own cudaMalloc (no caching allocator),
    #    so memcheck sees any access past a tensor
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${T_SANITIZE:-120}" compute-sanitizer --tool memcheck \
      --error-exitcode 7 "$PY" "$SAN_PY" > "$OUTDIR/sanitizer.log" 2>&1
    rc=$?
    # 2) a malformed layout executed inside CUDA-graph capture (no validation there):
    #    graphs need an allocator that supports capture; cudaMallocAsync does, and
    #    memcheck tracks its allocations
    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync timeout "${T_SANITIZE:-120}" compute-sanitizer --tool memcheck \
      --error-exitcode 7 "$PY" "$SAN_PY" malformed >> "$OUTDIR/sanitizer.log" 2>&1
    rc2=$?
    [ $rc -eq 0 ] && rc=$rc2
    status memcheck "rc=$rc in $(( $(date +%s) - t0 )) s: $(grep -E 'ERROR SUMMARY|sanitizer case done' "$OUTDIR/sanitizer.log" | tr '\n' ' ')"
    # shared-memory races among a block's threads (the v2 chunk ring, the grad_input accumulator)
    t0=$(date +%s)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${T_SANITIZE:-120}" compute-sanitizer --tool racecheck \
      --error-exitcode 7 "$PY" "$SAN_PY" > "$OUTDIR/racecheck.log" 2>&1
    status racecheck "rc=$? in $(( $(date +%s) - t0 )) s: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUTDIR/racecheck.log" | tr '\n' ' ')"
  else
    status sanitizer "compute-sanitizer not found"
  fi
  rm -f "$SAN_PY"
fi

if has ceilings; then
  CEIL_PY="$(mktemp /tmp/ts_ceilings_XXXX.py)"
  cat > "$CEIL_PY" <<'EOF'
# This device's ceilings, the constants of docs/performance.md (medians of 20 timed runs).
import json, torch
def timed(fn, reps=20):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return sorted(ts)[len(ts) // 2]
p = torch.cuda.get_device_properties(0)
out = {"device": p.name, "sms": p.multi_processor_count, "l2_bytes": getattr(p, "L2_cache_size", None)}
src = torch.empty(1 << 29, dtype=torch.uint8, device="cuda"); dst = torch.empty_like(src)  # 512 MiB
out["copy_GBps"] = 2 * src.numel() / timed(lambda: dst.copy_(src)) / 1e9
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
out["matmul_bf16_TFLOPs"] = 2 * 8192 ** 3 / timed(lambda: a @ b) / 1e12
l2 = torch.randn(8 << 20, device="cuda", dtype=torch.bfloat16)  # 16 MiB, re-read from L2
out["l2_reread_GBps"] = l2.numel() * 2 * 8 / timed(lambda: [l2.sum() for _ in range(8)]) / 1e9
print(json.dumps(out))
EOF
  run ceilings "${T_CEILINGS:-60}" "$OUTDIR/ceilings.log" "$PY" "$CEIL_PY"
  status ceilings_result "$(tail -1 "$OUTDIR/ceilings.log")"
  rm -f "$CEIL_PY"
fi

if has bench; then
  run bench "${T_BENCH:-200}" "$OUTDIR/bench.log" "$PY" "$ROOT/benchmarks/bench_linear.py" --device cuda \
    --out-dir "$OUTDIR" ${BENCH_ARGS:-}
  [ -f "$OUTDIR/cuda_linear.md" ] && cat "$OUTDIR/cuda_linear.md" >> "$SUMMARY"
fi

if has gvab; then
  GVAB_PY="$(mktemp /tmp/ts_gvab_XXXX.py)"
  cat > "$GVAB_PY" <<'EOF'
# grad_values v1 / v2 / cuBLAS dense gW, bf16, M = 16384: interleaved, median of 15 (ratios of one run).
import json, os, torch
from tilesparse import TileLayout, ops
def timed(fn):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); fn(); b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b)
def kernel(key):  # the operator reads the variable on every call
    os.environ["TILESPARSE_CUDA_GRAD_VALUES_KERNEL"] = "v1" if key == "v1" else "v2"
torch.manual_seed(0)
m, tile = 16384, 128
gv_op = torch.ops.tilesparse.tw_linear_grad_values
for k, n in ((768, 3072), (3072, 768), (4096, 14336)):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    gy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    for s in (0.5, 0.75, 0.9):
        lay = TileLayout.from_mask(ops.tile_mask(torch.randn(n, k).abs(), tile, s), tile).to("cuda")
        sparse = lambda: gv_op(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
        fns = {"dense": lambda: gy.t() @ x, "v1": sparse, "v2": sparse}
        ref = lay.pack(gy.float().t() @ x.float())
        errs = {}
        for key in ("v1", "v2"):
            kernel(key)
            errs[key] = (sparse().float() - ref).abs().max().item()
        ts = {key: [] for key in fns}
        for rep in range(18):
            for key, fn in fns.items():
                kernel(key)
                t = timed(fn)
                if rep >= 3:
                    ts[key].append(t)
        med = {key: sorted(v)[len(v) // 2] for key, v in ts.items()}
        print(json.dumps(dict(M=m, K=k, N=n, sparsity=s, dense_ms=med["dense"], v1_ms=med["v1"], v2_ms=med["v2"],
                              v1_speedup=med["dense"] / med["v1"], v2_speedup=med["dense"] / med["v2"],
                              v1_max_err=errs["v1"], v2_max_err=errs["v2"])))
EOF
  run gvab "${T_GVAB:-60}" "$OUTDIR/gvab.log" "$PY" "$GVAB_PY"
  status gvab_result "$(grep -c '"M"' "$OUTDIR/gvab.log") records (gvab.log); v1, v2 / dense at 75%: $(grep '"sparsity": 0.75' "$OUTDIR/gvab.log" | sed -E 's/.*"v1_speedup": ([0-9.]+), "v2_speedup": ([0-9.]+).*/\1 \2/' | awk '{printf "%.2f %.2f; ", $1, $2}')"
  rm -f "$GVAB_PY"
fi

if has ncu; then
  if command -v ncu > /dev/null; then
    NCU_PY="$(mktemp /tmp/ts_ncu_XXXX.py)"
    cat > "$NCU_PY" <<'EOF'
import torch, tilesparse
from tilesparse import TileLayout, ops
torch.manual_seed(0)
m, k, n, tile = 16384, 768, 3072, 128
w = torch.randn(n, k, device="cuda")
lay = TileLayout.from_mask(ops.tile_mask(w.abs(), tile, 0.75), tile)
v = lay.pack(w.to(torch.bfloat16))
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
for _ in range(2):
    ops.tw_linear(x, v, lay)
torch.cuda.synchronize()
EOF
    METRICS=lts__t_sectors.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed.sum
    METRICS=$METRICS,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,dram__bytes.sum
    METRICS=$METRICS,gpu__time_duration.sum
    run ncu "${T_NCU:-90}" "$OUTDIR/ncu.log" ncu --kernel-name regex:tw_fwd_v2 --launch-skip 1 --launch-count 1 \
      --metrics "$METRICS" "$PY" "$NCU_PY"
    grep -E "lts__|l1tex__|smsp__|sm__pipe|dram__|gpu__time" "$OUTDIR/ncu.log" | head -8 > "$OUTDIR/ncu_summary.txt"
    cat "$OUTDIR/ncu_summary.txt"
    rm -f "$NCU_PY"
  else
    status ncu "ncu not found"
  fi
fi

{
  echo
  echo "| stage | result |"
  echo "|---|---|"
  printf '%s\n' "${ROWS[@]}"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
