#pragma once
// Token embedding lookup: out[r] = E[ids[r]].   ids (N), E (V, C), out (N, C)
// Backward: dE[ids[r]] += dout[r], summed in row order per column (deterministic).
// Ids are checked against V before any lookup (mdlm::Error names the position and value).

#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

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

template <class T, class G>
void embedding_backward(const Host& ctx, const std::int32_t* ids, MatrixView<const T, Host> dout, MatrixView<G, Host> dtable) {
  ctx.parallel_for(dout.cols, [&](std::int64_t c) {
    for (std::int64_t r = 0; r < dout.rows; ++r) {
      dtable.data[static_cast<std::int64_t>(ids[r]) * dtable.ld + c] += static_cast<G>(dout.data[r * dout.ld + c]);
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
    embedding_backward(tape.backend(), ctx.ids, MatrixView<const T, B>(dout), ctx.table.grad);
  }
};

}  // namespace mdlm
