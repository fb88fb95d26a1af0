#pragma once
// CUDA kernels of the deterministic two-stage column reduction (ops/column_reduce.hpp has the
// algorithm and its Host twin, which gives these kernels' bits for fp32):
//   stage 1: grid (segments x row blocks, stripes), block (32 lanes, kReduceWarps warps); lane l
//            of warp w sums the rows w, w + kReduceWarps, ... of its row block for column
//            c0 + l, the warps' sums meet in shared memory and warp 0 adds them in warp order
//            into partials[segment, row block][c];
//   stage 2: a thread per (segment, column) adds its row blocks' partials in order and hands
//            the sum to the sink.
// The partials live in scratch the caller owns (the tape's arena): nothing is allocated.

#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/ops/column_reduce.hpp"

namespace mdlm {
namespace cuda_kernels {

template <class Acc, class Term>
__global__ void __launch_bounds__(kReduceCols* kReduceWarps)
    column_reduce_partials(Term term, ColumnReduceShape s, Acc* partials) {
  __shared__ Acc lanes[kReduceWarps][kReduceCols];
  const int lane = static_cast<int>(threadIdx.x), warp = static_cast<int>(threadIdx.y);
  const std::int64_t blocks = s.row_blocks();
  const std::int64_t seg = blockIdx.x / blocks, rb = blockIdx.x % blocks;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.y) * kReduceCols + lane;
  const std::int64_t r0 = rb * kReduceTileRows;
  const std::int64_t r1 = r0 + kReduceTileRows < s.segment_rows ? r0 + kReduceTileRows : s.segment_rows;
  const std::int64_t first_row = seg * s.segment_rows;
  Acc a = Acc(0);
  if (c < s.cols) {
    for (std::int64_t i = r0 + warp; i < r1; i += kReduceWarps) a = reduce_add(a, term(first_row + i, c));
  }
  lanes[warp][lane] = a;
  __syncthreads();
  if (warp == 0 && c < s.cols) {
    Acc p = lanes[0][lane];
    for (int w = 1; w < kReduceWarps; ++w) p = reduce_add(p, lanes[w][lane]);
    partials[static_cast<std::int64_t>(blockIdx.x) * s.cols + c] = p;
  }
}

template <class Acc, class Sink>
__global__ void column_reduce_finish(const Acc* partials, ColumnReduceShape s, Sink sink) {
  const std::int64_t i = cuda_detail::global_index();
  if (i >= s.segments * s.cols) return;
  const std::int64_t seg = i / s.cols, c = i % s.cols, blocks = s.row_blocks();
  const Acc* p = partials + seg * blocks * s.cols + c;
  Acc v = blocks > 0 ? p[0] : Acc(0);
  for (std::int64_t rb = 1; rb < blocks; ++rb) v = reduce_add(v, p[rb * s.cols]);
  sink(seg, c, v);
}

}  // namespace cuda_kernels

// Launch configurations (checked on the CPU for every model shape: tests/cuda_host/).
namespace launches {
// Stage 1: grid.x = segments x row blocks, grid.y = column stripes; block 32 x kReduceWarps.
inline LaunchConfig column_reduce_partials(const ColumnReduceShape& s, std::size_t acc_bytes) {
  LaunchConfig c;
  c.kernel = "column_reduce_partials";
  const bool empty = s.cols == 0 || s.segments == 0 || s.segment_rows == 0;
  c.grid.x = empty ? 0 : s.segments * s.row_blocks();
  c.grid.y = empty ? 1 : s.stripes();
  c.block.x = kReduceCols;
  c.block.y = kReduceWarps;
  c.static_smem = acc_bytes * kReduceCols * kReduceWarps;
  c.warp_multiple = true;
  return c;
}
// Stage 2: one thread per (segment, column).
inline LaunchConfig column_reduce_finish(const ColumnReduceShape& s) {
  return launch_detail::one_thread_each("column_reduce_finish", s.segments * s.cols);
}
}  // namespace launches

// Scratch (accumulator elements) of a CUDA column reduction: the stage-1 partials.
inline std::int64_t column_reduce_scratch(const Cuda&, const ColumnReduceShape& s) {
  return s.partials();
}

// sink(s, c, sum over the rows r of segment s of term(r, c)) for every segment and column.
// Term: Acc operator()(int64 r, int64 c) const; Sink: void operator()(int64 s, int64 c, Acc)
// const; both __host__ __device__, trivially copyable (kernel arguments).
template <class Acc, class Term, class Sink>
void column_reduce(Cuda& ctx, const ColumnReduceShape& s, const Term& term, const Sink& sink,
                   ReduceScratch<Acc, Cuda> scratch) {
  if (s.cols == 0 || s.segments == 0) return;
  MDLM_CHECK(scratch.size >= s.partials() && (s.partials() == 0 || scratch.data != nullptr),
             "column reduction: scratch of ", scratch.size, " elements, ", s.partials(), " needed (", s.segments,
             " segments x ", s.row_blocks(), " row blocks x ", s.cols, " columns)");
  launch(ctx, launches::column_reduce_partials(s, sizeof(Acc)), cuda_kernels::column_reduce_partials<Acc, Term>, term,
         s, scratch.data);
  launch(ctx, launches::column_reduce_finish(s), cuda_kernels::column_reduce_finish<Acc, Sink>,
         static_cast<const Acc*>(scratch.data), s, sink);
}

// dst[c] (+)= sum_r x[r, c]: bias gradients.
template <class T, class D>
void column_sum(Cuda& ctx, MatrixView<const T, Cuda> x, D* dst, bool accumulate,
                ReduceScratch<compute_t<T>, Cuda> scratch) {
  using Acc = compute_t<T>;
  column_reduce(ctx, ColumnReduceShape::plain(x.rows, x.cols), ColumnValue<T, Acc>{x.data, x.ld},
                ColumnSink<D>{dst, 0, accumulate}, scratch);
}

// dst[s, c] (+)= sum over the rows of sequence s of x[r, c].
template <class T, class D>
void column_sum_per_sequence(Cuda& ctx, MatrixView<const T, Cuda> x, std::int64_t seq_len, MatrixView<D, Cuda> dst,
                             bool accumulate, ReduceScratch<compute_t<T>, Cuda> scratch) {
  using Acc = compute_t<T>;
  column_reduce(ctx, ColumnReduceShape::per_sequence(x.rows, x.cols, seq_len), ColumnValue<T, Acc>{x.data, x.ld},
                ColumnSink<D>{dst.data, dst.ld, accumulate}, scratch);
}

}  // namespace mdlm
