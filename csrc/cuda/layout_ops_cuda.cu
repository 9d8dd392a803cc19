// CUDA side of the packed format and of mask selection, in one translation
// unit (each .cu costs about a minute and a half of nvcc time for the ATen
// headers alone):
//  * layout validation on the device and its cache (check_layout_cuda, see
//    checks_cuda.cuh);
//  * tw_pack / tw_unpack: one block per kept output feature, threads over
//    the tile's kept input features (indices clamped);
//  * layout_from_mask: its output sizes depend on the data, so it syncs
//    anyway; the mask is copied to the host, the CPU operator builds the
//    layout and it is moved to the mask's device;
//  * tile_mask, tile_mask_threshold, tile_segment_scores: mask selection runs
//    once per pruning step and must equal the CPU operator exactly (ranking
//    ties, k_align groups, unit runs, the "closer to target" greedy rule,
//    float64 sums whose rounding depends on their order), so the scores are
//    copied to the host, the CPU operator (csrc/core/tile_mask.cpp, the
//    reference semantics) runs, and the result moves back to the scores'
//    device: equal by construction, at the cost of two copies.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/TensorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/library.h>

#include <array>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include "../core/tile_layout.h"
#include "checks_cuda.cuh"
#include "layout_kernels.cuh"

namespace tilesparse::cuda {
namespace {

// ===========================================================================
// Layout validation on the device, and its cache (see checks_cuda.cuh)
// ===========================================================================

// The CPU's message for a layout found malformed (indices copied to the host).
std::string host_message(const LayoutArgs& l, int64_t n, int64_t k) {
  const at::Tensor cols = l.cols.cpu(), ro = l.row_offsets.cpu(), rows = l.rows.cpu();
  const core::LayoutView v{cols.data_ptr<int32_t>(), cols.numel(), ro.data_ptr<int32_t>(), ro.numel() - 1,
                           rows.data_ptr<int32_t>(), rows.numel(), l.view.tile};
  std::string err = core::validate_layout(v, n, k);
  if (err.empty()) err = "the device check failed but the host check passed (please report this)";
  return err;
}

// ---- cache of layouts that passed --------------------------------------
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct TensorKey {
  WeakImpl weak;
  const c10::TensorImpl* impl;
  const void* data;
  int64_t version;
  int64_t numel;

  explicit TensorKey(const at::Tensor& t)
      : weak(t.getIntrusivePtr()), impl(t.unsafeGetTensorImpl()), data(t.data_ptr()), version(t._version()),
        numel(t.numel()) {}
  bool matches(const at::Tensor& t) const {
    return !weak.expired() && impl == t.unsafeGetTensorImpl() && data == t.data_ptr() &&
           version == t._version() && numel == t.numel();
  }
};

struct Entry {
  std::array<TensorKey, 3> keys;
  int64_t n, k, tile;
  LayoutInfo info;
};

std::mutex cache_mutex;
std::deque<Entry> cache;
constexpr size_t kCacheSize = 256;

bool cacheable(const LayoutArgs& l) {
  return !l.cols.is_inference() && !l.row_offsets.is_inference() && !l.rows.is_inference();
}

bool lookup(const LayoutArgs& l, int64_t n, int64_t k, LayoutInfo* info) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (const Entry& e : cache) {
    if (e.n == n && e.k == k && e.tile == l.view.tile && e.keys[0].matches(l.cols) &&
        e.keys[1].matches(l.row_offsets) && e.keys[2].matches(l.rows)) {
      *info = e.info;
      return true;
    }
  }
  return false;
}

void insert(const LayoutArgs& l, int64_t n, int64_t k, const LayoutInfo& info) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (auto it = cache.begin(); it != cache.end();) {
    if (it->keys[0].weak.expired() || it->keys[1].weak.expired() || it->keys[2].weak.expired()) {
      it = cache.erase(it);
    } else {
      ++it;
    }
  }
  if (cache.size() >= kCacheSize) cache.pop_front();
  cache.push_back(Entry{{TensorKey(l.cols), TensorKey(l.row_offsets), TensorKey(l.rows)}, n, k, l.view.tile, info});
}

}  // namespace

void cache_fwd_bounds(const LayoutArgs& l, int64_t n, int64_t k, const at::Tensor& bounds) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (Entry& e : cache) {
    if (e.n == n && e.k == k && e.tile == l.view.tile && e.keys[0].matches(l.cols) &&
        e.keys[1].matches(l.row_offsets) && e.keys[2].matches(l.rows)) {
      e.info.fwd_bounds = bounds;
      return;
    }
  }
}

LayoutInfo check_layout_cuda(const LayoutArgs& l, int64_t n, int64_t k) {
  const int64_t tile = l.view.tile, nc = l.cols.numel(), nt = l.row_offsets.numel() - 1;
  if (nc > n || nt != (nc + tile - 1) / tile) {  // sizes alone: the CPU check names them
    TORCH_CHECK_VALUE(false, "invalid tile layout: ", host_message(l, n, k));
  }
  LayoutInfo info;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return info;  // unchecked inside graph capture
  const bool use_cache = cacheable(l);
  if (use_cache && lookup(l, n, k, &info)) return info;

  const DevLayout dl = dev_layout(l);
  at::Tensor out = at::zeros({4}, l.cols.options().dtype(at::kLong));
  auto* o = reinterpret_cast<unsigned long long*>(out.data_ptr<int64_t>());
  const int64_t count = std::max<int64_t>(std::max(nc, nt), 1);
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(count, 256), 1024));
  validate_offsets_kernel<<<blocks, 256, 0, stream>>>(dl, n, k, o);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (nt > 0) {
    validate_rows_kernel<<<static_cast<int>(std::min<int64_t>(nt, 4096)), 128, 0, stream>>>(dl, k, o);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor host = out.cpu();  // the one synchronisation
  const int64_t* h = host.data_ptr<int64_t>();
  if (h[kErr] != 0) {
    TORCH_CHECK_VALUE(false, "invalid tile layout: ", host_message(l, n, k));
  }
  info.known = true;
  info.num_values = h[kNumValues];
  info.max_rows = h[kMaxRows];
  info.num_kept = h[kNumKept];
  info.sm90 = std::make_shared<Sm90LayoutCache>();  // filled by the sm90 forward on first use
  if (use_cache) insert(l, n, k, info);
  return info;
}

namespace {

// ===========================================================================
// tw_pack, tw_unpack, layout_from_mask
// ===========================================================================

template <bool kPack>
void launch_pack(const LayoutArgs& l, const at::Tensor& values, const at::Tensor& dense) {
  const int64_t blocks = l.view.num_tiles * l.view.tile;
  if (blocks == 0 || values.numel() == 0 || dense.numel() == 0) return;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(), "layout too large for tw_pack/tw_unpack");
  const DevLayout dl = dev_layout(l);
  const int64_t n = dense.size(0), k = dense.size(1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, values.scalar_type(),
                             kPack ? "tw_pack_cuda" : "tw_unpack_cuda", [&] {
                               pack_kernel<scalar_t, kPack><<<static_cast<unsigned>(blocks), 128, 0, stream>>>(
                                   dl, values.data_ptr<scalar_t>(), values.numel(), dense.data_ptr<scalar_t>(), n,
                                   k);
                               C10_CUDA_KERNEL_LAUNCH_CHECK();
                             });
}

at::Tensor tw_pack_cuda(const at::Tensor& weight, const at::Tensor& cols, const at::Tensor& row_offsets,
                        const at::Tensor& rows, int64_t tile, int64_t num_values) {
  TS_CHECK_DIM(weight, 2);
  const c10::cuda::CUDAGuard guard(weight.device());
  const LayoutArgs l =
      layout_args(cols, row_offsets, rows, tile, weight.size(0), weight.size(1), weight.device(), false);
  const LayoutInfo info = check_layout_cuda(l, weight.size(0), weight.size(1));
  if (info.known) {
    TORCH_CHECK_VALUE(num_values == info.num_values, "num_values must be ", info.num_values,
                      " for this layout, got ", num_values);
  }
  TORCH_CHECK_VALUE(num_values >= 0, "num_values must be >= 0, got ", num_values);
  const at::Tensor w = weight.contiguous();
  at::Tensor values = at::empty({num_values}, w.options());
  launch_pack<true>(l, values, w);
  return values;
}

at::Tensor tw_unpack_cuda(const at::Tensor& values, const at::Tensor& cols, const at::Tensor& row_offsets,
                          const at::Tensor& rows, int64_t tile, int64_t out_features, int64_t in_features) {
  TS_CHECK_DIM(values, 1);
  const c10::cuda::CUDAGuard guard(values.device());
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, out_features, in_features, values.device(), false);
  const LayoutInfo info = check_layout_cuda(l, out_features, in_features);
  if (info.known) {
    TORCH_CHECK_VALUE(values.numel() == info.num_values, "values must have ", info.num_values,
                      " elements for this layout, got ", values.numel());
  }
  const at::Tensor v = values.contiguous();
  at::Tensor dense = at::zeros({out_features, in_features}, v.options());
  launch_pack<false>(l, v, dense);
  return dense;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layout_from_mask_cuda(const at::Tensor& mask, int64_t tile,
                                                                     int64_t pad) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("tilesparse::layout_from_mask", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t)>();
  TS_CHECK_DTYPE(mask, at::kBool);
  TS_CHECK_DIM(mask, 2);
  auto [c, ro, r] = op.redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), mask.detach().cpu(), tile, pad);
  return {c.to(mask.device()), ro.to(mask.device()), r.to(mask.device())};
}

}  // namespace

namespace {

// ===========================================================================
// Mask selection: the CPU operator on a host copy (see the file comment)
// ===========================================================================

const c10::DispatchKeySet kCpu(c10::DispatchKey::CPU);

at::Tensor host_scores(const at::Tensor& scores) { return scores.detach().cpu(); }

at::Tensor tile_segment_scores_cuda(const at::Tensor& scores, int64_t tile, std::optional<double> col_threshold,
                                    int64_t unit) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tilesparse::tile_segment_scores", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, std::optional<double>, int64_t)>();
  const c10::cuda::CUDAGuard guard(scores.device());
  return op.redispatch(kCpu, host_scores(scores), tile, col_threshold, unit).to(scores.device());
}

at::Tensor tile_mask_cuda(const at::Tensor& scores, int64_t tile, double sparsity, double col_sparsity,
                          int64_t k_align, int64_t unit) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tilesparse::tile_mask", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, double, double, int64_t, int64_t)>();
  const c10::cuda::CUDAGuard guard(scores.device());
  return op.redispatch(kCpu, host_scores(scores), tile, sparsity, col_sparsity, k_align, unit)
      .to(scores.device());
}

at::Tensor tile_mask_threshold_cuda(const at::Tensor& scores, int64_t tile, double threshold,
                                    std::optional<double> col_threshold, int64_t k_align, int64_t unit) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("tilesparse::tile_mask_threshold", "")
          .typed<at::Tensor(const at::Tensor&, int64_t, double, std::optional<double>, int64_t, int64_t)>();
  const c10::cuda::CUDAGuard guard(scores.device());
  return op.redispatch(kCpu, host_scores(scores), tile, threshold, col_threshold, k_align, unit)
      .to(scores.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CUDA, m) {
  m.impl("tw_pack", &tw_pack_cuda);
  m.impl("tw_unpack", &tw_unpack_cuda);
  m.impl("layout_from_mask", &layout_from_mask_cuda);
  m.impl("tile_segment_scores", &tile_segment_scores_cuda);
  m.impl("tile_mask", &tile_mask_cuda);
  m.impl("tile_mask_threshold", &tile_mask_threshold_cuda);
}

}  // namespace tilesparse::cuda
