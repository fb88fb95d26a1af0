#pragma once
// Deterministic two-stage column reductions: out[s, c] = sum over the rows r of segment s of
// term(r, c). The CUDA kernels (ops/cuda/column_reduce.cuh) and their Host twin here run one
// algorithm, so for fp32 the twin gives the kernels' exact bits:
//
//   rows are cut into segments of `segment_rows` (one segment: a plain column sum; a sequence
//   per segment: the adaLN dshift/dscale and gate sums), each segment into row blocks of
//   kReduceTileRows rows, columns into stripes of kReduceCols (a warp's width).
//   Stage 1, one thread block per (segment, row block, stripe), kReduceWarps warps of 32 lanes:
//     lane l of warp w sums term(r, c0 + l) over the block's rows r = w, w + kReduceWarps, ...
//     in ascending order, starting from 0 (coalesced: a warp reads 32 consecutive columns of
//     one row); then the kReduceWarps sums of a column are added in warp order (w = 0, 1, ...)
//     into partials[segment, row block][c].
//   Stage 2, one thread per (segment, column): the partials of the segment's row blocks added
//     in ascending order (from the first partial; no partial at all: 0), then handed to the sink
//     (written, or added to the destination).
//
// No atomics: the order of every addition is a function of the shape alone, so results repeat
// bit for bit on every run, thread count and GPU. Additions go through reduce_add(), which no
// compiler fuses with a product in the term into an FMA (nvcc contracts a * b + c by default,
// and so does GCC under -ffp-contract=fast): the rounding is the same on both sides. (The
// Host's compute threads flush denormals; a twin run that must match a GPU bit for bit on
// denormal data runs on a Host with flush_denormals = false.)
//
// Accumulators (Acc) are fp32 for fp32 and bf16 inputs and fp64 for fp64 (compute_t<T>).

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/config.hpp"
#include "mdlm/core/error.hpp"

namespace mdlm {

inline constexpr int kReduceCols = 32;                // columns per stripe: a warp's lanes
inline constexpr int kReduceWarps = 8;                // warps per block, interleaved over rows
inline constexpr std::int64_t kReduceTileRows = 256;  // rows per block of stage 1

// The shape of a (segmented) column reduction.
struct ColumnReduceShape {
  std::int64_t cols = 0;
  std::int64_t segments = 1;      // outputs per column
  std::int64_t segment_rows = 0;  // rows per segment (the input has segments * segment_rows rows)

  // All rows as one segment (a plain column sum).
  static ColumnReduceShape plain(std::int64_t rows, std::int64_t cols) { return {cols, 1, rows}; }
  // Rows grouped into sequences of seq_len rows, one output row per sequence.
  static ColumnReduceShape per_sequence(std::int64_t rows, std::int64_t cols, std::int64_t seq_len) {
    MDLM_CHECK(seq_len > 0 && rows % seq_len == 0, "column reduction: ", rows, " rows are not whole sequences of ",
               seq_len);
    return {cols, rows / seq_len, seq_len};
  }

  MDLM_HD std::int64_t rows() const { return segments * segment_rows; }
  // Row blocks of stage 1 per segment.
  MDLM_HD std::int64_t row_blocks() const { return (segment_rows + kReduceTileRows - 1) / kReduceTileRows; }
  MDLM_HD std::int64_t stripes() const { return (cols + kReduceCols - 1) / kReduceCols; }
  // Accumulator elements of the stage-1 partials (the CUDA kernels' scratch).
  MDLM_HD std::int64_t partials() const { return segments * row_blocks() * cols; }
};

// a + b, rounded once, never contracted with a product that produced b.
template <class Acc>
MDLM_HD inline Acc reduce_add(Acc a, Acc b) {
  static_assert(std::is_same_v<Acc, float> || std::is_same_v<Acc, double>,
                "column reductions accumulate in fp32 or fp64");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<Acc, float>)
    return __fadd_rn(a, b);
  else
    return __dadd_rn(a, b);
#else
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(b));  // b is a finished value in a register: no a + x * y -> fma(x, y, a)
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(b));
#else
  volatile Acc barrier = b;
  b = barrier;
#endif
  return a + b;
#endif
}

// Scratch memory of a reduction in backend memory (the CUDA stage-1 partials), from memory
// the caller already owns (the tape's arena, a workspace): the reductions never allocate.
template <class Acc, class B>
struct ReduceScratch {
  Acc* data = nullptr;
  std::int64_t size = 0;  // elements
};

// Accumulator elements of scratch a backend's reduction of `s` needs: the Host's column sums
// need none (the CUDA overload, in ops/cuda/column_reduce.cuh, is found by argument-dependent
// lookup).
inline std::int64_t column_reduce_scratch(const Host&, const ColumnReduceShape&) {
  return 0;
}

// ---- sinks: what stage 2 does with a finished sum ------------------------------------------

// dst[s * ld + c] = v, or dst[s * ld + c] += v (computed in Acc, stored as D).
template <class D>
struct ColumnSink {
  D* data = nullptr;
  std::int64_t ld = 0;
  bool accumulate = false;
  template <class Acc>
  MDLM_HD void operator()(std::int64_t s, std::int64_t c, Acc v) const {
    D& d = data[s * ld + c];
    d = accumulate ? from_compute<D>(static_cast<compute_t<D>>(reduce_add(static_cast<Acc>(to_compute(d)), v)))
                   : from_compute<D>(static_cast<compute_t<D>>(v));
  }
};

// ---- terms: what is summed ----------------------------------------------------------------

// term(r, c) = x[r, c]: the plain column sum (bias gradients).
template <class T, class Acc>
struct ColumnValue {
  const T* data = nullptr;
  std::int64_t ld = 0;
  MDLM_HD Acc operator()(std::int64_t r, std::int64_t c) const {
    return static_cast<Acc>(to_compute(data[r * ld + c]));
  }
};

// ---- the Host twin ------------------------------------------------------------------------

// The two stages on the Host, in the kernels' order: a task per (segment, stripe).
template <class Acc, class Term, class Sink>
void column_reduce(const Host& ctx, const ColumnReduceShape& s, const Term& term, const Sink& sink) {
  if (s.cols == 0 || s.segments == 0) return;
  const std::int64_t stripes = s.stripes(), blocks = s.row_blocks();
  ctx.parallel_for(s.segments * stripes, [&](std::int64_t task) {
    const std::int64_t seg = task / stripes, c0 = (task % stripes) * kReduceCols;
    const std::int64_t nc = std::min<std::int64_t>(kReduceCols, s.cols - c0);
    const std::int64_t first_row = seg * s.segment_rows;
    std::vector<Acc> partial(static_cast<std::size_t>(blocks * kReduceCols));
    for (std::int64_t rb = 0; rb < blocks; ++rb) {
      const std::int64_t r0 = rb * kReduceTileRows, r1 = std::min(r0 + kReduceTileRows, s.segment_rows);
      Acc lane[kReduceWarps][kReduceCols];
      for (int w = 0; w < kReduceWarps; ++w) {
        for (std::int64_t l = 0; l < nc; ++l) {
          Acc a = Acc(0);
          for (std::int64_t i = r0 + w; i < r1; i += kReduceWarps) a = reduce_add(a, term(first_row + i, c0 + l));
          lane[w][l] = a;
        }
      }
      for (std::int64_t l = 0; l < nc; ++l) {
        Acc p = lane[0][l];
        for (int w = 1; w < kReduceWarps; ++w) p = reduce_add(p, lane[w][l]);
        partial[static_cast<std::size_t>(rb * kReduceCols + l)] = p;
      }
    }
    for (std::int64_t l = 0; l < nc; ++l) {
      Acc v = blocks > 0 ? partial[static_cast<std::size_t>(l)] : Acc(0);
      for (std::int64_t rb = 1; rb < blocks; ++rb)
        v = reduce_add(v, partial[static_cast<std::size_t>(rb * kReduceCols + l)]);
      sink(seg, c0 + l, v);
    }
  });
}

// The plain column sum twin: dst[c] (+)= sum_r x[r, c] (bias gradients).
template <class T, class D>
void column_sum(const Host& ctx, MatrixView<const T, Host> x, D* dst, bool accumulate) {
  using Acc = compute_t<T>;
  column_reduce<Acc>(ctx, ColumnReduceShape::plain(x.rows, x.cols), ColumnValue<T, Acc>{x.data, x.ld},
                     ColumnSink<D>{dst, 0, accumulate});
}

// The segmented twin: dst[s, c] (+)= sum over the rows of sequence s of x[r, c].
template <class T, class D>
void column_sum_per_sequence(const Host& ctx, MatrixView<const T, Host> x, std::int64_t seq_len,
                             MatrixView<D, Host> dst, bool accumulate) {
  using Acc = compute_t<T>;
  column_reduce<Acc>(ctx, ColumnReduceShape::per_sequence(x.rows, x.cols, seq_len), ColumnValue<T, Acc>{x.data, x.ld},
                     ColumnSink<D>{dst.data, dst.ld, accumulate});
}

}  // namespace mdlm
