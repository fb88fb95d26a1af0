// CUDA backend tests: every CUDA result is compared with the Host backend (or the host-side
// definition) on the same inputs. Without a GPU the binary reports itself skipped (exit 77),
// never passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/cuda.cuh"

using namespace mdlm;
using mdlm::testing::random_vector;

// ---------------------------------------------------------------------------------------------
// Philox: device draws are bit-identical to host draws.

__global__ void philox_kernel(Philox rng, std::uint32_t step, std::int64_t n, U32x4* blocks, float* f, double* d,
                              double* open0) {
  std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const auto purpose = static_cast<Purpose>(i % 8);
  const std::uint64_t index = static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ull;  // spread over 64 bits
  blocks[i] = rng.block(purpose, step, index);
  f[i] = rng.uniform_float(purpose, step, index);
  d[i] = rng.uniform_double(purpose, step, index);
  open0[i] = u01_double_open0(blocks[i].v[2], blocks[i].v[3]);
}

TEST_CASE("Philox: device and host draws are bit-identical") {
  Cuda ctx;
  const std::int64_t n = 1 << 18;
  Philox rng{0xDEADBEEFCAFEF00Dull};
  DeviceBuffer<U32x4> blocks(n);
  DeviceBuffer<float> f(n);
  DeviceBuffer<double> d(n), o(n);
  philox_kernel<<<(n + 255) / 256, 256, 0, ctx.stream()>>>(rng, 77, n, blocks.data(), f.data(), d.data(), o.data());
  MDLM_CUDA_CHECK_LAUNCH();
  auto hb = to_host(ctx, blocks.view());
  auto hf = to_host(ctx, f.view());
  auto hd = to_host(ctx, d.view());
  auto ho = to_host(ctx, o.view());
  std::int64_t mismatches = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto purpose = static_cast<Purpose>(i % 8);
    const std::uint64_t index = static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ull;
    U32x4 want = rng.block(purpose, 77, index);
    for (int w = 0; w < 4; ++w) mismatches += hb[i].v[w] != want.v[w];
    float wf = rng.uniform_float(purpose, 77, index);
    mismatches += std::memcmp(&hf[i], &wf, 4) != 0;
    double wd = rng.uniform_double(purpose, 77, index);
    mismatches += std::memcmp(&hd[i], &wd, 8) != 0;
    double wo = u01_double_open0(want.v[2], want.v[3]);
    mismatches += std::memcmp(&ho[i], &wo, 8) != 0;
  }
  CHECK(mismatches == 0);
}

// ---------------------------------------------------------------------------------------------
// bf16: the device conversion (hardware cvt.rn.bf16.f32 on sm_80+) gives the host's bits.

__global__ void bf16_kernel(const std::uint32_t* in, std::int64_t n, std::uint16_t* ours, std::uint16_t* cuda) {
  std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float x = __uint_as_float(in[i]);
  ours[i] = bf16(x).bits;
  __nv_bfloat16 h = __float2bfloat16_rn(x);
  cuda[i] = *reinterpret_cast<std::uint16_t*>(&h);
}

TEST_CASE("bf16: device conversion equals host conversion and CUDA's __float2bfloat16_rn") {
  Cuda ctx;
  std::vector<std::uint32_t> patterns = {0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7f800000u, 0xff800000u,
                                         0x00000000u, 0x80000000u, 0x7f7fffffu, 0x7f7f8000u, 0x3f808000u,
                                         0x3f818000u, 0x00008000u, 0x00018000u, 0x0000ffffu, 0x007fffffu};
  for (std::uint64_t x = 0; x <= 0xffffffffull; x += 257) patterns.push_back(static_cast<std::uint32_t>(x));
  Philox rng{99};
  for (std::uint64_t i = 0; i < (1u << 20); ++i) patterns.push_back(rng.block(Purpose::Test, 0, i).v[0]);
  const auto n = static_cast<std::int64_t>(patterns.size());
  auto d_in = to_device(ctx, patterns);
  DeviceBuffer<std::uint16_t> d_ours(n), d_cuda(n);
  bf16_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, ctx.stream()>>>(d_in.data(), n, d_ours.data(),
                                                                                d_cuda.data());
  MDLM_CUDA_CHECK_LAUNCH();
  auto ours = to_host(ctx, d_ours.view());
  auto cuda = to_host(ctx, d_cuda.view());
  std::int64_t vs_host = 0, vs_cuda = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    float x;
    std::memcpy(&x, &patterns[static_cast<std::size_t>(i)], 4);
    vs_host += ours[static_cast<std::size_t>(i)] != bf16(x).bits;
    vs_cuda += ours[static_cast<std::size_t>(i)] != cuda[static_cast<std::size_t>(i)];
  }
  CHECK(n > 16000000);
  CHECK(vs_host == 0);
  CHECK(vs_cuda == 0);
}

// ---------------------------------------------------------------------------------------------
// GEMM: CUDA (fp32, bf16, bf16 -> fp32) against Host fp64 on the same (rounded) inputs.

namespace {

struct Shape3 {
  std::int64_t m, n, k;
};

double max_rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

// Runs one GEMM with epilogue `kind` on CUDA (TIn -> TOut) and on Host (fp64) with the same
// inputs; returns the max error relative to the largest magnitude of each output.
template <class TIn, class TOut>
double cuda_vs_host(Cuda& ctx, Op op_a, Op op_b, Shape3 s, Epilogue kind, std::int64_t pad, std::uint64_t seed,
                    double beta = 0.0) {
  const bool ta = op_a == Op::T, tb = op_b == Op::T;
  const std::int64_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
  const std::int64_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
  const std::int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = s.n + pad;
  // Inputs as the CUDA side sees them (rounded to TIn / TOut), widened for the fp64 host run.
  auto a = cast_vector<TIn>(random_vector<double>(static_cast<std::size_t>(a_rows * lda), seed, 0));
  auto b = cast_vector<TIn>(random_vector<double>(static_cast<std::size_t>(b_rows * ldb), seed, 1));
  auto c = cast_vector<TOut>(random_vector<double>(static_cast<std::size_t>(s.m * ldc), seed, 2));
  auto bias = cast_vector<TOut>(random_vector<double>(static_cast<std::size_t>(s.n), seed, 3));
  auto aux = cast_vector<TOut>(random_vector<double>(static_cast<std::size_t>(s.m * ldc), seed, 4));
  const std::int64_t bias_grad_len = s.m;

  // Host fp64
  Host host;
  auto ha = cast_vector<double>(a), hb = cast_vector<double>(b), hc = cast_vector<double>(c), hbias = cast_vector<double>(bias), haux = cast_vector<double>(aux);
  std::vector<double> hbg(static_cast<std::size_t>(bias_grad_len));
  GemmEpilogue<double, Host> he;
  he.kind = kind;
  he.bias = hbias.data();
  he.aux = MatrixView<double, Host>(haux.data(), s.m, s.n, ldc);
  he.bias_grad = hbg.data();
  gemm(host, op_a, MatrixView<const double, Host>(ha.data(), a_rows, a_cols, lda), op_b,
       MatrixView<const double, Host>(hb.data(), b_rows, b_cols, ldb), MatrixView<double, Host>(hc.data(), s.m, s.n, ldc),
       he, 1.0, beta);

  // CUDA
  auto da = to_device(ctx, a), db = to_device(ctx, b);
  auto dc = to_device(ctx, c), dbias = to_device(ctx, bias), daux = to_device(ctx, aux);
  DeviceBuffer<TOut> dbg(bias_grad_len);
  GemmEpilogue<TOut, Cuda> de;
  de.kind = kind;
  de.bias = dbias.data();
  de.aux = MatrixView<TOut, Cuda>(daux.data(), s.m, s.n, ldc);
  de.bias_grad = dbg.data();
  gemm(ctx, op_a, MatrixView<const TIn, Cuda>(da.data(), a_rows, a_cols, lda), op_b,
       MatrixView<const TIn, Cuda>(db.data(), b_rows, b_cols, ldb), MatrixView<TOut, Cuda>(dc.data(), s.m, s.n, ldc),
       de, 1.0f, static_cast<float>(beta));
  double err = max_rel_err(cast_vector<double>(to_host(ctx, dc.view())), hc);
  if (kind == Epilogue::GeluAuxBias) err = std::max(err, max_rel_err(cast_vector<double>(to_host(ctx, daux.view())), haux));
  if (kind == Epilogue::BiasGrad) err = std::max(err, max_rel_err(cast_vector<double>(to_host(ctx, dbg.view())), hbg));
  return err;
}

const Shape3 kShapes[] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {64, 48, 32}, {128, 256, 64}, {3, 129, 200}};
const Epilogue kEpilogues[] = {Epilogue::None, Epilogue::Bias, Epilogue::GeluAuxBias, Epilogue::DGelu,
                               Epilogue::BiasGrad};

// cuBLASLt documents its GELU epilogues only as "GELU" and does not state their precision. If
// they evaluate tanh with the hardware approximation (tanh.approx.f32, relative error about
// 2^-11), GELU's error is up to 0.5 |x| 2^-11, 2.5e-4 of the tensor's largest magnitude; the
// fused GELU epilogues are held to 1e-3 until a GPU run measures them (the sweep prints the
// worst error it saw), every other epilogue to the fp32 tolerance.
constexpr double kFusedGeluTol = 1e-3;

template <class TIn, class TOut>
void sweep(double tol) {
  Cuda ctx;
  double worst_gelu = 0;
  std::uint64_t seed = 100;
  for (Op op_a : {Op::N, Op::T}) {
    for (Op op_b : {Op::N, Op::T}) {
      for (Shape3 s : kShapes) {
        for (Epilogue e : kEpilogues) {
          for (std::int64_t pad : {0, 3}) {  // aligned and odd leading dimensions (fused and fallback)
            CAPTURE(s.m);
            CAPTURE(s.n);
            CAPTURE(s.k);
            CAPTURE(to_string(e));
            CAPTURE(static_cast<int>(op_a));
            CAPTURE(static_cast<int>(op_b));
            CAPTURE(pad);
            const double err = cuda_vs_host<TIn, TOut>(ctx, op_a, op_b, s, e, pad, seed++);
            const bool gelu = e == Epilogue::GeluAuxBias || e == Epilogue::DGelu;
            if (gelu) worst_gelu = std::max(worst_gelu, err);
            CHECK(err < (gelu ? std::max(tol, kFusedGeluTol) : tol));
          }
        }
        CHECK(cuda_vs_host<TIn, TOut>(ctx, op_a, op_b, s, Epilogue::Bias, 1, seed++, 0.5) < tol);  // beta
      }
    }
  }
  MESSAGE("GEMM ", sizeof(TIn) * 8, "-bit in, ", sizeof(TOut) * 8, "-bit out: worst GELU/DGELU epilogue error ",
          worst_gelu, " (relative to the largest magnitude)");
}

}  // namespace

TEST_CASE("CUDA GEMM fp32 matches Host for every epilogue, transpose and odd shape") { sweep<float, float>(1e-5); }

// bf16 outputs carry 8 bits of mantissa: one rounding of the result is 2^-9 relative (~2e-3);
// the fallback path rounds C before the epilogue as well, and GELU's slope is <= 1.13.
TEST_CASE("CUDA GEMM bf16 (fp32 accumulation) matches Host within bf16 rounding") { sweep<bf16, bf16>(1e-2); }

TEST_CASE("CUDA GEMM bf16 inputs with fp32 outputs matches Host tightly") { sweep<bf16, float>(1e-5); }

TEST_CASE("cuBLASLt plans are cached per problem, not rebuilt per call") {
  Cuda ctx;
  DeviceBuffer<float> a(Shape{64, 32}), b(Shape{32, 48}), c(Shape{64, 48});
  MDLM_CUDA_CHECK(cudaMemsetAsync(a.data(), 0, a.bytes(), ctx.stream()));
  MDLM_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, b.bytes(), ctx.stream()));
  const std::size_t before = ctx.lt().plan_count();
  for (int i = 0; i < 10; ++i) gemm(ctx, Op::N, MatrixView<const float, Cuda>(a.matrix()), Op::N,
                                    MatrixView<const float, Cuda>(b.matrix()), c.matrix());
  CHECK(ctx.lt().plan_count() == before + 1);
  gemm(ctx, Op::T, MatrixView<const float, Cuda>(a.data(), 32, 64), Op::N,
       MatrixView<const float, Cuda>(b.matrix()), MatrixView<float, Cuda>(c.data(), 64, 48));
  CHECK(ctx.lt().plan_count() == before + 2);  // another transpose is another plan
  // The bias pointer's alignment is part of the key: a plan chosen for a 256-byte aligned bias
  // must not run with a 4-byte aligned one.
  DeviceBuffer<float> bias(Shape{64});
  MDLM_CUDA_CHECK(cudaMemsetAsync(bias.data(), 0, bias.bytes(), ctx.stream()));
  for (const float* bp : {bias.data(), bias.data(), bias.data() + 1}) {
    gemm(ctx, Op::N, MatrixView<const float, Cuda>(a.matrix()), Op::N, MatrixView<const float, Cuda>(b.matrix()),
         c.matrix(), GemmEpilogue<float, Cuda>::with_bias(bp));
  }
  CHECK(ctx.lt().plan_count() == before + 4);
  ctx.synchronize();
}

TEST_CASE("CUDA errors and bad shapes surface as mdlm::Error") {
  Cuda ctx;
  DeviceBuffer<float> a(Shape{4, 4});
  CHECK_THROWS_AS(gemm(ctx, Op::N, MatrixView<const float, Cuda>(a.data(), 4, 3), Op::N,
                       MatrixView<const float, Cuda>(a.data(), 4, 4), MatrixView<float, Cuda>(a.data(), 4, 4)),
                  Error);
  CHECK_THROWS_AS(MDLM_CUDA_CHECK(cudaSetDevice(1 << 20)), Error);
  CHECK(cudaGetLastError() == cudaSuccess);  // a failed check clears the error it reported
  CHECK_THROWS_AS(DeviceBuffer<float>(Shape{std::int64_t{1} << 50}), Error);  // 4 PiB
  // The failed allocation must not leave the runtime's error set: the next launch check would
  // report a bogus out-of-memory.
  CHECK(cudaGetLastError() == cudaSuccess);
  DeviceBuffer<float> ok(Shape{16});
  CHECK_NOTHROW(fill_zero(ctx, ok.matrix()));
  CHECK_NOTHROW(MDLM_CUDA_CHECK_LAUNCH());
  // A fixed arena throws when it runs out; a growable one (the default) takes another block.
  Arena<Cuda> fixed(1 << 20, Arena<Cuda>::Growth::Fixed);
  auto v = fixed.alloc<bf16>(Shape{1000});
  CHECK(reinterpret_cast<std::uintptr_t>(v.data) % 256 == 0);
  CHECK_THROWS_AS(fixed.alloc<float>(Shape{1 << 20}), Error);
  Arena<Cuda> growable(1 << 20);
  CHECK_NOTHROW(growable.alloc<float>(Shape{1 << 20}));
  CHECK(growable.block_count() == 2);
}

TEST_CASE("buffers and arenas made with a context live on the context's device") {
  Cuda ctx(Cuda::device_count() - 1);  // the last device: not the default one where there are several
  auto device_of = [](const void* p) {
    cudaPointerAttributes attr{};
    MDLM_CUDA_CHECK(cudaPointerGetAttributes(&attr, p));
    return attr.device;
  };
  MDLM_CUDA_CHECK(cudaSetDevice(0));  // another device current (where there are several)
  DeviceBuffer<float> b(ctx, Shape{256});
  CHECK(device_of(b.data()) == ctx.device());
  Arena<Cuda> arena(ctx, 1 << 12);
  auto v = arena.alloc<float>(Shape{1 << 12});  // grows: the new block too
  CHECK(device_of(v.data) == ctx.device());
  CHECK(arena.block_count() == 2);
}

// Exact integer sums through the block reduction (the confidence sampler's fixed-point mass):
// values past 2^24 and 2^53, which float and double would round.
__global__ void block_sum_u64(const unsigned long long* in, unsigned long long* out) {
  __shared__ cuda_detail::BlockShared<unsigned long long, 256> red;
  out[blockIdx.x] = cuda_detail::BlockReducer<unsigned long long, 256>::sum(in[blockIdx.x * 256 + threadIdx.x], red);
}

TEST_CASE("CUDA block reductions sum 64-bit integers exactly") {
  Cuda ctx;
  const int blocks = 4;
  std::vector<unsigned long long> in(blocks * 256);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = (1ull << 40) + (1ull << 20) * i + 1 + (i % 3 == 0 ? (1ull << 54) : 0);
  auto din = upload(ctx, in);
  DeviceBuffer<unsigned long long> dout(blocks);
  launch(ctx, launch_detail::block_each("block_sum_u64", blocks, 256, 0), block_sum_u64, din.data(), dout.data());
  const auto got = to_host(ctx, dout.view());
  for (int b = 0; b < blocks; ++b) {
    unsigned long long want = 0;
    for (int t = 0; t < 256; ++t) want += in[static_cast<std::size_t>(b * 256 + t)];
    CHECK(got[static_cast<std::size_t>(b)] == want);
  }
}

TEST_CASE("zero_grad is ordered on the context's stream: it captures into a CUDA graph") {
  // The old zero (cudaMemset on the legacy stream + cudaDeviceSynchronize) breaks a capture.
  Cuda ctx;
  DiTConfig cfg;
  cfg.vocab = 16, cfg.hidden = 32, cfg.heads = 2, cfg.blocks = 1;
  DiT model(cfg);
  ParamStore<Cuda, float> store(model.layout());
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(ctx.stream(), cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  store.zero_grad(ctx);
  const cudaError_t end = cudaStreamEndCapture(ctx.stream(), &graph);
  CHECK(end == cudaSuccess);
  if (graph != nullptr) cudaGraphDestroy(graph);
  (void)cudaGetLastError();
}

TEST_CASE("kernel static shared memory is what the launch configurations count") {
  // cudaFuncGetAttributes reports the compiled kernel's static shared memory; the configs
  // count it from the kernels' shared-storage types.
  auto static_bytes = [](auto kernel) {
    cudaFuncAttributes attr{};
    MDLM_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    return attr.sharedSizeBytes;
  };
  const auto s = cuda_detail::attention_shape(1024, 3 * 768, 1024, 12, false);
  CHECK(static_bytes(cuda_kernels::attention_forward<float>) <= launches::attention_forward(s, false).static_smem);
  CHECK(static_bytes(cuda_kernels::attention_backward_ds<bf16>) <= launches::attention_backward_ds(s).static_smem);
  CHECK(static_bytes(cuda_kernels::sample_step<bf16>) <= launches::sample_step(16).static_smem);
  CHECK(static_bytes(cuda_kernels::confidence_candidates<float>) <= launches::confidence_candidates(16).static_smem);
  CHECK(static_bytes(cuda_kernels::confidence_select) <= launches::confidence_select(16).static_smem);
  CHECK(static_bytes(cuda_kernels::first_hit_step<bf16>) <= launches::first_hit_step(16).static_smem);
  CHECK(static_bytes(cuda_kernels::argmax_masked<float>) <= launches::argmax_masked(16).static_smem);
  CHECK(static_bytes(cuda_kernels::cross_entropy_rows<bf16>) <= launches::cross_entropy_rows(16).static_smem);
  CHECK(static_bytes(cuda_kernels::sum_rows_ordered<float>) <= launches::sum_rows_ordered().static_smem);
  CHECK(static_bytes(cuda_kernels::sum_of_squares_partial<float>) <= launches::sum_of_squares_partial().static_smem);
  const auto shape = ColumnReduceShape::plain(1000, 100);
  CHECK(static_bytes(cuda_kernels::column_reduce_partials<float, ColumnValue<bf16, float>>) <=
        launches::column_reduce_partials(shape, sizeof(float)).static_smem);
  CHECK(static_bytes(cuda_kernels::column_reduce_partials<double, ColumnValue<double, double>>) <=
        launches::column_reduce_partials(shape, sizeof(double)).static_smem);
}

int main(int argc, char** argv) {
  const int devices = Cuda::device_count();
  if (devices == 0) {
    std::printf("SKIPPED: no CUDA device; the CUDA tests did not run\n");
    return 77;  // ctest SKIP_RETURN_CODE
  }
  cudaDeviceProp prop{};
  MDLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int runtime = 0, driver = 0;
  MDLM_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  MDLM_CUDA_CHECK(cudaDriverGetVersion(&driver));
  std::printf("CUDA device 0: %s (sm_%d%d, %.1f GiB), CUDA runtime %d.%d, driver supports CUDA %d.%d\n", prop.name,
              prop.major, prop.minor, static_cast<double>(prop.totalGlobalMem) / (1 << 30), runtime / 1000,
              runtime % 1000 / 10, driver / 1000, driver % 1000 / 10);
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}
