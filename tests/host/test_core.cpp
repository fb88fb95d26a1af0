#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "mdlm/mdlm.hpp"

using namespace mdlm;

TEST_CASE("mdlm::Error names file, line and the offending value") {
  auto fails = [](int vocab) { MDLM_CHECK(vocab > 0, "vocab size ", vocab, " must be positive"); };
  try {
    fails(-3);
    FAIL("no exception");
  } catch (const Error& e) {
    std::string msg = e.what();
    CHECK(msg.find("test_core.cpp:") != std::string::npos);  // names the file...
    CHECK(msg.find(":12: ") != std::string::npos);            // ...and the line of the check
    CHECK(msg.find("vocab > 0") != std::string::npos);
    CHECK(msg.find("vocab size -3 must be positive") != std::string::npos);
  }
  CHECK_THROWS_AS(MDLM_FAIL("x ", 1), std::runtime_error);  // derives from runtime_error
  try {
    Shape bad{4, -2};
    FAIL("no exception");
  } catch (const Error& e) {  // library paths are shortened to include/-relative names
    CHECK(std::string(e.what()).rfind("mdlm/core/tensor.hpp:", 0) == 0);
    CHECK(std::string(e.what()).find("negative dimension -2") != std::string::npos);
  }
}

TEST_CASE("Shape: numel, equality, printing and bad input") {
  Shape s{2, 3, 4};
  CHECK(s.rank() == 3);
  CHECK(s.numel() == 24);
  CHECK(s[2] == 4);
  CHECK(s == Shape{2, 3, 4});
  CHECK_FALSE(s == Shape{2, 3});
  CHECK(s.str() == "(2, 3, 4)");
  CHECK(Shape{}.numel() == 1);  // a scalar
  CHECK_THROWS_AS(Shape({2, -1}), Error);
  CHECK_THROWS_AS(Shape({1, 1, 1, 1, 1, 1, 1}), Error);
  CHECK_THROWS_AS((void)s[3], Error);
}

TEST_CASE("Buffer: allocation, alignment and moves") {
  HostBuffer<float> a(Shape{3, 5});
  CHECK(a.numel() == 15);
  CHECK(a.bytes() == 60);
  CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 256 == 0);
  for (int i = 0; i < 15; ++i) a.data()[i] = static_cast<float>(i);
  float* p = a.data();
  HostBuffer<float> b = std::move(a);
  CHECK(b.data() == p);
  CHECK(a.data() == nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  auto m = b.matrix();
  CHECK(m.rows == 3);
  CHECK(m.cols == 5);
  CHECK(m.data[2 * m.ld + 4] == 14.0f);
  HostBuffer<float> empty(Shape{0, 4});
  CHECK(empty.data() == nullptr);
}

TEST_CASE("MatrixView rejects a leading dimension below the column count") {
  float x[8]{};
  CHECK_THROWS_AS((MatrixView<float, Host>(x, 2, 4, 3)), Error);
  MatrixView<float, Host> ok(x, 2, 3, 4);
  CHECK(ok.ld == 4);
}

TEST_CASE("Arena: aligned bump allocation, reset, high-water mark, overflow error") {
  Arena<Host> arena(4096, Arena<Host>::Growth::Fixed);
  auto a = arena.alloc<float>(Shape{10});
  auto b = arena.alloc<double>(Shape{3, 3});
  CHECK(reinterpret_cast<std::uintptr_t>(a.data) % Arena<Host>::kAlignment == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(b.data) % Arena<Host>::kAlignment == 0);
  CHECK(reinterpret_cast<char*>(b.data) - reinterpret_cast<char*>(a.data) == 256);
  CHECK(arena.used() == 256 + 72);
  arena.reset();
  CHECK(arena.used() == 0);
  auto c = arena.alloc<float>(Shape{1});
  CHECK(c.data == a.data);  // same memory next step: no allocation in the steady state
  CHECK(arena.high_water() == 256 + 72);
  try {
    (void)arena.alloc<float>(Shape{2000});
    FAIL("no exception");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("arena out of memory") != std::string::npos);
    CHECK(std::string(e.what()).find("(2000)") != std::string::npos);
  }
}

TEST_CASE("Arena: a growable arena takes new blocks, then consolidates at reset") {
  Arena<Host> arena(1024);
  auto a = arena.alloc<float>(Shape{100});  // 400 bytes
  auto b = arena.alloc<float>(Shape{300});  // 1200 bytes: does not fit, new block
  a.data[99] = 1.0f;
  b.data[299] = 2.0f;
  CHECK(arena.block_count() == 2);
  CHECK(a.data[99] == 1.0f);  // earlier views stay valid while the step lasts
  CHECK(arena.high_water() >= 1600);
  arena.reset();
  CHECK(arena.block_count() == 1);
  CHECK(arena.capacity() >= arena.high_water());
  (void)arena.alloc<float>(Shape{100});
  (void)arena.alloc<float>(Shape{300});
  CHECK(arena.block_count() == 1);  // steady state: no allocation
}

TEST_CASE("Host::parallel_for covers every index exactly once") {
  Host host;
  std::vector<int> hits(1000, 0);
  host.parallel_for(1000, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)] += 1; });
  for (int h : hits) REQUIRE(h == 1);
}

// (std::max_element and omp_get_thread_num come with mdlm.hpp: backend/host.hpp.)
// One index's view of its thread's floating-point mode: FTZ|DAZ bits, and whether a denormal
// product (1e-38 * 1e-3 = 1e-41, below FLT_MIN) and a denormal input survive.
struct FpModeSample {
  unsigned bits = 0;
  bool product_survives = false, input_survives = false;
};

inline FpModeSample sample_fp_mode() {
  volatile float x = 1e-38f, y = 1e-3f;
  const float product = x * y;
  volatile float denormal = 1e-41f;  // a denormal constant, read as an input
  const float doubled = denormal * 2.0f;
  return {host_fp::flush_bits(), product != 0.0f, doubled != 0.0f};
}

TEST_CASE("Host: compute threads flush denormals (FTZ + DAZ) by default; flush_denormals = false keeps them") {
#if defined(__x86_64__) || defined(__i386__)
  for (int threads : {1, 2, 3, 5}) {  // 3 and 5: more workers than before, created by this loop
    CAPTURE(threads);
    for (bool flush : {true, false, true}) {
      CAPTURE(flush);
      Host host;
      host.threads = threads;
      host.flush_denormals = flush;
      const std::int64_t n = 64;
      std::vector<FpModeSample> seen(static_cast<std::size_t>(n));
      std::vector<int> tid(static_cast<std::size_t>(n));
      host.parallel_for(n, [&](std::int64_t i) {
        seen[static_cast<std::size_t>(i)] = sample_fp_mode();
        tid[static_cast<std::size_t>(i)] = omp_get_thread_num();
      });
      CHECK(*std::max_element(tid.begin(), tid.end()) == threads - 1);  // every thread took part
      for (const FpModeSample& s : seen) {
        CHECK(s.bits == (flush ? (host_fp::kFtz | host_fp::kDaz) : 0u));
        CHECK(s.product_survives == !flush);
        CHECK(s.input_survives == !flush);
      }
      // The calling thread keeps the mode after the loop (the denormal-heavy code between
      // parallel loops runs in it too).
      const FpModeSample caller = sample_fp_mode();
      CHECK(caller.product_survives == !flush);
      // enter(): the calling thread and a team of omp_get_max_threads() (what an OpenMP BLAS uses).
      host.flush_denormals = !flush;
      host.enter();
      std::vector<FpModeSample> pool(static_cast<std::size_t>(omp_get_max_threads()));
#pragma omp parallel num_threads(omp_get_max_threads())
      pool[static_cast<std::size_t>(omp_get_thread_num())] = sample_fp_mode();
      for (const FpModeSample& s : pool) CHECK(s.product_survives == flush);
    }
  }
  host_fp::set_flush_denormals(false);  // leave the test thread as it was
#else
  MESSAGE("no MXCSR on this architecture: flush_denormals is a no-op");
#endif
}
