// Sampler throughput on CUDA for the small preset (B = 16, L = 1024, V = 50258, bf16):
//   BM_fused_step / BM_unfused_pytorch_style_step: the step after the network alone — the fused
//     kernel (ops/cuda/sample.cuh: unmask decision + exact exponential race in one pass over the
//     logits, no probabilities written) beside the PyTorch-style unfused arithmetic of the official
//     sampler (softmax to fp32 probabilities, fp64 uniforms and Gumbel noise over the whole
//     vocabulary in memory, divide, argmax), all positions drawn (the worst case);
//   BM_sample_small_*: whole 128-step ancestral runs of the small model (random weights): the
//     device sampler with and without CUDA-graph replay, and the same forward passes followed by
//     the unfused arithmetic; reported as generated tokens/s.
//   build/bench/mdlm_bench_sampler_cuda
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <vector>
#include <cstdint>

#include "cuda_main.hpp"
#include "mdlm/cuda.cuh"
#include "train_step.hpp"

namespace {

using mdlm::bf16;
using mdlm::Cuda;
constexpr std::int64_t kRows = 16 * 1024, kVocab = 50258, kMask = 50257;

__global__ void fill_logits(bf16* p, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    p[i] = bf16(6.0f * (mdlm::Philox{1}.uniform_float(mdlm::Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5f));
  }
}

// Unfused baseline, kernel 1: softmax of each row into fp32 probabilities (mask suppressed).
// Rows `ld` apart: the model's logits rows are padded (DiT::head_ld), a plain buffer's are not.
__global__ void softmax_rows(const bf16* logits, std::int64_t ld, float* probs) {  // launched with 256 threads
  using Reduce = mdlm::cuda_detail::BlockReducer<float, 256>;
  __shared__ Reduce::Shared red;
  const std::int64_t r = blockIdx.x;
  const bf16* l = logits + r * ld;
  float mx = -INFINITY;
  for (std::int64_t v = threadIdx.x; v < kVocab; v += blockDim.x) mx = fmaxf(mx, v == kMask ? -INFINITY : l[v].to_float());
  mx = Reduce::max(mx, red);
  float s = 0;
  for (std::int64_t v = threadIdx.x; v < kVocab; v += blockDim.x) s += v == kMask ? 0.0f : expf(l[v].to_float() - mx);
  s = Reduce::sum(s, red);
  for (std::int64_t v = threadIdx.x; v < kVocab; v += blockDim.x) probs[r * kVocab + v] = v == kMask ? 0.0f : expf(l[v].to_float() - mx) / s;
}
// kernel 2: fp64 uniforms -> Gumbel-normalized noise in memory (torch.rand_like(float64) then log).
__global__ void gumbel_noise(double* noise, std::int64_t n, std::uint32_t step) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double u = mdlm::Philox{2}.uniform_double(mdlm::Purpose::Sampling, step, static_cast<std::uint64_t>(i));
    noise[i] = 1e-10 - log(u + 1e-10);
  }
}
// kernel 3: argmax of probs / noise per row.
__global__ void argmax_ratio(const float* probs, const double* noise, std::int32_t* out) {
  const std::int64_t r = blockIdx.x;
  double best = -1;
  std::int32_t id = 0;
  for (std::int64_t v = threadIdx.x; v < kVocab; v += blockDim.x) {
    const double s = static_cast<double>(probs[r * kVocab + v]) / noise[r * kVocab + v];
    if (s > best) best = s, id = static_cast<std::int32_t>(v);
  }
  __shared__ double sb[256];
  __shared__ std::int32_t si[256];
  sb[threadIdx.x] = best;
  si[threadIdx.x] = id;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
    if (threadIdx.x < h && (sb[threadIdx.x + h] > sb[threadIdx.x])) sb[threadIdx.x] = sb[threadIdx.x + h], si[threadIdx.x] = si[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[r] = si[0];
}

template <class F>
void time_steps(benchmark::State& state, Cuda& ctx, F&& step) {
  cudaEvent_t a, b;
  MDLM_CUDA_CHECK(cudaEventCreate(&a));
  MDLM_CUDA_CHECK(cudaEventCreate(&b));
  step(0u);
  std::uint32_t k = 1;
  for (auto _ : state) {
    MDLM_CUDA_CHECK(cudaEventRecord(a, ctx.stream()));
    step(k++);
    MDLM_CUDA_CHECK(cudaEventRecord(b, ctx.stream()));
    MDLM_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    MDLM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    state.SetIterationTime(ms / 1e3);
  }
  state.counters["positions"] = benchmark::Counter(static_cast<double>(kRows) * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

void BM_fused_step(benchmark::State& state) {
  Cuda ctx;
  mdlm::DeviceBuffer<bf16> logits(kRows * kVocab);
  fill_logits<<<4096, 256, 0, ctx.stream()>>>(logits.data(), kRows * kVocab);
  mdlm::DeviceBuffer<std::int32_t> z(kRows);
  mdlm::DeviceBuffer<std::uint8_t> fixed(kRows), changed(16);
  MDLM_CUDA_CHECK(cudaMemsetAsync(fixed.data(), 0, kRows, ctx.stream()));
  time_steps(state, ctx, [&](std::uint32_t step) {
    MDLM_CUDA_CHECK(cudaMemsetAsync(z.data(), 0xff, kRows * sizeof(std::int32_t), ctx.stream()));  // all masked (-1)
    mdlm::SampleStepArgs a;
    a.rows = kRows;
    a.vocab = kVocab;
    a.len = 1024;
    a.mask_id = -1;  // every position masked, every position drawn (the worst case)
    a.rng = mdlm::Philox{3};
    a.step = step;
    a.p_unmask = 1.0;
    mdlm::sample_step(ctx, mdlm::MatrixView<const bf16, Cuda>(logits.data(), kRows, kVocab), z.data(), fixed.data(), a,
                      changed.data());
  });
}

void BM_unfused_pytorch_style_step(benchmark::State& state) {
  Cuda ctx;
  mdlm::DeviceBuffer<bf16> logits(kRows * kVocab);
  fill_logits<<<4096, 256, 0, ctx.stream()>>>(logits.data(), kRows * kVocab);
  mdlm::DeviceBuffer<float> probs(kRows * kVocab);
  mdlm::DeviceBuffer<double> noise(kRows * kVocab);
  mdlm::DeviceBuffer<std::int32_t> out(kRows);
  time_steps(state, ctx, [&](std::uint32_t step) {
    softmax_rows<<<kRows, 256, 0, ctx.stream()>>>(logits.data(), kVocab, probs.data());
    gumbel_noise<<<8192, 256, 0, ctx.stream()>>>(noise.data(), kRows * kVocab, step);
    argmax_ratio<<<kRows, 256, 0, ctx.stream()>>>(probs.data(), noise.data(), out.data());
    MDLM_CUDA_CHECK_LAUNCH();
  });
}

// Unfused baseline, kernel 4: the ancestral decision (u < p_unmask) applied to masked positions.
__global__ void apply_unmask(const std::int32_t* drawn, std::int32_t* z, double p_unmask, std::uint32_t step) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (r >= kRows || z[r] != kMask) return;
  if (mdlm::Philox{3}.uniform_double(mdlm::Purpose::Remask, step, static_cast<std::uint64_t>(r)) < p_unmask) z[r] = drawn[r];
}

constexpr std::int64_t kBatch = 16, kLen = 1024, kSteps = 128;

struct SmallModel {
  mdlm::DiT model{mdlm::DiTConfig::preset("small", kVocab)};
  mdlm::ParamStore<Cuda, bf16, float> store{model.layout()};
  explicit SmallModel(Cuda& ctx) { mdlm::bench::init_for_benchmark(ctx, model, store); }
};

void report_tokens(benchmark::State& state, double seconds_total) {
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(kBatch * kLen) * static_cast<double>(state.iterations()) / seconds_total);
  state.counters["ms_per_step"] = seconds_total * 1e3 / static_cast<double>(kSteps * state.iterations());
}

void BM_sample_small_device(benchmark::State& state) {
  Cuda ctx;
  SmallModel m(ctx);
  mdlm::SamplerSettings cfg;
  cfg.steps = kSteps;
  cfg.cuda_graph = state.range(0) != 0;
  const std::vector<std::int32_t> init(static_cast<std::size_t>(kRows), static_cast<std::int32_t>(kMask));
  double total = 0;
  bool graph = false;
  for (auto _ : state) {
    auto r = mdlm::sample_on_device(ctx, m.model, m.store, kMask, mdlm::LogLinearSchedule{}, mdlm::Ancestral{}, cfg, init, kBatch, kLen);
    state.SetIterationTime(r.seconds);
    total += r.seconds;
    graph = r.cuda_graph;
    if (!r.note.empty()) state.SetLabel(r.note);
  }
  state.counters["cuda_graph"] = graph ? 1 : 0;
  report_tokens(state, total);
}

void BM_sample_small_unfused_pytorch_style(benchmark::State& state) {
  Cuda ctx;
  SmallModel m(ctx);
  mdlm::DeviceBuffer<float> probs(kRows * kVocab);
  mdlm::DeviceBuffer<double> noise(kRows * kVocab);
  mdlm::DeviceBuffer<std::int32_t> drawn(kRows);
  mdlm::Tape<Cuda, bf16, float> tape(ctx);
  tape.set_recording(false);
  const mdlm::LogLinearSchedule sched;
  double total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::int32_t> host_z(static_cast<std::size_t>(kRows), static_cast<std::int32_t>(kMask));
    auto z = mdlm::upload(ctx, host_z);
    for (std::int64_t step = 0; step < kSteps; ++step) {
      const double t = 1.0 - (1.0 - 1e-5) * static_cast<double>(step) / kSteps;
      const double s = 1.0 - (1.0 - 1e-5) * static_cast<double>(step + 1) / kSteps;
      host_z = mdlm::to_host(ctx, z.view());  // the official loop checks its state on the host each step
      tape.reset();
      auto logits = m.model.forward(tape, m.store.params(), mdlm::DiTInputs{z.data(), host_z.data(), kBatch, kLen});
      softmax_rows<<<kRows, 256, 0, ctx.stream()>>>(logits.value.data, logits.value.ld, probs.data());
      gumbel_noise<<<8192, 256, 0, ctx.stream()>>>(noise.data(), kRows * kVocab, static_cast<std::uint32_t>(step));
      argmax_ratio<<<kRows, 256, 0, ctx.stream()>>>(probs.data(), noise.data(), drawn.data());
      apply_unmask<<<(kRows + 255) / 256, 256, 0, ctx.stream()>>>(drawn.data(), z.data(),
                                                                  (sched.move_chance(t) - sched.move_chance(s)) / sched.move_chance(t),
                                                                  static_cast<std::uint32_t>(step));
      MDLM_CUDA_CHECK_LAUNCH();
    }
    ctx.synchronize();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(sec);
    total += sec;
  }
  report_tokens(state, total);
}

}  // namespace

BENCHMARK(BM_fused_step)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_unfused_pytorch_style_step)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_sample_small_device)->ArgName("graph")->Arg(1)->Arg(0)->UseManualTime()->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK(BM_sample_small_unfused_pytorch_style)->UseManualTime()->Iterations(1)->Unit(benchmark::kSecond);

int main(int argc, char** argv) { return run_cuda_benchmarks(argc, argv); }
