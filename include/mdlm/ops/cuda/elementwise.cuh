#pragma once
// CUDA kernels of the elementwise and small-reduction ops: embedding, Linear's bias gradient
// and GELU backward, SiLU, the gated residual with dropout, RoPE, and the timestep embedding.
// Same contracts as the Host kernels in ops/*.hpp (see there for the math). Column sums (bias
// and gate gradients) are the two-stage reductions of ops/cuda/column_reduce.cuh; the embedding
// backward sorts (id, row) pairs with CUB and adds each run of equal ids in row order. No float
// atomics: every result is deterministic.

#include <cmath>
#include <cstdint>
#include <vector>

#include <cub/device/device_radix_sort.cuh>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/core/bf16.hpp"
#include "mdlm/ops/activation.hpp"
#include "mdlm/ops/cuda/column_reduce.cuh"
#include "mdlm/ops/embedding.hpp"
#include "mdlm/ops/gather.hpp"
#include "mdlm/ops/gelu.hpp"
#include "mdlm/ops/linear.hpp"
#include "mdlm/ops/residual.hpp"
#include "mdlm/ops/rope.hpp"
#include "mdlm/ops/timestep.hpp"

namespace mdlm {
namespace cuda_kernels {

using cuda_detail::global_index;
using cuda_detail::global_stride;

template <class T>
__device__ inline void store(T& dst, compute_t<T> v, bool accumulate) {
  dst = accumulate ? from_compute<T>(to_compute(dst) + v) : from_compute<T>(v);
}

template <class T>
__global__ void embedding_forward(const std::int32_t* ids, MatrixView<const T, Cuda> table, MatrixView<T, Cuda> out) {
  for (std::int64_t i = global_index(); i < out.rows * out.cols; i += global_stride()) {
    const std::int64_t r = i / out.cols, c = i % out.cols;
    out.data[r * out.ld + c] = table.data[static_cast<std::int64_t>(ids[r]) * table.ld + c];
  }
}
// rows[i] = i: the values the sort carries along with the ids.
template <class Index>
__global__ void iota_rows(Index* rows, std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += global_stride()) rows[i] = static_cast<Index>(i);
}

// One block per sorted position; the block at the first position of a run of equal ids adds the
// run's rows (in row order: the sort is stable) into dtable[id], a column per thread.
template <class T, class G>
__global__ void embedding_backward_runs(const std::uint32_t* sorted_ids, const std::int32_t* sorted_rows, std::int64_t n,
                                        MatrixView<const T, Cuda> dout, MatrixView<G, Cuda> dtable) {
  using Acc = compute_t<G>;
  const std::int64_t i0 = blockIdx.x;
  if (i0 >= n) return;
  const std::uint32_t id = sorted_ids[i0];
  if (i0 > 0 && sorted_ids[i0 - 1] == id) return;  // not the first of its run
  std::int64_t i1 = i0 + 1;
  while (i1 < n && sorted_ids[i1] == id) ++i1;
  G* dst = dtable.data + static_cast<std::int64_t>(id) * dtable.ld;
  for (std::int64_t c = threadIdx.x; c < dout.cols; c += blockDim.x) {
    Acc v = to_compute(dst[c]);
    for (std::int64_t i = i0; i < i1; ++i) {
      const T g = dout.data[static_cast<std::int64_t>(sorted_rows[i]) * dout.ld + c];
      v = reduce_add(v, to_compute(static_cast<G>(g)));
    }
    dst[c] = from_compute<G>(v);
  }
}

template <class T>
__global__ void gelu_backward(MatrixView<const T, Cuda> dy, MatrixView<const T, Cuda> pre, MatrixView<T, Cuda> d) {
  for (std::int64_t i = global_index(); i < dy.rows * dy.cols; i += global_stride()) {
    const std::int64_t r = i / dy.cols, c = i % dy.cols;
    d.data[r * d.ld + c] =
        from_compute<T>(to_compute(dy.data[r * dy.ld + c]) * gelu_tanh_grad(to_compute(pre.data[r * pre.ld + c])));
  }
}

template <class T>
__global__ void silu_forward(MatrixView<const T, Cuda> x, MatrixView<T, Cuda> y) {
  for (std::int64_t i = global_index(); i < x.rows * x.cols; i += global_stride()) {
    const std::int64_t r = i / x.cols, c = i % x.cols;
    const compute_t<T> v = to_compute(x.data[r * x.ld + c]);
    y.data[r * y.ld + c] = from_compute<T>(v / (compute_t<T>(1) + exp(-v)));
  }
}
template <class T>
__global__ void silu_backward(MatrixView<const T, Cuda> dy, MatrixView<const T, Cuda> x, MatrixView<T, Cuda> dx,
                              bool accumulate) {
  using C = compute_t<T>;
  for (std::int64_t i = global_index(); i < x.rows * x.cols; i += global_stride()) {
    const std::int64_t r = i / x.cols, c = i % x.cols;
    const C v = to_compute(x.data[r * x.ld + c]);
    const C s = C(1) / (C(1) + exp(-v));
    store(dx.data[r * dx.ld + c], to_compute(dy.data[r * dy.ld + c]) * s * (C(1) + v * (C(1) - s)), accumulate);
  }
}

template <class T>
__global__ void gated_residual_forward(MatrixView<const T, Cuda> x, MatrixView<const T, Cuda> y,
                                       MatrixView<const T, Cuda> gate, std::int64_t seq_len, DropoutSite drop,
                                       MatrixView<T, Cuda> out) {
  using C = compute_t<T>;
  for (std::int64_t i = global_index(); i < x.rows * x.cols; i += global_stride()) {
    const std::int64_t r = i / x.cols, c = i % x.cols;
    C v = drop.keep(static_cast<std::uint64_t>(i)) ? to_compute(y.data[r * y.ld + c]) * drop.template scale<C>() : C(0);
    if (gate.data != nullptr) v *= to_compute(gate.data[(r / seq_len) * gate.ld + c]);
    out.data[r * out.ld + c] = from_compute<T>(to_compute(x.data[r * x.ld + c]) + v);
  }
}
template <class T>
__global__ void gated_residual_backward(MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> gate,
                                        std::int64_t seq_len, DropoutSite drop, MatrixView<T, Cuda> dx, bool acc_dx,
                                        MatrixView<T, Cuda> dy, bool acc_dy) {
  using C = compute_t<T>;
  for (std::int64_t i = global_index(); i < dout.rows * dout.cols; i += global_stride()) {
    const std::int64_t r = i / dout.cols, c = i % dout.cols;
    const C g = to_compute(dout.data[r * dout.ld + c]);
    if (dx.data != nullptr) store(dx.data[r * dx.ld + c], g, acc_dx);
    if (dy.data != nullptr) {
      C v = drop.keep(static_cast<std::uint64_t>(i)) ? g * drop.template scale<C>() : C(0);
      if (gate.data != nullptr) v *= to_compute(gate.data[(r / seq_len) * gate.ld + c]);
      store(dy.data[r * dy.ld + c], v, acc_dy);
    }
  }
}
// RoPE from a table (issue 17): one thread per (position t, frequency i < D/2) computes the
// angle t * base^(-2i/D) in fp64 (positions reach 1e4 and more), then its cosine and sign * sine
// in the compute type, the Host's table (ops/rope.hpp) entry for entry; the rotation then reads
// the table instead of evaluating fp64 transcendentals for every row of every sequence.
template <class C>
__global__ void rope_table(std::int64_t positions, std::int64_t half, std::int64_t d, double base, int sign, C* table) {
  for (std::int64_t idx = global_index(); idx < positions * half; idx += global_stride()) {
    const std::int64_t t = idx / half, i = idx % half;
    const double inv_freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double angle = static_cast<double>(t) * inv_freq;
    table[2 * t * half + i] = static_cast<C>(cos(angle));
    table[2 * t * half + half + i] = static_cast<C>(sign * sin(angle));
  }
}
// One thread per (row, frequency i): the table's cosine and sine rotate the i-th pair of every
// q and k head of the row (2H pairs).
template <class T>
__global__ void rope_rotate(MatrixView<const T, Cuda> in, std::int64_t seq_len, std::int64_t heads,
                            const compute_t<T>* table, MatrixView<T, Cuda> out, bool accumulate) {
  using C = compute_t<T>;
  const std::int64_t cdim = in.cols / 3, d = cdim / heads, half = d / 2;
  for (std::int64_t idx = global_index(); idx < in.rows * half; idx += global_stride()) {
    const std::int64_t r = idx / half, i = idx % half;
    const C* row = table + 2 * (r % seq_len) * half;
    const C cs = row[i], sn = row[half + i];
    const T* src = in.data + r * in.ld;
    T* dst = out.data + r * out.ld;
    for (std::int64_t part = 0; part < 2 * heads; ++part) {  // q heads, then k heads
      const std::int64_t c = part * d + i;
      const C a = to_compute(src[c]), b = to_compute(src[c + half]);
      store(dst[c], a * cs - b * sn, accumulate);
      store(dst[c + half], b * cs + a * sn, accumulate);
    }
  }
}

// v passes through rope unchanged: copied (or accumulated) one element per thread.
template <class T>
__global__ void rope_copy_v(MatrixView<const T, Cuda> in, MatrixView<T, Cuda> out, bool accumulate) {
  const std::int64_t cdim = in.cols / 3;
  for (std::int64_t idx = global_index(); idx < in.rows * cdim; idx += global_stride()) {
    const std::int64_t r = idx / cdim, c = 2 * cdim + idx % cdim;
    store(out.data[r * out.ld + c], to_compute(in.data[r * in.ld + c]), accumulate);
  }
}

// emb[b] = [cos(sigma_b f_i), sin(sigma_b f_i)], f_i = exp(-ln(max_period) i / half): the Host formula.
template <class T>
__global__ void timestep_embedding(const float* sigma, std::int64_t batches, MatrixView<T, Cuda> out, double max_period) {
  const std::int64_t half = out.cols / 2;
  for (std::int64_t e = global_index(); e < batches * out.cols; e += global_stride()) {
    const std::int64_t b = e / out.cols, c = e % out.cols;
    T v = from_compute<T>(compute_t<T>(0));
    if (c < 2 * half) {
      const std::int64_t i = c < half ? c : c - half;
      const double f = exp(-log(max_period) * static_cast<double>(i) / static_cast<double>(half));
      const double s = sigma != nullptr ? static_cast<double>(to_compute(from_compute<T>(sigma[b]))) : 0.0;
      v = from_compute<T>(static_cast<compute_t<T>>(c < half ? cos(s * f) : sin(s * f)));
    }
    out.data[b * out.ld + c] = v;
  }
}

}  // namespace cuda_kernels

// Launch configurations (checked on the CPU for every model shape: tests/cuda_host/).
namespace launches {
using launch_detail::grid_stride;
using launch_detail::one_thread_each;
inline LaunchConfig embedding_forward(std::int64_t n) { return grid_stride("embedding_forward", n); }
inline constexpr std::int64_t kEmbeddingRunThreads = 256;
inline LaunchConfig embedding_iota_rows(std::int64_t n) { return grid_stride("iota_rows", n); }
// One block per sorted row (only the first of each run works), its threads over the columns.
inline LaunchConfig embedding_backward_runs(std::int64_t rows) {
  LaunchConfig c;
  c.kernel = "embedding_backward_runs";
  c.grid.x = rows < 0 ? 0 : rows;
  c.block.x = kEmbeddingRunThreads;
  return c;
}
inline LaunchConfig gelu_backward(std::int64_t n) { return grid_stride("gelu_backward", n); }
inline LaunchConfig silu_forward(std::int64_t n) { return grid_stride("silu_forward", n); }
inline LaunchConfig silu_backward(std::int64_t n) { return grid_stride("silu_backward", n); }
inline LaunchConfig gated_residual_forward(std::int64_t n) { return grid_stride("gated_residual_forward", n); }
inline LaunchConfig gated_residual_backward(std::int64_t n) { return grid_stride("gated_residual_backward", n); }
inline LaunchConfig rope_table(std::int64_t n) { return grid_stride("rope_table", n); }
inline LaunchConfig rope_rotate(std::int64_t n) { return grid_stride("rope_rotate", n); }
inline LaunchConfig rope_copy_v(std::int64_t n) { return grid_stride("rope_copy_v", n); }
inline LaunchConfig timestep_embedding(std::int64_t n) { return grid_stride("timestep_embedding", n); }
inline LaunchConfig gather_rows(std::int64_t n) { return grid_stride("gather_rows", n); }
inline LaunchConfig scatter_add_rows(std::int64_t n) { return grid_stride("scatter_add_rows", n); }
}  // namespace launches

// ---- backend entry points (found by the ops through argument-dependent lookup) ----------

template <class T>
void embedding_forward(Cuda& ctx, const std::int32_t* ids, MatrixView<const T, Cuda> table, MatrixView<T, Cuda> out) {
  launch(ctx, launches::embedding_forward(out.rows * out.cols), cuda_kernels::embedding_forward<T>, ids, table, out);
}
namespace cuda_detail {
// The embedding backward's scratch: sorted ids, the rows before and after the sort, and CUB's
// temporary storage, each at a 256-byte boundary.
struct EmbeddingSortLayout {
  std::size_t ids_out = 0, rows_in = 0, rows_out = 0, temp = 0, temp_bytes = 0, total = 0;
  int end_bit = 1;
};
inline std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }
// Bits of the largest id (vocab - 1): the sort looks at no more.
inline int id_bits(std::int64_t vocab) {
  int bits = 1;
  while (bits < 31 && (std::int64_t{1} << bits) < vocab) ++bits;
  return bits;
}
// Needs the device (CUB sizes its temporary storage for it); no launch, no synchronization.
inline EmbeddingSortLayout embedding_sort_layout(std::int64_t n, std::int64_t vocab) {
  MDLM_CHECK(n >= 0 && n <= 2147483647, "embedding backward: ", n, " rows exceed the sort's 32-bit row index");
  EmbeddingSortLayout l;
  l.end_bit = id_bits(vocab);
  const std::size_t arr = align256(static_cast<std::size_t>(n) * 4);
  l.ids_out = 0;
  l.rows_in = arr;
  l.rows_out = 2 * arr;
  l.temp = 3 * arr;
  std::size_t temp = 0;
  if (n > 0) {
    MDLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp, static_cast<const std::uint32_t*>(nullptr),
                                                    static_cast<std::uint32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), static_cast<int>(n), 0,
                                                    l.end_bit));
  }
  l.temp_bytes = temp;
  l.total = l.temp + align256(temp);
  return l;
}
}  // namespace cuda_detail

// Scratch bytes of the CUDA embedding backward for n rows of ids below `vocab`.
inline std::size_t embedding_backward_scratch(const Cuda&, std::int64_t n, std::int64_t vocab) {
  return cuda_detail::embedding_sort_layout(n, vocab).total;
}

// dtable[ids[r]] += dout[r]: ids (device, n = dout.rows, all in [0, vocab)) sorted with their
// row numbers by a stable radix sort, then each run of equal ids added in row order (the Host
// op's additions in its order). `scratch`: embedding_backward_scratch(ctx, n, vocab) bytes.
template <class T, class G>
void embedding_backward(Cuda& ctx, const std::int32_t* ids, MatrixView<const T, Cuda> dout, MatrixView<G, Cuda> dtable,
                        std::int64_t vocab, ReduceScratch<std::byte, Cuda> scratch) {
  const std::int64_t n = dout.rows;
  if (n == 0 || dout.cols == 0) return;
  MDLM_CHECK(vocab > 0 && vocab <= dtable.rows, "embedding backward: vocabulary ", vocab, " for a table of ",
             dtable.rows, " rows");
  const cuda_detail::EmbeddingSortLayout l = cuda_detail::embedding_sort_layout(n, vocab);
  MDLM_CHECK(scratch.data != nullptr && static_cast<std::size_t>(scratch.size) >= l.total,
             "embedding backward: scratch of ", scratch.size, " bytes, ", l.total, " needed for ", n, " rows");
  auto* ids_out = reinterpret_cast<std::uint32_t*>(scratch.data + l.ids_out);
  auto* rows_in = reinterpret_cast<std::int32_t*>(scratch.data + l.rows_in);
  auto* rows_out = reinterpret_cast<std::int32_t*>(scratch.data + l.rows_out);
  launch(ctx, launches::embedding_iota_rows(n), cuda_kernels::iota_rows<std::int32_t>, rows_in, n);
  std::size_t temp = l.temp_bytes;
  // Non-negative int32 ids have the bits of the same uint32 keys.
  MDLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(static_cast<void*>(scratch.data + l.temp), temp,
                                                  reinterpret_cast<const std::uint32_t*>(ids), ids_out,
                                                  static_cast<const std::int32_t*>(rows_in), rows_out,
                                                  static_cast<int>(n), 0, l.end_bit, ctx.stream()));
  MDLM_CUDA_CHECK_LAUNCH();
  launch(ctx, launches::embedding_backward_runs(n), cuda_kernels::embedding_backward_runs<T, G>,
         static_cast<const std::uint32_t*>(ids_out), static_cast<const std::int32_t*>(rows_out), n, dout, dtable);
}
template <class T, class G>
void bias_grad_accumulate(Cuda& ctx, MatrixView<const T, Cuda> dy, G* db, ReduceScratch<compute_t<T>, Cuda> scratch) {
  column_sum(ctx, dy, db, /*accumulate=*/true, scratch);
}
template <class T>
void gelu_backward(Cuda& ctx, MatrixView<const T, Cuda> dy, MatrixView<const T, Cuda> pre, MatrixView<T, Cuda> d) {
  launch(ctx, launches::gelu_backward(dy.rows * dy.cols), cuda_kernels::gelu_backward<T>, dy, pre, d);
}
template <class T>
void silu_forward(Cuda& ctx, MatrixView<const T, Cuda> x, MatrixView<T, Cuda> y) {
  launch(ctx, launches::silu_forward(x.rows * x.cols), cuda_kernels::silu_forward<T>, x, y);
}
template <class T>
void silu_backward(Cuda& ctx, MatrixView<const T, Cuda> dy, MatrixView<const T, Cuda> x, MatrixView<T, Cuda> dx,
                   bool accumulate) {
  launch(ctx, launches::silu_backward(x.rows * x.cols), cuda_kernels::silu_backward<T>, dy, x, dx, accumulate);
}
template <class T>
void gated_residual_forward(Cuda& ctx, MatrixView<const T, Cuda> x, MatrixView<const T, Cuda> y,
                            MatrixView<const T, Cuda> gate, std::int64_t seq_len, DropoutSite drop,
                            MatrixView<T, Cuda> out) {
  launch(ctx, launches::gated_residual_forward(x.rows * x.cols), cuda_kernels::gated_residual_forward<T>, x, y, gate, seq_len, drop, out);
}
template <class T>
void gated_residual_backward(Cuda& ctx, MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> y,
                             MatrixView<const T, Cuda> gate, std::int64_t seq_len, DropoutSite drop,
                             MatrixView<T, Cuda> dx, bool accumulate_dx, MatrixView<T, Cuda> dy, bool accumulate_dy,
                             MatrixView<T, Cuda> dgate, bool accumulate_dgate, ReduceScratch<compute_t<T>, Cuda> scratch) {
  launch(ctx, launches::gated_residual_backward(dout.rows * dout.cols), cuda_kernels::gated_residual_backward<T>, dout, gate, seq_len, drop, dx, accumulate_dx, dy, accumulate_dy);
  if (dgate.data != nullptr) {  // dgate[b] (+)= sum_t dout * drop(y): the per-sequence two-stage reduction
    using Acc = compute_t<T>;
    column_reduce(ctx, ColumnReduceShape::per_sequence(dout.rows, dout.cols, seq_len),
                  GateGradTerm<T, Acc>{dout.data, dout.ld, y.data, y.ld, dout.cols, drop},
                  ColumnSink<T>{dgate.data, dgate.ld, accumulate_dgate}, scratch);
  }
}
// `table`: scratch of rope_table_elements(...) compute-type values in device memory (the tape's).
template <class T>
void rope_apply(Cuda& ctx, MatrixView<const T, Cuda> in, std::int64_t seq_len, std::int64_t heads, double base, int sign,
                MatrixView<T, Cuda> out, bool accumulate, compute_t<T>* table) {
  const std::int64_t cdim = in.cols / 3, d = cdim / heads, half = d / 2, positions = std::min(seq_len, in.rows);
  MDLM_CHECK(table != nullptr || positions * half == 0, "rope: no table scratch");
  launch(ctx, launches::rope_table(positions * half), cuda_kernels::rope_table<compute_t<T>>, positions, half, d, base, sign,
         table);
  launch(ctx, launches::rope_rotate(in.rows * half), cuda_kernels::rope_rotate<T>, in, seq_len, heads,
         static_cast<const compute_t<T>*>(table), out, accumulate);
  launch(ctx, launches::rope_copy_v(in.rows * cdim), cuda_kernels::rope_copy_v<T>, in, out, accumulate);
}

// sigma (float, B values) in device memory, or nullptr for sigma = 0: no host round trip, so
// it can be captured in a CUDA graph. Same arithmetic as the Host version (fp64 cos/sin).
template <class T>
void timestep_embedding_resident(Cuda& ctx, const float* sigma, std::int64_t batches, MatrixView<T, Cuda> out,
                                 double max_period = 10000.0) {
  launch(ctx, launches::timestep_embedding(batches * out.cols), cuda_kernels::timestep_embedding<T>, sigma, batches, out, max_period);
}

// sigma is host memory (B values): the embedding is tiny, so it is computed on the host with
// the Host code and copied (pageable copy: returns after the data has been staged).
template <class T>
void timestep_embedding(Cuda& ctx, const T* sigma, std::int64_t batches, MatrixView<T, Cuda> out,
                        double max_period = 10000.0) {
  std::vector<compute_t<T>> sig(static_cast<std::size_t>(batches)), host(static_cast<std::size_t>(batches * out.cols));
  for (std::int64_t b = 0; b < batches; ++b) sig[static_cast<std::size_t>(b)] = to_compute(sigma[b]);
  timestep_embedding(Host{1}, sig.data(), batches, MatrixView<compute_t<T>, Host>(host.data(), batches, out.cols),
                     max_period);
  std::vector<T> conv(host.size());
  for (std::size_t i = 0; i < host.size(); ++i) conv[i] = from_compute<T>(host[i]);
  MDLM_CUDA_CHECK(cudaMemcpy2DAsync(out.data, static_cast<std::size_t>(out.ld) * sizeof(T), conv.data(),
                                    static_cast<std::size_t>(out.cols) * sizeof(T),
                                    static_cast<std::size_t>(out.cols) * sizeof(T), static_cast<std::size_t>(batches),
                                    cudaMemcpyHostToDevice, ctx.stream()));
  ctx.synchronize();  // `conv` dies at return
}

}  // namespace mdlm

namespace mdlm {
namespace cuda_kernels {
template <class T>
__global__ void gather_rows(MatrixView<const T, Cuda> x, const std::int32_t* idx, MatrixView<T, Cuda> out) {
  for (std::int64_t i = global_index(); i < out.rows * out.cols; i += global_stride()) {
    const std::int64_t r = i / out.cols, c = i % out.cols;
    out.data[r * out.ld + c] = x.data[static_cast<std::int64_t>(idx[r]) * x.ld + c];
  }
}
template <class T>
__global__ void scatter_add_rows(MatrixView<const T, Cuda> dout, const std::int32_t* idx, MatrixView<T, Cuda> dx) {
  for (std::int64_t i = global_index(); i < dout.rows * dout.cols; i += global_stride()) {
    const std::int64_t r = i / dout.cols, c = i % dout.cols;
    T& d = dx.data[static_cast<std::int64_t>(idx[r]) * dx.ld + c];
    d = from_compute<T>(to_compute(d) + to_compute(dout.data[r * dout.ld + c]));
  }
}
}  // namespace cuda_kernels

template <class T>
void gather_rows(Cuda& ctx, MatrixView<const T, Cuda> x, const std::int32_t* idx, MatrixView<T, Cuda> out) {
  launch(ctx, launches::gather_rows(out.rows * out.cols), cuda_kernels::gather_rows<T>, x, idx, out);
}
template <class T>
void scatter_add_rows(Cuda& ctx, MatrixView<const T, Cuda> dout, const std::int32_t* idx, MatrixView<T, Cuda> dx) {
  launch(ctx, launches::scatter_add_rows(dout.rows * dout.cols), cuda_kernels::scatter_add_rows<T>, dout, idx, dx);
}

}  // namespace mdlm
