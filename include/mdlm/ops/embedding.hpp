#pragma once
// Token embedding lookup: out[r] = E[ids[r]].   ids (N), E (V, C), out (N, C)
// Backward: dE[ids[r]] += dout[r], summed in row order per column (deterministic).
// Ids are checked against V before any lookup (mdlm::Error names the position and value).
// CUDA backward (ops/cuda/elementwise.cuh): the (id, row) pairs sorted by id with a stable radix
// sort, then one block per run of equal ids adds its rows in row order: the Host's additions in
// the Host's order, so the same bits, without float atomics. embedding_backward_sorted is its
// Host twin.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/ops/column_reduce.hpp"

namespace mdlm {

// Host-side validation shared by every backend (ids always pass through the host first).
inline void check_token_ids(const std::int32_t* ids, std::int64_t n, std::int64_t vocab) {
  for (std::int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      MDLM_FAIL("token id ", ids[i], " at position ", i, " is out of range for vocabulary size ", vocab);
    }
  }
}

template <class T>
void embedding_forward(const Host& ctx, const std::int32_t* ids, MatrixView<const T, Host> table, MatrixView<T, Host> out) {
  ctx.parallel_for(out.rows, [&](std::int64_t r) {
    const T* src = table.data + static_cast<std::int64_t>(ids[r]) * table.ld;
    for (std::int64_t c = 0; c < out.cols; ++c) out.data[r * out.ld + c] = src[c];
  });
}

// Bytes of scratch a backend's embedding backward needs for n rows (the Host: none; the CUDA
// overload, found by argument-dependent lookup, sizes the sort).
inline std::size_t embedding_backward_scratch(const Host&, std::int64_t, std::int64_t) { return 0; }

template <class T, class G>
void embedding_backward(const Host& ctx, const std::int32_t* ids, MatrixView<const T, Host> dout, MatrixView<G, Host> dtable,
                        std::int64_t /*vocab*/ = 0, ReduceScratch<std::byte, Host> = {}) {
  ctx.parallel_for(dout.cols, [&](std::int64_t c) {
    for (std::int64_t r = 0; r < dout.rows; ++r) {
      dtable.data[static_cast<std::int64_t>(ids[r]) * dtable.ld + c] += static_cast<G>(dout.data[r * dout.ld + c]);
    }
  });
}

// Host twin of the CUDA backward: a stable sort of the rows by id, then per run of equal ids
// dtable[id, c] += dout[r, c] over the run's rows in row order (runs in parallel).
template <class T, class G>
void embedding_backward_sorted(const Host& ctx, const std::int32_t* ids, MatrixView<const T, Host> dout,
                               MatrixView<G, Host> dtable) {
  const std::int64_t n = dout.rows;
  std::vector<std::int32_t> rows(static_cast<std::size_t>(n));
  std::iota(rows.begin(), rows.end(), 0);
  std::stable_sort(rows.begin(), rows.end(), [&](std::int32_t a, std::int32_t b) { return ids[a] < ids[b]; });
  std::vector<std::int64_t> starts;  // first sorted position of each run, then n
  for (std::int64_t i = 0; i < n; ++i) {
    if (i == 0 || ids[rows[static_cast<std::size_t>(i)]] != ids[rows[static_cast<std::size_t>(i - 1)]]) starts.push_back(i);
  }
  starts.push_back(n);
  using Acc = compute_t<G>;
  ctx.parallel_for(static_cast<std::int64_t>(starts.size()) - 1, [&](std::int64_t run) {
    const std::int64_t i0 = starts[static_cast<std::size_t>(run)], i1 = starts[static_cast<std::size_t>(run + 1)];
    G* dst = dtable.data + static_cast<std::int64_t>(ids[rows[static_cast<std::size_t>(i0)]]) * dtable.ld;
    for (std::int64_t c = 0; c < dout.cols; ++c) {
      Acc v = to_compute(dst[c]);
      for (std::int64_t i = i0; i < i1; ++i) {
        const T g = dout.data[static_cast<std::int64_t>(rows[static_cast<std::size_t>(i)]) * dout.ld + c];
        v = reduce_add(v, to_compute(static_cast<G>(g)));
      }
      dst[c] = from_compute<G>(v);
    }
  });
}

template <class B, class T, class G = T>
struct EmbeddingOp {
  static constexpr const char* kName = "embedding";  // its profiling range
  using V = Var<T, B>;
  using P = Param<T, G, B>;
  struct Ctx {
    const std::int32_t* ids;  // backend memory, N entries
    P table;
    V out;
  };

  // `ids` lives in backend memory; `host_ids` (the same values) is used for validation. nullptr:
  // the ids were produced on the device by code that keeps them in range (a sampler step), and
  // reading them back would break CUDA-graph capture.
  static V forward(Tape<B, T, G>& tape, const std::int32_t* ids, const std::int32_t* host_ids, std::int64_t n, P table) {
    const auto range = tape.range(kName);
    if (host_ids != nullptr) check_token_ids(host_ids, n, table.rows());
    V out = tape.new_var(n, table.cols());
    embedding_forward(tape.backend(), ids, MatrixView<const T, B>(table.value), out.value);
    tape.template record<EmbeddingOp>(Ctx{ids, table, out});
    return out;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    if (ctx.table.grad.data == nullptr) return;
    const std::int64_t vocab = ctx.table.rows();
    const std::size_t bytes = embedding_backward_scratch(tape.backend(), dout.rows, vocab);
    std::byte* ws = bytes > 0 ? tape.template scratch<std::byte>(Shape{static_cast<std::int64_t>(bytes)}).data : nullptr;
    embedding_backward(tape.backend(), ctx.ids, MatrixView<const T, B>(dout), ctx.table.grad, vocab,
                       ReduceScratch<std::byte, B>{ws, static_cast<std::int64_t>(bytes)});
  }
};

}  // namespace mdlm
