#pragma once
// Row gather: out[i] = x[idx[i]] for a list of distinct rows; backward scatters the gradient
// back (rows not gathered get zero). Used to run the output head only on masked rows.
//   x (N, C), idx (M) distinct, out (M, C)

#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

template <class T>
void gather_rows(const Host& ctx, MatrixView<const T, Host> x, const std::int32_t* idx, MatrixView<T, Host> out) {
  ctx.parallel_for(out.rows, [&](std::int64_t i) {
    for (std::int64_t c = 0; c < out.cols; ++c) out.data[i * out.ld + c] = x.data[static_cast<std::int64_t>(idx[i]) * x.ld + c];
  });
}

// dx[idx[i]] += dout[i] (the rows are distinct, so there are no conflicting writes).
template <class T>
void scatter_add_rows(const Host& ctx, MatrixView<const T, Host> dout, const std::int32_t* idx, MatrixView<T, Host> dx) {
  ctx.parallel_for(dout.rows, [&](std::int64_t i) {
    T* d = dx.data + static_cast<std::int64_t>(idx[i]) * dx.ld;
    for (std::int64_t c = 0; c < dout.cols; ++c) d[c] = static_cast<T>(d[c] + dout.data[i * dout.ld + c]);
  });
}

template <class B, class T, class G = T>
struct GatherRowsOp {
  static constexpr const char* kName = "gather_rows";  // its profiling range
  using V = Var<T, B>;
  struct Ctx {
    V x, out;
    const std::int32_t* idx;
  };
  // idx: m distinct row indices in backend memory; host_idx: the same on the host (checked), or
  // nullptr where the rows were produced on the device by code that keeps them distinct and in
  // range (MaskedDiffusion::loss's partition on CUDA: reading them back would synchronize).
  static V forward(Tape<B, T, G>& tape, V x, const std::int32_t* idx, const std::int32_t* host_idx, std::int64_t m) {
    const auto range = tape.range(kName);
    for (std::int64_t i = 0; host_idx != nullptr && i < m; ++i) {
      MDLM_CHECK(host_idx[i] >= 0 && host_idx[i] < x.rows(), "gather: row ", host_idx[i], " at ", i, " is out of range for ",
                 x.rows(), " rows");
    }
    V out = tape.new_var(m, x.cols());
    if (m > 0) gather_rows(tape.backend(), MatrixView<const T, B>(x.value), idx, out.value);
    tape.template record<GatherRowsOp>(Ctx{x, out, idx});
    return out;
  }
  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    auto dx = tape.grad_in(ctx.x);
    if (!dx.needed) return;
    if (!dx.accumulate) fill_zero(tape.backend(), dx.grad);
    if (ctx.out.rows() > 0) scatter_add_rows(tape.backend(), MatrixView<const T, B>(dout), ctx.idx, dx.grad);
  }
};

}  // namespace mdlm
