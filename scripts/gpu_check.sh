#!/usr/bin/env bash
# One command for a GPU machine (no network needed): build tilesparse against
# the local torch, run the whole test suite, run compute-sanitizer memcheck on
# a small case (including a malformed layout executed without validation, to
# prove the kernels' clamping), and run the CUDA benchmark.
#
#   bash scripts/gpu_check.sh [OUT_DIR] [STAGES...]
#
# OUT_DIR defaults to $OUT, else ./gpu_check_out. STAGES (default: all of
# build test sanitize bench) picks steps, e.g. `bash scripts/gpu_check.sh out build test`.
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0 here), MAX_JOBS (default nproc),
# BENCH_ARGS (extra arguments for bench_linear.py, e.g. "--quick"),
# BENCH_TILE64=1 to also benchmark tile 64.
# Writes at most 8 files: build.log, pytest.log, sanitizer.log, bench.log,
# cuda_linear.json, cuda_linear.md, (cuda_linear_t64.json), summary.md.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
shift || true
STAGES="${*:-build test sanitize bench}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python3}"
SUMMARY="$OUTDIR/summary.md"
status() { echo "- $1: $2" | tee -a "$SUMMARY"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

{
  echo "# tilesparse GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  nvcc --version 2>&1 | tail -1 || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" 2>&1
  "$PY" -c "import hypothesis; print('hypothesis', hypothesis.__version__)" 2>&1 | tail -1
  "$PY" -c "import expecttest; print('expecttest ok')" 2>&1 | tail -1
  git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null || true
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS stages: $STAGES"
  echo '```'
  echo
} > "$SUMMARY"
cat "$SUMMARY"

if has build; then
  t0=$(date +%s)
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUTDIR/build.log" 2>&1
  rc=$?
  status build "rc=$rc in $(( $(date +%s) - t0 )) s (log: build.log)"
  grep -E "error|warning: .*(spill|stack)" "$OUTDIR/build.log" | head -20 | tee -a "$SUMMARY"
  if [ $rc -ne 0 ]; then tail -40 "$OUTDIR/build.log"; exit $rc; fi
  "$PY" -c "import tilesparse, sys; ok = tilesparse.built_with_cuda(); print('built_with_cuda', ok); sys.exit(0 if ok else 1)" \
    2>&1 | tee -a "$SUMMARY" || exit 1
fi

if has test; then
  t0=$(date +%s)
  "$PY" -m pytest -q -rs -p no:cacheprovider "$ROOT/tests/python" > "$OUTDIR/pytest.log" 2>&1
  rc=$?
  status pytest "rc=$rc in $(( $(date +%s) - t0 )) s: $(tail -1 "$OUTDIR/pytest.log")"
  grep -E "^(FAILED|ERROR)" "$OUTDIR/pytest.log" | head -30 | tee -a "$SUMMARY"
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
for (n, k, tile, s, cs, m) in [(300, 70, 128, 0.75, 0.0, 37), (200, 77, 64, 0.5, 0.3, 19), (130, 64, 32, 0.0, 0.0, 5)]:
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
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 7 "$PY" "$SAN_PY" \
      > "$OUTDIR/sanitizer.log" 2>&1
    rc=$?
    # 2) a malformed layout executed inside CUDA-graph capture (no validation there):
    #    graphs need an allocator that supports capture; cudaMallocAsync does, and
    #    memcheck tracks its allocations
    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync compute-sanitizer --tool memcheck --error-exitcode 7 \
      "$PY" "$SAN_PY" malformed >> "$OUTDIR/sanitizer.log" 2>&1
    rc2=$?
    [ $rc -eq 0 ] && rc=$rc2
    status sanitizer "rc=$rc in $(( $(date +%s) - t0 )) s: $(grep -E 'ERROR SUMMARY|sanitizer case done' "$OUTDIR/sanitizer.log" | tr '\n' ' ')"
  else
    status sanitizer "compute-sanitizer not found"
  fi
  rm -f "$SAN_PY"
fi

if has bench; then
  t0=$(date +%s)
  "$PY" "$ROOT/benchmarks/bench_linear.py" --device cuda --out-dir "$OUTDIR" ${BENCH_ARGS:-} > "$OUTDIR/bench.log" 2>&1
  rc=$?
  status bench "rc=$rc in $(( $(date +%s) - t0 )) s (cuda_linear.json, cuda_linear.md)"
  if [ "${BENCH_TILE64:-0}" = "1" ]; then
    "$PY" "$ROOT/benchmarks/bench_linear.py" --device cuda --tile 64 --out-dir "$OUTDIR" ${BENCH_ARGS:-} \
      >> "$OUTDIR/bench.log" 2>&1
    status bench_tile64 "rc=$? (cuda_linear_t64.json)"
  fi
  [ -f "$OUTDIR/cuda_linear.md" ] && cat "$OUTDIR/cuda_linear.md" >> "$SUMMARY"
fi
echo
cat "$SUMMARY"
