// CPU kernels of tw_linear and its two backward operators: argument checks,
// then core/tw_linear_cpu.h with torch's BLAS matmul and at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/StringUtil.h>

#include <cstdlib>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../core/tw_linear_avx2.h"
#include "../core/tw_linear_avx512.h"
#include "../core/tw_linear_cpu.h"
#include "checks.h"
#include "cpu_kernel.h"

namespace tilesparse {
namespace {

// core Gemm on top of at::mm_out / addmm_: strided views over the raw
// buffers, so tiles write straight into their output columns without copies.
// Called inside at::parallel_for, where ATen and MKL run single-threaded.
template <typename T>
struct AtenGemm {
  at::TensorOptions opts;
  void operator()(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                  const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    at::Tensor A = trans_a ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opts).t()
                           : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
    at::Tensor B = trans_b ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts).t()
                           : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
    at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
    if (beta == T(0)) {
      at::mm_out(C, A, B);
    } else {
      C.addmm_(A, B, static_cast<double>(beta), 1.0);
    }
  }
};

// ---- inference cache of the fused (AVX2, AVX-512) forward's packed panels --------
// In inference the values are a fixed weight, and re-packing them costs as
// much as a small layer's GEMM. Entries are keyed by the values' storage
// (held weakly, so a freed buffer's address reused by a new tensor never
// matches), data pointer, numel and version counter (bumped by every
// in-place update, also under no_grad and inference_mode), plus a copy of
// the layout's indices. A version is cached the second time it is seen: in
// training every step's values are new (the optimizer bumps the version), so
// nothing is stored there (the autograd wrapper runs this kernel with grad
// mode off either way, so grad mode cannot tell the two apart). Least
// recently used entries are evicted beyond TILESPARSE_CPU_PANEL_CACHE_MB
// (default 256; 0 disables). Writes that bypass the version counter
// (`tensor.data.copy_(...)`) are not seen: call tilesparse::cpu_panel_cache_clear after those.
class PanelCache {
 public:
  using Panels = core::ForwardPanels;

  // The panels of `values` under layout `l`: cached, or packed into a
  // per-thread buffer (valid until this thread's next call).
  // `kernel`: kAvx2 or kAvx512 (whose panels differ in width).
  std::shared_ptr<const Panels> get(const at::Tensor& values, const LayoutArgs& l, CpuKernel kernel) {
    const int64_t budget = budget_bytes();
    if (budget <= 0 || values.is_inference()) return pack_scratch(values, l, kernel);
    Key key = make_key(values, l, kernel);
    bool seen = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (!matches(it->key, it->storage, key, values)) continue;
        entries_.splice(entries_.begin(), entries_, it);  // most recently used first
        hits_++;
        return entries_.front().panels;
      }
      misses_++;
      for (auto it = seen_.begin(); it != seen_.end() && !seen; ++it) {
        if (!(it->data == key.data && it->numel == key.numel && it->version == key.version &&
              it->tile == key.tile && it->kernel == key.kernel && it->layout_hash == key.layout_hash))
          continue;
        const auto alive = it->storage.lock();
        seen = alive && alive.get() == values.storage().unsafeGetStorageImpl();
        seen_.erase(it);
        break;
      }
      if (!seen) {  // first sight of this version: remember it, cheaply
        seen_.push_front(Seen{key.data, key.numel, key.version, key.tile, key.kernel, key.layout_hash,
                              values.storage().getWeakStorageImpl()});
        if (seen_.size() > kMaxSeen) seen_.pop_back();
      }
    }
    if (!seen) return pack_scratch(values, l, kernel);
    auto panels = std::make_shared<Panels>();
    pack(kernel, l, values, *panels);
    const int64_t bytes = panels->bytes() + static_cast<int64_t>(key.layout.size() * sizeof(int32_t));
    if (bytes > budget) return panels;
    std::lock_guard<std::mutex> lock(mu_);
    // entries of the same buffer (older versions) and of dead buffers go first
    entries_.remove_if([&](const Entry& e) {
      const bool drop = e.storage.expired() || e.key.data == key.data;
      if (drop) bytes_ -= e.bytes;
      return drop;
    });
    while (!entries_.empty() && bytes_ + bytes > budget) {
      bytes_ -= entries_.back().bytes;
      entries_.pop_back();
    }
    entries_.push_front(Entry{std::move(key), values.storage().getWeakStorageImpl(), panels, bytes});
    bytes_ += bytes;
    return panels;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    seen_.clear();
    bytes_ = hits_ = misses_ = 0;
  }

  // {entries, bytes, hits, misses}
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(entries_.size()), bytes_, hits_, misses_};
  }

  static PanelCache& instance() {
    static PanelCache cache;
    return cache;
  }

 private:
  static constexpr size_t kMaxSeen = 256;
  struct Key {
    const void* data;
    int64_t numel, version, tile;
    CpuKernel kernel;
    std::vector<int32_t> layout;  // num_cols, num_tiles, cols, row_offsets, rows
    uint64_t layout_hash;
  };
  struct Entry {
    Key key;
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    std::shared_ptr<const Panels> panels;
    int64_t bytes;
  };
  struct Seen {
    const void* data;
    int64_t numel, version, tile;
    CpuKernel kernel;
    uint64_t layout_hash;
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  };

  static int64_t budget_bytes() {
    const char* env = std::getenv("TILESPARSE_CPU_PANEL_CACHE_MB");
    if (env == nullptr || *env == '\0') return int64_t(256) << 20;
    char* end = nullptr;
    const double mb = std::strtod(env, &end);
    TORCH_CHECK_VALUE(end != env && *end == '\0' && mb >= 0,
                      "TILESPARSE_CPU_PANEL_CACHE_MB must be a number >= 0 (MiB), got '", env, "'");
    return static_cast<int64_t>(mb * (1 << 20));
  }

  static Key make_key(const at::Tensor& values, const LayoutArgs& l, CpuKernel kernel) {
    Key key{values.data_ptr(), values.numel(), values._version(), l.view.tile, kernel, {}, 1469598103934665603ull};
    auto& v = key.layout;
    v.reserve(2 + l.view.num_cols + l.view.num_tiles + 1 + l.view.num_rows);
    v.push_back(static_cast<int32_t>(l.view.num_cols));
    v.push_back(static_cast<int32_t>(l.view.num_tiles));
    v.insert(v.end(), l.view.cols, l.view.cols + l.view.num_cols);
    v.insert(v.end(), l.view.row_offsets, l.view.row_offsets + l.view.num_tiles + 1);
    v.insert(v.end(), l.view.rows, l.view.rows + l.view.num_rows);
    for (int32_t x : v) key.layout_hash = (key.layout_hash ^ static_cast<uint32_t>(x)) * 1099511628211ull;  // FNV-1a
    return key;
  }

  static bool matches(const Key& e, const c10::weak_intrusive_ptr<c10::StorageImpl>& storage, const Key& key,
                      const at::Tensor& values) {
    if (e.data != key.data || e.numel != key.numel || e.version != key.version || e.tile != key.tile ||
        e.kernel != key.kernel || e.layout_hash != key.layout_hash || e.layout != key.layout)
      return false;
    const auto alive = storage.lock();  // the same, still living buffer
    return alive && alive.get() == values.storage().unsafeGetStorageImpl();
  }

  static void pack(CpuKernel kernel, const LayoutArgs& l, const at::Tensor& values, Panels& out) {
    const at::Tensor v = values.contiguous();  // held for the call: a strided input's copy
    if (kernel == CpuKernel::kAvx512) core::avx512::pack_forward(l.view, v.data_ptr<float>(), out, aten_parallel_for());
    else core::avx2::pack_forward(l.view, v.data_ptr<float>(), out, aten_parallel_for());
  }

  static std::shared_ptr<const Panels> pack_scratch(const at::Tensor& values, const LayoutArgs& l, CpuKernel kernel) {
    // reused per thread: no fresh allocation (page faults, zero fill) per call
    thread_local Panels scratch;
    pack(kernel, l, values, scratch);
    return std::shared_ptr<const Panels>(std::shared_ptr<const Panels>(), &scratch);  // not owned
  }

  std::mutex mu_;
  std::list<Entry> entries_;
  std::list<Seen> seen_;
  int64_t bytes_ = 0, hits_ = 0, misses_ = 0;
};

// A layout that keeps every weight is the identity (cols = arange(N), every
// tile keeps rows = arange(K)), so its values are W itself, row-major [N, K]:
// run it as one dense GEMM.
bool keeps_everything(const LayoutArgs& l, int64_t N, int64_t K) { return core::is_dense_layout(l.view, N, K); }

void check_values(const at::Tensor& values, const at::Tensor& ref, const LayoutArgs& l) {
  TS_CHECK_DIM(values, 1);
  TS_CHECK_SAME_DEVICE(values, ref);
  TORCH_CHECK_TYPE(values.scalar_type() == ref.scalar_type(), "values must have the dtype of ", "the input (",
                   ref.scalar_type(), "), got ", values.scalar_type());
  TORCH_CHECK_VALUE(values.numel() == core::num_values(l.view), "values must have ", core::num_values(l.view),
                    " elements for this layout, got ", values.numel());
}

at::Tensor tw_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& cols,
                         const at::Tensor& row_offsets, const at::Tensor& rows, const std::optional<at::Tensor>& bias,
                         int64_t out_features, int64_t tile) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension (in_features), got a scalar");
  TS_CHECK_FLOATING(x);
  const int64_t K = x.size(-1), N = out_features;
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, x.device(), true);
  check_values(values, x, l);
  check_bias(bias, x, N);
  const CpuKernel kernel = kernel_for(x.scalar_type());
  const int64_t M = leading_rows(x);
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  // Allocated in its final shape, so the op returns a fresh tensor, not a view.
  at::Tensor out = at::empty(with_last(x.sizes(), N), x.options());
  at::Tensor y = out.view({M, N});
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  if (K == 0 || l.view.num_cols == 0) {
    y.copy_(bias ? b.unsqueeze(0).expand({M, N}) : at::zeros({M, N}, x.options()));
  } else if (keeps_everything(l, N, K)) {
    const at::Tensor w = values.view({N, K});
    if (bias) at::addmm_out(y, b, x2, w.t());
    else at::mm_out(y, x2, w.t());
  } else if (M > 0 && (kernel == CpuKernel::kAvx512 || kernel == CpuKernel::kAvx2)) {
    // the packed weight is reused while the values are unchanged (inference)
    const auto panels = PanelCache::instance().get(values, l, kernel);
    const auto run = kernel == CpuKernel::kAvx512 ? core::avx512::forward_packed : core::avx2::forward_packed;
    run(l.view, *panels, x2.data_ptr<float>(), M, K, bias ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(), N,
        at::get_num_threads(), aten_parallel_for());
  } else if (M > 0) {
    const at::Tensor v = values.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tw_linear_cpu", [&] {
      core::tw_linear_forward<scalar_t>(l.view, x2.data_ptr<scalar_t>(), M, K, v.data_ptr<scalar_t>(),
                                        bias ? b.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), N,
                                        at::get_num_threads(), AtenGemm<scalar_t>{x.options()}, AtenParallelFor{});
    });
  }
  return out;
}

at::Tensor tw_linear_grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& cols,
                                    const at::Tensor& row_offsets, const at::Tensor& rows, int64_t in_features,
                                    int64_t tile) {
  TORCH_CHECK_VALUE(grad_out.dim() >= 1, "grad_out must have at least 1 dimension, got a scalar");
  TS_CHECK_FLOATING(grad_out);
  const int64_t N = grad_out.size(-1), K = in_features;
  TORCH_CHECK_VALUE(cols.numel() <= N, "grad_out must have at least as many features (last dimension, got ", N,
                    ") as the layout keeps output features (", cols.numel(), ")");
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, grad_out.device(), true);
  check_values(values, grad_out, l);
  if (is_16bit(grad_out.scalar_type())) {
    // a feature's gradient is a sum over the tiles that keep it: in fp32, rounded once (as torch's 16-bit
    // matmul), through the fp32 kernels; summed in 16 bits it would be rounded once per tile
    return tw_linear_grad_input_cpu(grad_out.to(at::kFloat), values.to(at::kFloat), cols, row_offsets, rows,
                                    in_features, tile)
        .to(grad_out.scalar_type());
  }
  const CpuKernel kernel = kernel_for(grad_out.scalar_type());
  const int64_t M = leading_rows(grad_out);
  const at::Tensor gy = grad_out.reshape({M, N}).contiguous();
  at::Tensor out = at::empty(with_last(grad_out.sizes(), K), grad_out.options());
  at::Tensor gx = out.view({M, K});
  if (N == 0 || l.view.num_cols == 0) {
    gx.zero_();
  } else if (keeps_everything(l, N, K)) {
    at::mm_out(gx, gy, values.view({N, K}));
  } else if (M > 0 && K > 0 && kernel == CpuKernel::kAvx512) {
    core::avx512::grad_input(l.view, gy.data_ptr<float>(), M, N, values.contiguous().data_ptr<float>(),
                             gx.data_ptr<float>(), K, at::get_num_threads(), aten_parallel_for());
  } else if (M > 0 && K > 0 && kernel == CpuKernel::kAvx2) {
    core::avx2::grad_input(l.view, gy.data_ptr<float>(), M, N, values.contiguous().data_ptr<float>(),
                           gx.data_ptr<float>(), K, at::get_num_threads(), aten_parallel_for());
  } else if (M > 0 && K > 0) {
    const at::Tensor v = values.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "tw_linear_grad_input_cpu", [&] {
      core::tw_linear_grad_input<scalar_t>(l.view, gy.data_ptr<scalar_t>(), M, N, v.data_ptr<scalar_t>(),
                                           gx.data_ptr<scalar_t>(), K, at::get_num_threads(),
                                           AtenGemm<scalar_t>{gy.options()}, AtenParallelFor{});
    });
  }
  return out;
}

at::Tensor tw_linear_grad_values_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& cols,
                                     const at::Tensor& row_offsets, const at::Tensor& rows, int64_t tile,
                                     int64_t num_values) {
  check_grad_values_inputs(grad_out, x);
  const int64_t N = grad_out.size(-1), K = x.size(-1);
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, grad_out.device(), true);
  TORCH_CHECK_VALUE(num_values == core::num_values(l.view), "num_values must be ", core::num_values(l.view),
                    " for this layout, got ", num_values);
  if (is_16bit(grad_out.scalar_type())) {
    // a sum over M, split over M-blocks and workers: in fp32, rounded once, through the fp32 kernels
    return tw_linear_grad_values_cpu(grad_out.to(at::kFloat), x.to(at::kFloat), cols, row_offsets, rows, tile,
                                     num_values)
        .to(grad_out.scalar_type());
  }
  const CpuKernel kernel = kernel_for(grad_out.scalar_type());
  const int64_t M = leading_rows(grad_out);
  const at::Tensor gy = grad_out.reshape({M, N}).contiguous();
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  at::Tensor gv = at::empty({num_values}, grad_out.options());
  if (num_values > 0 && keeps_everything(l, N, K)) {
    at::Tensor gw = gv.view({N, K});
    at::mm_out(gw, gy.t(), x2);
  } else if (num_values > 0 && kernel == CpuKernel::kAvx512) {
    core::avx512::grad_values(l.view, gy.data_ptr<float>(), x2.data_ptr<float>(), M, N, K, gv.data_ptr<float>(),
                              at::get_num_threads(), aten_parallel_for());
  } else if (num_values > 0 && kernel == CpuKernel::kAvx2) {
    core::avx2::grad_values(l.view, gy.data_ptr<float>(), x2.data_ptr<float>(), M, N, K, gv.data_ptr<float>(),
                            at::get_num_threads(), aten_parallel_for());
  } else if (num_values > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "tw_linear_grad_values_cpu", [&] {
      core::tw_linear_grad_values<scalar_t>(l.view, gy.data_ptr<scalar_t>(), x2.data_ptr<scalar_t>(), M, N, K,
                                            gv.data_ptr<scalar_t>(), at::get_num_threads(),
                                            AtenGemm<scalar_t>{gy.options()}, AtenParallelFor{});
    });
  }
  return gv;
}

std::string cpu_kernel_op() { return kernel_name(selected_kernel()); }

std::vector<std::string> cpu_kernels_supported_op() { return supported_kernels(); }

void cpu_panel_cache_clear_op() { PanelCache::instance().clear(); }

std::vector<int64_t> cpu_panel_cache_stats_op() { return PanelCache::instance().stats(); }

}  // namespace

// Introspection of the CPU path (no tensors: registered with their kernels).
TORCH_LIBRARY_FRAGMENT(tilesparse, m) {
  // The kernel float32 tw_linear runs on this CPU now (TILESPARSE_CPU_KERNEL applied).
  m.def("cpu_kernel() -> str", &cpu_kernel_op);
  // The kernels this CPU and build can run, widest first.
  m.def("cpu_kernels_supported() -> str[]", &cpu_kernels_supported_op);
  // The inference cache of packed forward panels: drop every entry; [entries, bytes, hits, misses].
  m.def("cpu_panel_cache_clear() -> ()", &cpu_panel_cache_clear_op);
  m.def("cpu_panel_cache_stats() -> int[]", &cpu_panel_cache_stats_op);
}

TORCH_LIBRARY_IMPL(tilesparse, CPU, m) {
  m.impl("tw_linear", &tw_linear_cpu);
  m.impl("tw_linear_grad_input", &tw_linear_grad_input_cpu);
  m.impl("tw_linear_grad_values", &tw_linear_grad_values_cpu);
}

}  // namespace tilesparse
