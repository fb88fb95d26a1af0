// The Host's vectorized building blocks against their scalar definitions: lane-parallel Philox,
// dropout factors, the libm-free exp, fixed-order lane sums, and the column-blocked gradient
// reductions at sizes that cross their block and lane boundaries.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;
using mdlm::testing::random_vector;

TEST_CASE("philox_blocks gives Philox::block's words for 16 consecutive indices, across the 2^32 carry") {
  const Philox rng{0x0123456789abcdefULL};
  for (std::uint64_t first : {0ULL, 5ULL, 1000003ULL, (1ULL << 32) - 7, (1ULL << 40) + 3}) {
    std::uint32_t words[4][kPhiloxLanes];
    philox_blocks(rng, Purpose::Dropout, 17, first, words);
    for (int l = 0; l < kPhiloxLanes; ++l) {
      const U32x4 want = rng.block(Purpose::Dropout, 17, first + static_cast<std::uint64_t>(l));
      for (int w = 0; w < 4; ++w) CHECK(words[w][l] == want.v[w]);
    }
  }
}

TEST_CASE("dropout_factors equal keep() * scale for every offset alignment and length") {
  DropoutSite drop;
  drop.p = 0.3f;
  drop.rng = Philox{99};
  drop.step = 4;
  std::vector<float> f(300);
  std::int64_t mismatches = 0, kept = 0, total = 0;
  for (std::uint64_t offset : {0ULL, 1ULL, 2ULL, 3ULL, 61ULL, 64ULL, 4097ULL}) {
    drop.offset = offset;
    for (std::int64_t n : {1, 3, 4, 5, 63, 64, 65, 129, 300}) {
      for (std::uint64_t i : {0ULL, 1ULL, 7ULL}) {
        dropout_factors(drop, i, n, f.data());
        for (std::int64_t k = 0; k < n; ++k) {
          const float want = drop.keep(i + static_cast<std::uint64_t>(k)) ? drop.scale<float>() : 0.0f;
          mismatches += f[static_cast<std::size_t>(k)] != want;
          kept += want != 0.0f;
          ++total;
        }
      }
    }
  }
  CHECK(mismatches == 0);
  // About 70% kept (a broken draw giving all-keep or all-drop would match keep() only if keep() broke too).
  CHECK(std::abs(static_cast<double>(kept) / static_cast<double>(total) - 0.7) < 0.03);
  drop.p = 0.0f;
  dropout_factors(drop, 0, 10, f.data());
  for (int k = 0; k < 10; ++k) CHECK(f[static_cast<std::size_t>(k)] == 1.0f);
}

TEST_CASE("host_expf is within 2 ulp of exp over its range and saturates outside it") {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 1.0 / 1024 + 1e-7) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    const double rel = std::abs(static_cast<double>(host_expf(xf)) - want) / want;
    worst = std::max(worst, rel);
  }
  CAPTURE(worst);
  CHECK(worst < 2.5e-7);  // 2 ulp of fp32 is 2.4e-7 relative
  CHECK(host_expf(0.0f) == 1.0f);
  CHECK(host_expf(-200.0f) > 0.0f);
  CHECK(host_expf(-200.0f) < 2e-38f);
  CHECK(host_expf(200.0f) > 1e38f);
  CHECK(std::isfinite(host_expf(200.0f)));
  // GELU in fp32 through it: within fp32 rounding of the fp64 definition.
  double gworst = 0;
  for (double x = -12; x <= 12; x += 0.01) {
    gworst = std::max(gworst, std::abs(gelu_tanh(static_cast<float>(x)) - mdlm::testing::gelu_ref(static_cast<float>(x))));
  }
  CHECK(gworst < 4e-6);
}

TEST_CASE("host_lane_sum / host_lane_max: exact on integers, one fixed order, every tail length") {
  for (std::int64_t n : {0, 1, 15, 16, 17, 33, 100}) {
    const double s = host_lane_sum<double>(n, [](std::int64_t i) { return static_cast<double>(i + 1); });
    CHECK(s == static_cast<double>(n * (n + 1) / 2));
    const double m = host_lane_max<double>(n, [n](std::int64_t i) { return static_cast<double>((i * 7) % (n + 3)); });
    double want = -std::numeric_limits<double>::infinity();
    for (std::int64_t i = 0; i < n; ++i) want = std::max(want, static_cast<double>((i * 7) % (n + 3)));
    CHECK(m == want);
  }
  // The order is lanes first, then lane totals in lane order: reproduce it by hand.
  auto v = random_vector<float>(37, 3);
  float acc[kHostLanes] = {};
  for (std::size_t i = 0; i < v.size(); ++i) acc[i % kHostLanes] += v[i];
  float want = 0;
  for (float a : acc) want += a;
  CHECK(host_lane_sum<float>(37, [&](std::int64_t i) { return v[static_cast<std::size_t>(i)]; }) == want);
}

TEST_CASE("column-blocked gradient sums equal plain column sums (bias grad, GEMM bias_grad epilogue, LayerNorm)") {
  Host host;
  const std::int64_t rows = 37, cols = 150;  // three column blocks of 64, the last partial
  auto dy = random_vector<double>(static_cast<std::size_t>(rows * cols), 8);
  std::vector<double> want(static_cast<std::size_t>(cols), 0.0);
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t i = 0; i < rows; ++i) want[static_cast<std::size_t>(j)] += dy[static_cast<std::size_t>(i * cols + j)];

  std::vector<double> db(static_cast<std::size_t>(cols), 1.0);
  bias_grad_accumulate(host, MatrixView<const double, Host>(dy.data(), rows, cols), db.data());
  for (std::int64_t j = 0; j < cols; ++j) CHECK(db[static_cast<std::size_t>(j)] == want[static_cast<std::size_t>(j)] + 1.0);

  // dW = dY^T X with db: op(A) = dY^T, so the epilogue sums dY's columns.
  const std::int64_t k = 5;
  auto x = random_vector<double>(static_cast<std::size_t>(rows * k), 9);
  std::vector<double> dw(static_cast<std::size_t>(cols * k)), db2(static_cast<std::size_t>(cols));
  gemm(host, Op::T, MatrixView<const double, Host>(dy.data(), rows, cols), Op::N,
       MatrixView<const double, Host>(x.data(), rows, k), MatrixView<double, Host>(dw.data(), cols, k),
       GemmEpilogue<double, Host>::with_bias_grad(db2.data()));
  for (std::int64_t j = 0; j < cols; ++j) CHECK(db2[static_cast<std::size_t>(j)] == want[static_cast<std::size_t>(j)]);

  // LayerNorm + adaLN at 150 columns and 2 sequences: every gradient against finite differences.
  const std::int64_t seq = 3, batches = 2;
  auto xv = random_vector<double>(static_cast<std::size_t>(batches * seq * cols), 10);
  auto wv = random_vector<double>(static_cast<std::size_t>(cols), 11);
  auto sh = random_vector<double>(static_cast<std::size_t>(batches * cols), 12);
  auto sc = random_vector<double>(static_cast<std::size_t>(batches * cols), 13);
  std::vector<GradcheckInput> in{{"x", MatrixView<double, Host>(xv.data(), batches * seq, cols)},
                                 {"w", MatrixView<double, Host>(wv.data(), 1, cols)},
                                 {"shift", MatrixView<double, Host>(sh.data(), batches, cols)},
                                 {"scale", MatrixView<double, Host>(sc.data(), batches, cols)}};
  GradcheckResult r = gradcheck(
      [&](Tape<Host, double>& t, const GradcheckLeaves& g) {
        return LayerNormModulateOp<Host, double>::forward(t, g.var(0), g.param(1), g.var(2), g.var(3), seq, 1e-5);
      },
      in);
  CAPTURE(r.worst_input);
  CHECK(r.elements_checked > 0);
  CHECK(r.max_rel_error < 1e-7);
}

TEST_CASE("gated residual with dropout across several row chunks: gradients and the forward's mask agree") {
  const std::int64_t seq = 2, batches = 2, cols = 300;  // two chunks of kDropoutChunk = 256
  auto xv = random_vector<double>(static_cast<std::size_t>(batches * seq * cols), 20);
  auto yv = random_vector<double>(static_cast<std::size_t>(batches * seq * cols), 21);
  auto gv = random_vector<double>(static_cast<std::size_t>(batches * cols), 22);
  std::vector<GradcheckInput> in{{"x", MatrixView<double, Host>(xv.data(), batches * seq, cols)},
                                 {"y", MatrixView<double, Host>(yv.data(), batches * seq, cols)},
                                 {"gate", MatrixView<double, Host>(gv.data(), batches, cols)}};
  GradcheckOptions opt;
  opt.tape = {true, 11, 2};
  GradcheckResult r = gradcheck(
      [&](Tape<Host, double>& t, const GradcheckLeaves& g) {
        return GatedResidualOp<Host, double>::forward(t, g.var(0), g.var(1), g.var(2), seq, 0.4f);
      },
      in, opt);
  CAPTURE(r.worst_input);
  CHECK(r.max_rel_error < 1e-7);
  // The forward's dropped elements are exactly those keep() drops.
  Host host;
  Tape<Host, double> tape(host);
  tape.options = {true, 11, 2};
  auto x = tape.constant(MatrixView<double, Host>(xv.data(), batches * seq, cols));
  auto y = tape.constant(MatrixView<double, Host>(yv.data(), batches * seq, cols));
  const std::uint64_t offset = 0;  // the first site of a fresh tape
  auto out = GatedResidualOp<Host, double>::forward(tape, x, y, Var<double, Host>{}, seq, 0.4f);
  DropoutSite drop{0.4f, Philox{11}, 2, offset};
  // Dropped elements are x exactly; kept ones x + y / (1 - p) (to rounding: the compiler may fuse
  // the multiply-add).
  std::int64_t wrong = 0, dropped = 0;
  for (std::int64_t i = 0; i < batches * seq * cols; ++i) {
    const double x = xv[static_cast<std::size_t>(i)], y = yv[static_cast<std::size_t>(i)], got = out.value.data[i];
    if (drop.keep(static_cast<std::uint64_t>(i))) {
      const double want = x + y * drop.scale<double>();
      wrong += std::abs(got - want) > 1e-15 * std::max(1.0, std::abs(want));
    } else {
      ++dropped;
      wrong += got != x;
    }
  }
  CHECK(wrong == 0);
  CHECK(std::abs(static_cast<double>(dropped) / static_cast<double>(batches * seq * cols) - 0.4) < 0.05);
}

TEST_CASE("host_retain_freed_memory takes effect on glibc, and memory stays usable") {
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  CHECK(host_retain_freed_memory());
#else
  (void)host_retain_freed_memory();  // AddressSanitizer's allocator ignores mallopt
#endif
  std::vector<float> big(1 << 22, 1.0f);  // 16 MiB: from the heap now, not its own mmap
  big.back() = 2.0f;
  CHECK(big.front() + big.back() == 3.0f);
}
