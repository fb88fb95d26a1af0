// The Host twins of the CUDA reductions (ops/column_reduce.hpp): the two-stage column sums
// (plain and per sequence) against fp64 sums and against an independent loop over the
// documented order (bit for bit), repeatability across calls and thread counts, sizes that cross
// the tile, stripe and warp boundaries, and the ops' twins (LayerNorm dw/dshift/dscale, the gate
// gradient, the sorted embedding backward) against the Host ops.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
using mdlm::testing::random_vector;

namespace {

// The documented order, written as plainly as possible: per (segment, column), row blocks of
// kReduceTileRows, in each kReduceWarps interleaved lane sums added in warp order, the blocks'
// partials added in block order.
template <class Acc, class F>
std::vector<Acc> two_stage_reference(std::int64_t segments, std::int64_t segment_rows, std::int64_t cols, F term) {
  std::vector<Acc> out(static_cast<std::size_t>(segments * cols));
  for (std::int64_t s = 0; s < segments; ++s) {
    for (std::int64_t c = 0; c < cols; ++c) {
      Acc total = 0;
      for (std::int64_t r0 = 0; r0 < segment_rows; r0 += kReduceTileRows) {
        Acc lane[kReduceWarps];
        for (int w = 0; w < kReduceWarps; ++w) {
          lane[w] = 0;
          for (std::int64_t i = r0 + w; i < std::min(r0 + kReduceTileRows, segment_rows); i += kReduceWarps) {
            lane[w] = reduce_add(lane[w], term(s * segment_rows + i, c));
          }
        }
        Acc p = lane[0];
        for (int w = 1; w < kReduceWarps; ++w) p = reduce_add(p, lane[w]);
        total = r0 == 0 ? p : reduce_add(total, p);
      }
      out[static_cast<std::size_t>(s * cols + c)] = total;
    }
  }
  return out;
}

// max |a - b| / max |b| (relative to the tensor's largest magnitude).
double max_rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return err / (scale > 0 ? scale : 1.0);
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

struct Size {
  std::int64_t rows, cols;
};
// 1 row; fewer rows than warps; a tile exactly; one past; several tiles with a ragged end;
// columns below, at and across a stripe of 32.
const Size kSizes[] = {{1, 1},    {1, 37},   {3, 5},    {7, 33},    {8, 32},   {255, 64},
                       {256, 32}, {257, 65}, {513, 31}, {1000, 95}, {2049, 3}, {777, 128}};

}  // namespace

TEST_CASE("column reduction shapes: row blocks, stripes and partials") {
  const auto p = ColumnReduceShape::plain(257, 65);
  CHECK(p.segments == 1);
  CHECK(p.rows() == 257);
  CHECK(p.row_blocks() == 2);
  CHECK(p.stripes() == 3);
  CHECK(p.partials() == 2 * 65);
  const auto q = ColumnReduceShape::per_sequence(4 * 300, 10, 300);
  CHECK(q.segments == 4);
  CHECK(q.row_blocks() == 2);
  CHECK(q.partials() == 4 * 2 * 10);
  CHECK(ColumnReduceShape::plain(0, 5).row_blocks() == 0);
  CHECK_THROWS_AS(ColumnReduceShape::per_sequence(10, 4, 3), Error);
  CHECK_THROWS_AS(ColumnReduceShape::per_sequence(10, 4, 0), Error);
  CHECK(column_reduce_scratch(Host{}, p) == 0);  // the Host's column sums need no scratch
}

TEST_CASE("column_sum twin: fp64 sums within tolerance, the documented order bit for bit, every odd size") {
  Host host{};
  for (const Size& z : kSizes) {
    CAPTURE(z.rows);
    CAPTURE(z.cols);
    const auto xd =
        random_vector<double>(static_cast<std::size_t>(z.rows * z.cols), 11 + static_cast<std::uint64_t>(z.rows));
    const std::vector<float> xf = cast_vector<float>(xd);
    std::vector<double> want(static_cast<std::size_t>(z.cols), 0.0), mag(static_cast<std::size_t>(z.cols), 0.0);
    for (std::int64_t r = 0; r < z.rows; ++r) {
      for (std::int64_t c = 0; c < z.cols; ++c) {
        want[static_cast<std::size_t>(c)] += static_cast<double>(xf[static_cast<std::size_t>(r * z.cols + c)]);
        mag[static_cast<std::size_t>(c)] += std::abs(static_cast<double>(xf[static_cast<std::size_t>(r * z.cols + c)]));
      }
    }
    // fp32, written.
    std::vector<float> got(static_cast<std::size_t>(z.cols), 123.0f);
    column_sum(host, MatrixView<const float, Host>(xf.data(), z.rows, z.cols), got.data(), false);
    double worst = 0;
    for (std::int64_t c = 0; c < z.cols; ++c) {
      const std::size_t k = static_cast<std::size_t>(c);
      worst = std::max(worst, std::abs(static_cast<double>(got[k]) - want[k]) / (mag[k] + 1e-30));
    }
    CHECK(worst < 1e-6);
    const auto ref = two_stage_reference<float>(1, z.rows, z.cols, [&](std::int64_t r, std::int64_t c) {
      return xf[static_cast<std::size_t>(r * z.cols + c)];
    });
    CHECK(same_bits(got, ref));
    // The same bits on every call and every thread count.
    for (int threads : {1, 2, 3}) {
      std::vector<float> again(static_cast<std::size_t>(z.cols), -1.0f);
      column_sum(Host{threads}, MatrixView<const float, Host>(xf.data(), z.rows, z.cols), again.data(), false);
      CHECK(same_bits(again, got));
    }
    // Accumulating: dst + sum, rounded once.
    std::vector<float> acc(static_cast<std::size_t>(z.cols), 0.5f);
    column_sum(host, MatrixView<const float, Host>(xf.data(), z.rows, z.cols), acc.data(), true);
    std::int64_t bad = 0;
    for (std::size_t k = 0; k < acc.size(); ++k) bad += acc[k] != 0.5f + ref[k];
    CHECK(bad == 0);
    // fp64 inputs and sums.
    std::vector<double> gd(static_cast<std::size_t>(z.cols), 0.0);
    column_sum(host, MatrixView<const double, Host>(xd.data(), z.rows, z.cols), gd.data(), false);
    double worst_d = 0;
    for (std::int64_t c = 0; c < z.cols; ++c) {
      double w = 0, m = 0;
      for (std::int64_t r = 0; r < z.rows; ++r) {
        w += xd[static_cast<std::size_t>(r * z.cols + c)];
        m += std::abs(xd[static_cast<std::size_t>(r * z.cols + c)]);
      }
      worst_d = std::max(worst_d, std::abs(gd[static_cast<std::size_t>(c)] - w) / (m + 1e-300));
    }
    CHECK(worst_d < 1e-14);
    // bf16 inputs accumulate in fp32 into an fp32 gradient (bf16-mixed bias gradients).
    const std::vector<bf16> xb = cast_vector<bf16>(xd);
    std::vector<float> gb(static_cast<std::size_t>(z.cols), 0.0f);
    column_sum(host, MatrixView<const bf16, Host>(xb.data(), z.rows, z.cols), gb.data(), false);
    const auto refb = two_stage_reference<float>(1, z.rows, z.cols, [&](std::int64_t r, std::int64_t c) {
      return to_compute(xb[static_cast<std::size_t>(r * z.cols + c)]);
    });
    CHECK(same_bits(gb, refb));
  }
}

TEST_CASE("column_sum_per_sequence twin: per-sequence fp64 sums, documented order, strided output") {
  Host host{};
  for (std::int64_t seq : {1, 7, 256, 300}) {
    for (std::int64_t batches : {1, 3}) {
      for (std::int64_t cols : {1, 33, 64}) {
        CAPTURE(seq);
        CAPTURE(batches);
        CAPTURE(cols);
        const std::int64_t rows = seq * batches;
        const auto x = cast_vector<float>(random_vector<double>(static_cast<std::size_t>(rows * cols), 5));
        const std::int64_t ld = cols + 3;  // a column slice of a wider matrix (the adaLN chunks)
        std::vector<float> out(static_cast<std::size_t>(batches * ld), 9.0f);
        column_sum_per_sequence(host, MatrixView<const float, Host>(x.data(), rows, cols), seq,
                                MatrixView<float, Host>(out.data(), batches, cols, ld), false);
        const auto ref = two_stage_reference<float>(batches, seq, cols, [&](std::int64_t r, std::int64_t c) {
          return x[static_cast<std::size_t>(r * cols + c)];
        });
        std::int64_t mismatches = 0;
        double worst = 0;
        for (std::int64_t b = 0; b < batches; ++b) {
          for (std::int64_t c = 0; c < cols; ++c) {
            const float g = out[static_cast<std::size_t>(b * ld + c)];
            mismatches += g != ref[static_cast<std::size_t>(b * cols + c)];
            double w = 0, m = 0;
            for (std::int64_t t = 0; t < seq; ++t) {
              w += x[static_cast<std::size_t>((b * seq + t) * cols + c)];
              m += std::abs(static_cast<double>(x[static_cast<std::size_t>((b * seq + t) * cols + c)]));
            }
            worst = std::max(worst, std::abs(static_cast<double>(g) - w) / (m + 1e-30));
          }
          for (std::int64_t c = cols; c < ld; ++c)
            CHECK(out[static_cast<std::size_t>(b * ld + c)] == 9.0f);  // untouched
        }
        CHECK(mismatches == 0);
        CHECK(worst < 1e-6);
      }
    }
  }
}

TEST_CASE("column reduction of zero rows writes zeros (or adds nothing)") {
  Host host{};
  std::vector<float> x;
  std::vector<float> out(5, 2.0f);
  column_sum(host, MatrixView<const float, Host>(x.data(), 0, 5), out.data(), true);
  for (float v : out) CHECK(v == 2.0f);
  column_sum(host, MatrixView<const float, Host>(x.data(), 0, 5), out.data(), false);
  for (float v : out) CHECK(v == 0.0f);
}

TEST_CASE("LayerNorm parameter-gradient twin matches the Host backward (fp32 and fp64), and repeats bit for bit") {
  Host host{};
  auto run = [&]<class T>(T, double tol) {
    for (bool modulated : {false, true}) {
      for (std::int64_t seq : {5, 300}) {
        const std::int64_t batches = 2, rows = batches * seq, cols = 37;
        CAPTURE(modulated);
        CAPTURE(seq);
        const auto x = cast_vector<T>(random_vector<double>(static_cast<std::size_t>(rows * cols), 1));
        const auto dh = cast_vector<T>(random_vector<double>(static_cast<std::size_t>(rows * cols), 2));
        const auto w = cast_vector<T>(random_vector<double>(static_cast<std::size_t>(cols), 3));
        const auto sc = cast_vector<T>(random_vector<double>(static_cast<std::size_t>(batches * cols), 4));
        const auto sh = cast_vector<T>(random_vector<double>(static_cast<std::size_t>(batches * cols), 6));
        std::vector<T> h(static_cast<std::size_t>(rows * cols)), mean(static_cast<std::size_t>(rows)),
            rstd(static_cast<std::size_t>(rows));
        MatrixView<const T, Host> scale, shift;
        if (modulated) {
          scale = MatrixView<const T, Host>(sc.data(), batches, cols);
          shift = MatrixView<const T, Host>(sh.data(), batches, cols);
        }
        const MatrixView<const T, Host> xv(x.data(), rows, cols), dhv(dh.data(), rows, cols);
        layernorm_modulate_forward(host, xv, w.data(), shift, scale, seq, 1e-5,
                                   MatrixView<T, Host>(h.data(), rows, cols), mean.data(), rstd.data());
        std::vector<T> dx(static_cast<std::size_t>(rows * cols)), dw(static_cast<std::size_t>(cols), T(0.25)),
            dshift(static_cast<std::size_t>(batches * cols)), dscale(static_cast<std::size_t>(batches * cols));
        layernorm_modulate_backward(host, dhv, xv, w.data(), scale, seq, mean.data(), rstd.data(),
                                    MatrixView<T, Host>(dx.data(), rows, cols), false, dw.data(),
                                    MatrixView<T, Host>(dshift.data(), batches, cols),
                                    MatrixView<T, Host>(dscale.data(), batches, cols), false);
        std::vector<T> tw(static_cast<std::size_t>(cols), T(0.25)), tshift(dshift.size(), T(0)),
            tscale(dscale.size(), T(0));
        layernorm_param_grads_twin(host, dhv, xv, w.data(), scale, seq, mean.data(), rstd.data(), tw.data(),
                                   MatrixView<T, Host>(tshift.data(), batches, cols),
                                   MatrixView<T, Host>(tscale.data(), batches, cols), false);
        CHECK(max_rel_err(cast_vector<double>(tw), cast_vector<double>(dw)) < tol);
        if (modulated) {
          CHECK(max_rel_err(cast_vector<double>(tshift), cast_vector<double>(dshift)) < tol);
          CHECK(max_rel_err(cast_vector<double>(tscale), cast_vector<double>(dscale)) < tol);
        }
        std::vector<T> tw2(static_cast<std::size_t>(cols), T(0.25)), tshift2(dshift.size()), tscale2(dscale.size());
        layernorm_param_grads_twin(Host{1}, dhv, xv, w.data(), scale, seq, mean.data(), rstd.data(), tw2.data(),
                                   MatrixView<T, Host>(tshift2.data(), batches, cols),
                                   MatrixView<T, Host>(tscale2.data(), batches, cols), false);
        CHECK(same_bits(tw, tw2));
        if (modulated) {
          CHECK(same_bits(tshift, tshift2));
          CHECK(same_bits(tscale, tscale2));
          // dscale in the documented order, term by term (dh * xhat * w with the saved statistics).
          const auto ref = two_stage_reference<T>(batches, seq, cols, [&](std::int64_t r, std::int64_t c) {
            const std::size_t i = static_cast<std::size_t>(r * cols + c);
            return dh[i] * (x[i] - mean[static_cast<std::size_t>(r)]) * rstd[static_cast<std::size_t>(r)] *
                   w[static_cast<std::size_t>(c)];
          });
          CHECK(same_bits(tscale, ref));
        }
      }
    }
  };
  run(float{}, 2e-5);
  run(double{}, 1e-12);
}

TEST_CASE("gate-gradient twin matches the Host gated residual backward (dropout on), written and accumulated") {
  Host host{};
  for (std::int64_t seq : {3, 260}) {
    const std::int64_t batches = 3, rows = batches * seq, cols = 45;
    CAPTURE(seq);
    DropoutSite drop;
    drop.p = 0.25f;
    drop.rng = Philox{7};
    drop.step = 2;
    drop.offset = 13;
    const auto dout = cast_vector<float>(random_vector<double>(static_cast<std::size_t>(rows * cols), 1));
    const auto y = cast_vector<float>(random_vector<double>(static_cast<std::size_t>(rows * cols), 2));
    const auto gate = cast_vector<float>(random_vector<double>(static_cast<std::size_t>(batches * cols), 3));
    const MatrixView<const float, Host> dv(dout.data(), rows, cols), yv(y.data(), rows, cols),
        gv(gate.data(), batches, cols);
    for (bool acc : {false, true}) {
      std::vector<float> dgate(static_cast<std::size_t>(batches * cols), 0.5f), twin = dgate;
      gated_residual_backward(host, dv, yv, gv, seq, drop, MatrixView<float, Host>{}, false, MatrixView<float, Host>{},
                              false, MatrixView<float, Host>(dgate.data(), batches, cols), acc);
      gated_residual_dgate_twin(host, dv, yv, seq, drop, MatrixView<float, Host>(twin.data(), batches, cols), acc);
      CHECK(max_rel_err(cast_vector<double>(twin), cast_vector<double>(dgate)) < 2e-5);
      const auto ref = two_stage_reference<float>(batches, seq, cols, [&](std::int64_t r, std::int64_t c) {
        const std::size_t i = static_cast<std::size_t>(r * cols + c);
        return drop.keep(static_cast<std::uint64_t>(i)) ? dout[i] * y[i] * drop.scale<float>() : 0.0f;
      });
      std::int64_t bad = 0;
      for (std::size_t i = 0; i < ref.size(); ++i) bad += twin[i] != (acc ? 0.5f + ref[i] : ref[i]);
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("sorted embedding backward (the CUDA algorithm) gives the Host embedding backward's bits") {
  Host host{};
  const std::int64_t vocab = 23, n = 700, cols = 41;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * i * 7 + i / 3) % 19);
  ids[5] = 22;                                                                    // a run of one
  for (std::int64_t i = 100; i < 400; ++i) ids[static_cast<std::size_t>(i)] = 3;  // a long run (the mask token)
  const auto dd = random_vector<double>(static_cast<std::size_t>(n * cols), 8);
  auto check = [&]<class T, class G>(T, G) {
    const auto dout = cast_vector<T>(dd);
    const auto start = cast_vector<G>(random_vector<double>(static_cast<std::size_t>(vocab * cols), 9));
    std::vector<G> want = start, got = start;
    embedding_backward(host, ids.data(), MatrixView<const T, Host>(dout.data(), n, cols),
                       MatrixView<G, Host>(want.data(), vocab, cols));
    embedding_backward_sorted(host, ids.data(), MatrixView<const T, Host>(dout.data(), n, cols),
                              MatrixView<G, Host>(got.data(), vocab, cols));
    CHECK(same_bits(got, want));
    std::vector<G> again = start;
    embedding_backward_sorted(Host{1}, ids.data(), MatrixView<const T, Host>(dout.data(), n, cols),
                              MatrixView<G, Host>(again.data(), vocab, cols));
    CHECK(same_bits(again, got));
  };
  check(float{}, float{});
  check(double{}, double{});
  check(bf16{}, float{});
  // No rows: nothing changes.
  std::vector<float> table(static_cast<std::size_t>(vocab * cols), 1.0f);
  embedding_backward_sorted(host, ids.data(), MatrixView<const float, Host>(nullptr, 0, cols),
                            MatrixView<float, Host>(table.data(), vocab, cols));
  for (float v : table) CHECK(v == 1.0f);
}
