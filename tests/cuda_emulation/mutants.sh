#!/usr/bin/env bash
# Are the emulation tests sensitive to a kernel's synchronisation? For each
# `__syncthreads();` and `cp_async_wait<...>();` line of one kernel header,
# and each sm_90a wait or fence (`mbarrier_wait_parity(`, `wgmma_wait_group<`,
# `fence_proxy_async_shared(`, `cluster_sync(`; a call that spans lines
# shows as BUILD FAILED),
# builds the given emulation tests against a copy of csrc/ with that line
# deleted (no sanitizers, -O1: fast) and runs them. A mutant that still
# passes ("SURVIVED") means that barrier or wait is untested (or not needed).
# Extra mutants: -e 'sed expression' (any number), e.g. -e 's/lane \& 15/lane \& 7/'.
#
#   tests/cuda_emulation/mutants.sh [-e EXPR]... KERNEL_HEADER TEST_CPP [CATCH_FILTER]
#   tests/cuda_emulation/mutants.sh csrc/cuda/tw_fwd_kernels.cuh \
#       tests/cuda_emulation/test_emu_primitives.cpp '[kernel]'
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
exprs=()
while getopts "e:" opt; do
  case $opt in
    e) exprs+=("$OPTARG") ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
header=${1:?kernel header, e.g. csrc/cuda/tw_fwd_kernels.cuh}
test_cpp=${2:?test source, e.g. tests/cuda_emulation/test_emu_primitives.cpp}
filter=${3:-}
rel=${header#csrc/}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(-std=c++17 -O1 -w -pthread -I"$root/tests/cuda_emulation" -I"$root/tests/common")
g++ "${flags[@]}" -I"$root/csrc" -c "$root/tests/cuda_emulation/emu_runtime.cpp" -o "$work/runtime.o"
g++ "${flags[@]}" -I"$root/csrc" -c "$root/tests/cuda_emulation/emu_sm90_runtime.cpp" -o "$work/sm90_runtime.o"
g++ "${flags[@]}" -c "$root/tests/cpp/test_main.cpp" -o "$work/main.o"
g++ "${flags[@]}" -I"$root/csrc" -c "$root/csrc/core/tile_layout.cpp" -o "$work/layout.o"

run_mutant() {  # name, then the mutated copy is in $work/m/csrc
  local name=$1
  if ! g++ "${flags[@]}" -I"$work/m/csrc" "$root/$test_cpp" "$work/runtime.o" "$work/sm90_runtime.o" "$work/main.o" "$work/layout.o" -o "$work/t" \
      2>"$work/build.log"; then
    echo "BUILD FAILED  $name: $(grep -m1 error "$work/build.log")"
  elif "$work/t" $filter >"$work/run.log" 2>&1; then
    echo "SURVIVED      $name"
  else
    echo "killed        $name"
  fi
}

mutate() {  # sed arguments
  rm -rf "$work/m" && mkdir -p "$work/m" && cp -r "$root/csrc" "$work/m/"
  sed -i "$@" "$work/m/csrc/$rel"
}

sync='__syncthreads\(\);|cp_async_wait<[^>]*>\(\);|mbarrier_wait_parity\(|wgmma_wait_group<|fence_proxy_async_shared\(|cluster_sync\(|wgmma_fence\(\);|named_barrier_sync\(|__threadfence\(\);|__syncwarp\(\);'
decl='^[0-9]+:\s*(__device__|inline|template|void|bool)\b'  # definitions, not calls
mapfile -t lines < <(grep -nE "$sync" "$root/$header" | grep -vE "$decl" | cut -d: -f1)
for n in "${lines[@]}"; do
  mutate "${n}d"
  run_mutant "line $n deleted: $(sed -n "${n}p" "$root/$header" | sed 's/^ *//')"
done
for e in "${exprs[@]}"; do
  mutate "$e"
  if cmp -s "$root/$header" "$work/m/csrc/$rel"; then
    echo "NOT APPLIED   $e"
  else
    run_mutant "$e"
  fi
done
