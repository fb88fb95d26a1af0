// mdlm — command-line front end of the library. Subcommands:
//   mdlm version
//   mdlm demo [--backend host|cuda] [--size N] [--seed S]
//       Foundation demo (until the trainer lands): Philox draws, bf16 rounding, and a Linear-
//       layer GEMM with a fused GELU epilogue on the chosen backend, checked against the Host
//       fp64 result, with its throughput.
//   mdlm info [--preset tiny|small|medium] [--vocab V] [--ar 0|1] [--verbose 0|1]
//   mdlm check-fixture FILE.safetensors [--backend host|cuda] [--dtype f64|f32|bf16]
//   mdlm check-trajectory FILE.safetensors [--backend host|cuda] [--dtype f64|f32|bf16]
//   mdlm tokenize --tokenizer gpt2:DIR|wordpiece:FILE|bytes [--jsonl] [--special]
// Every command takes --threads N (or the environment variable MDLM_NUM_THREADS; the flag wins):
// the Host backend's thread count, the OpenMP default and OpenBLAS's thread count, all N.
// Errors are reported as "mdlm: error: ..." with exit code 2.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include <omp.h>

#ifndef MDLM_WITH_CUDA
#define MDLM_WITH_CUDA 0
#endif
#if MDLM_WITH_CUDA
#include "mdlm/cuda.cuh"
#else
#include "mdlm/mdlm.hpp"
#endif
#ifndef MDLM_WITH_MPI
#define MDLM_WITH_MPI 0
#endif
#if MDLM_WITH_MPI
#include "mdlm/dist/mpi.hpp"  // `mpirun -np N mdlm train ...`: data-parallel over N ranks
#endif
#ifndef MDLM_WITH_NCCL
#define MDLM_WITH_NCCL 0
#endif
#if MDLM_WITH_NCCL
#include "mdlm/dist/nccl.cuh"  // ... and over N GPUs with --backend cuda
#endif

namespace {

using namespace mdlm;

// Threads for the Host backend (--threads / MDLM_NUM_THREADS); 0 = OpenMP's default.
int g_threads = 0;

// A Host context with the program's thread count.
Host host_context() {
  Host h;
  h.threads = g_threads;
  return h;
}

// The checking commands' one dispatch from --backend / --dtype to types: calls
// fn.operator()<B, T, G>(ctx) with Host fp64 / fp32, or CUDA fp32 / bf16 (fp32 gradients).
template <class R, class F>
R on_backend_and_dtype(const std::string& backend, const std::string& dtype, F&& fn) {
  if (backend == "host") {
    MDLM_CHECK(dtype != "bf16", "--dtype bf16 runs on the CUDA backend only");
    Host host = host_context();
    return dtype == "f64" ? fn.template operator()<Host, double, double>(host)
                          : fn.template operator()<Host, float, float>(host);
  }
#if MDLM_WITH_CUDA
  MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
  MDLM_CHECK(dtype != "f64", "--backend cuda runs f32 or bf16 (fp64 is the Host reference)");
  Cuda ctx;
  return dtype == "f32" ? fn.template operator()<Cuda, float, float>(ctx) : fn.template operator()<Cuda, bf16, float>(ctx);
#else
  MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
}

int parse_threads(const std::string& v, const char* what) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MDLM_CHECK(used == v.size() && !v.empty() && n >= 1 && n <= 4096, what, " expects a thread count in [1, 4096], got '", v, "'");
  return static_cast<int>(n);
}

// Takes --threads N out of argv (anywhere on the command line) or reads MDLM_NUM_THREADS, and
// applies it: the Host contexts' thread count, OpenMP's default (the tokenizers' and the
// trainer's loops) and OpenBLAS's thread count agree.
void apply_threads(std::vector<char*>& args) {
  std::string value;
  const char* source = "MDLM_NUM_THREADS";
  for (std::size_t i = 1; i < args.size();) {
    if (std::string(args[i]) == "--threads") {
      MDLM_CHECK(i + 1 < args.size(), "flag '--threads' needs a value");
      value = args[i + 1];
      source = "--threads";
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i), args.begin() + static_cast<std::ptrdiff_t>(i + 2));
    } else {
      ++i;
    }
  }
  if (value.empty()) {
    const char* env = std::getenv("MDLM_NUM_THREADS");
    if (env == nullptr || *env == 0) return;
    value = env;
  }
  g_threads = parse_threads(value, source);
  omp_set_num_threads(g_threads);
#ifdef OPENBLAS_VERSION
  openblas_set_num_threads(g_threads);
#endif
}

// Levenshtein distance, for "did you mean" on an unknown flag.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0u : 1u)});
      diag = up;
    }
  }
  return row[b.size()];
}

// "unknown flag '--stpes' (nearest known flag: '--steps'; see mdlm CMD --help)"
[[noreturn]] void unknown_flag(const std::string& cmd, const std::string& flag, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_d = static_cast<std::size_t>(-1);
  for (const std::string& k : known) {
    const std::size_t d = edit_distance(flag, k);
    if (d < best_d) best_d = d, best = k;
  }
  MDLM_FAIL("unknown flag '", flag, "' (nearest known flag: '", best, "'; see mdlm ", cmd, " --help)");
}

// --flag value pairs after the subcommand; unknown flags are errors.
struct Args {
  std::map<std::string, std::string> values;
  std::vector<std::string> given;  // the flags on the command line
  bool was_given(const std::string& f) const { return std::find(given.begin(), given.end(), f) != given.end(); }
  // `switches` are flags without a value: present means "1" (an explicit 0/1 may follow).
  Args(int argc, char** argv, int first, const std::map<std::string, std::string>& defaults,
       const std::vector<std::string>& switches = {})
      : values(defaults) {
    for (const auto& sw : switches) values.emplace(sw, "0");
    for (int i = first; i < argc; ++i) {
      std::string flag = argv[i];
      if (values.count(flag) != 1) {
        std::vector<std::string> known{"--threads", "--help"};
        for (const auto& [k, v] : values) known.push_back(k);
        unknown_flag(argc > 1 ? argv[1] : "", flag, known);
      }
      given.push_back(flag);
      const bool is_switch = std::find(switches.begin(), switches.end(), flag) != switches.end();
      if (is_switch) {
        const bool explicit_value = i + 1 < argc && (std::string(argv[i + 1]) == "0" || std::string(argv[i + 1]) == "1");
        values[flag] = explicit_value ? argv[++i] : "1";
        continue;
      }
      MDLM_CHECK(i + 1 < argc, "flag '", flag, "' needs a value");
      values[flag] = argv[++i];
    }
  }
  std::string str(const std::string& f) const { return values.at(f); }
  std::int64_t integer(const std::string& f) const {
    const std::string& v = values.at(f);
    std::size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MDLM_CHECK(used == v.size() && !v.empty(), "flag '", f, "' expects an integer, got '", v, "'");
    return x;
  }
};

// The flags of a command (command_spec below, with the help text of each).
struct CommandSpec {
  std::map<std::string, std::string> defaults;  // value flags (and "" where there is none)
  std::vector<std::string> switches;            // flags without a value (present = 1)
  std::string synopsis;                         // positional arguments
};
CommandSpec command_spec(const std::string& cmd, bool gen_ppl = false);

std::string default_backend() {
#if MDLM_WITH_CUDA
  return Cuda::device_count() > 0 ? "cuda" : "host";
#else
  return "host";
#endif
}

template <class T>
std::vector<T> uniform_pm1(Philox rng, std::uint32_t stream, std::size_t n) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(2.0 * rng.uniform_double(Purpose::Test, stream, i) - 1.0);
  return v;
}

int demo(const Args& args) {
  const std::string backend = args.str("--backend");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  const std::int64_t n = args.integer("--size");
  MDLM_CHECK(n > 0 && n <= 16384, "--size ", n, " out of range [1, 16384]");
  Philox rng{static_cast<std::uint64_t>(args.integer("--seed"))};

  std::printf("mdlm %s demo (backend %s)\n\n", kVersion, backend.c_str());
  std::printf("Philox4x32-10 uniforms (seed %llu, purpose Test, step 0):\n ",
              static_cast<unsigned long long>(rng.seed));
  for (std::uint64_t i = 0; i < 6; ++i) std::printf(" %.17f", rng.uniform_double(Purpose::Test, 0, i));
  std::printf("\n\nbf16 round-to-nearest-even:\n");
  for (float f : {1.00390625f, 1.01171875f, 3.14159265f, 1e-40f, 3.4e38f}) {
    bf16 h(f);
    std::printf("  %-14.9g -> 0x%04x = %.9g\n", static_cast<double>(f), h.bits, static_cast<double>(h.to_float()));
  }

  // A Linear layer with GELU: y = gelu(x W^T + b), x (n, n), W (n, n).
  auto x = uniform_pm1<float>(rng, 1, static_cast<std::size_t>(n * n));
  auto w = uniform_pm1<float>(rng, 2, static_cast<std::size_t>(n * n));
  auto bias = uniform_pm1<float>(rng, 3, static_cast<std::size_t>(n));
  std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), bd(bias.begin(), bias.end());
  std::vector<double> ref(static_cast<std::size_t>(n * n)), ref_aux(ref.size());
  Host host = host_context();
  gemm(host, Op::N, MatrixView<const double, Host>(xd.data(), n, n), Op::T,
       MatrixView<const double, Host>(wd.data(), n, n), MatrixView<double, Host>(ref.data(), n, n),
       GemmEpilogue<double, Host>::gelu_aux_bias(bd.data(), MatrixView<double, Host>(ref_aux.data(), n, n)));

  std::vector<float> y(ref.size()), aux(ref.size());
  const int reps = 5;
  double seconds = 0;
  auto time_it = [&](auto&& run, auto&& sync) {
    run();
    sync();
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) run();
    sync();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  if (backend == "host") {
    time_it(
        [&] {
          gemm(host, Op::N, MatrixView<const float, Host>(x.data(), n, n), Op::T,
               MatrixView<const float, Host>(w.data(), n, n), MatrixView<float, Host>(y.data(), n, n),
               GemmEpilogue<float, Host>::gelu_aux_bias(bias.data(), MatrixView<float, Host>(aux.data(), n, n)));
        },
        [] {});
  } else {
#if MDLM_WITH_CUDA
    MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
    Cuda ctx;
    auto dx = to_device(ctx, x), dw = to_device(ctx, w), db = to_device(ctx, bias);
    DeviceBuffer<float> dy(Shape{n, n}), daux(Shape{n, n});
    time_it(
        [&] {
          gemm(ctx, Op::N, MatrixView<const float, Cuda>(dx.data(), n, n), Op::T,
               MatrixView<const float, Cuda>(dw.data(), n, n), dy.matrix(),
               GemmEpilogue<float, Cuda>::gelu_aux_bias(db.data(), daux.matrix()));
        },
        [&] { ctx.synchronize(); });
    y = to_host(ctx, dy.view());
#else
    MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
  }
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < y.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(y[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  const double gflops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / seconds / 1e9;
  std::printf("\nLinear + GELU, fp32, %lldx%lld by %lldx%lld on %s: %.3f ms, %.1f GFLOP/s\n",
              static_cast<long long>(n), static_cast<long long>(n), static_cast<long long>(n),
              static_cast<long long>(n), backend.c_str(), seconds * 1e3, gflops);
  std::printf("max error vs Host fp64: %.3g (relative to max |y| = %.3g)\n", err / scale, scale);
  const bool ok = err / scale < 1e-5;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}

std::string with_commas(std::int64_t v) {
  std::string s = std::to_string(v), out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

int info(const Args& args) {
  DiTConfig cfg = DiTConfig::preset(args.str("--preset"), args.integer("--vocab"));
  cfg.ar = args.integer("--ar") != 0;
  DiT model(cfg);
  const auto& l = model.layout();
  std::printf("%s backbone, preset %s\n", cfg.ar ? "AR (causal, no adaLN)" : "MDLM DiT", args.str("--preset").c_str());
  std::printf("  blocks %lld, hidden %lld, heads %lld x %lld, MLP %lld (tanh-GELU), cond %lld, vocab %lld\n",
              static_cast<long long>(cfg.blocks), static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.heads),
              static_cast<long long>(cfg.head_dim()), static_cast<long long>(cfg.mlp_ratio * cfg.hidden),
              static_cast<long long>(cfg.cond_dim), static_cast<long long>(cfg.vocab));
  std::printf("  RoPE base %g, LayerNorm eps %g, dropout %g, time conditioning %s\n", cfg.rope_base,
              cfg.layer_norm_eps, static_cast<double>(cfg.dropout), cfg.ar ? "n/a" : "off (sigma fed as 0)");
  std::printf("  parameter tensors %zu\n", l.specs().size());
  if (args.integer("--verbose") != 0) {
    for (const auto& s : l.specs()) {
      std::printf("    backbone.%-45s [%s] %s\n", s.name.c_str(),
                  s.shape.size() == 2 ? (std::to_string(s.shape[0]) + ", " + std::to_string(s.shape[1])).c_str()
                                      : std::to_string(s.shape[0]).c_str(),
                  with_commas(s.numel).c_str());
    }
  }
  std::printf("  train FLOPs per token at T=1024: %.4g\n", model.train_flops_per_token(1024));
  std::printf("parameters: %s (%lld)\n", with_commas(l.parameter_count()).c_str(),
              static_cast<long long>(l.parameter_count()));
  return 0;
}

int check_fixture(int argc, char** argv) {
  MDLM_CHECK(argc >= 3 && argv[2][0] != '-', "check-fixture needs a fixture file (mdlm check-fixture FILE.safetensors)");
  const std::string path = argv[2];
  Args args(argc, argv, 3, command_spec("check-fixture").defaults);
  const std::string backend = args.str("--backend"), dtype = args.str("--dtype");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  MDLM_CHECK(dtype == "f64" || dtype == "f32" || dtype == "bf16", "unknown dtype '", dtype, "' (expected f64, f32 or bf16)");
  // Tolerances relative to each reference tensor's largest magnitude. bf16 (8-bit mantissa,
  // relative rounding 2^-9 = 2e-3 per stored activation) through ~10 stored roundings per
  // block and a softmax: errors of a few 1e-3 are expected; 5e-2 separates rounding from bugs.
  const double tol = dtype == "f64" ? 1e-10 : dtype == "f32" ? 1e-5 : 5e-2;
  GoldenFixture g = GoldenFixture::load(path);
  const GoldenReport rep = on_backend_and_dtype<GoldenReport>(
      backend, dtype, [&]<class B, class T, class G>(B& ctx) { return check_golden<B, T, G>(ctx, g); });
  bool ok = true;
  std::printf("{\n  \"fixture\": \"%s\",\n  \"backend\": \"%s\",\n  \"dtype\": \"%s\",\n", path.c_str(),
              backend.c_str(), dtype.c_str());
  std::printf("  \"model\": \"%s\",\n  \"tolerance_rel\": %.3g,\n  \"tensors\": {\n", g.model.ar ? "ar" : "mdlm", tol);
  for (std::size_t i = 0; i < rep.tensors.size(); ++i) {
    const TensorError& e = rep.tensors[i];
    const bool pass = e.max_rel <= tol;
    ok = ok && pass;
    std::printf("    \"%s\": {\"max_abs\": %.6e, \"max_rel\": %.6e, \"numel\": %lld, \"pass\": %s}%s\n", e.name.c_str(),
                e.max_abs, e.max_rel, static_cast<long long>(e.numel), pass ? "true" : "false",
                i + 1 < rep.tensors.size() ? "," : "");
  }
  std::printf("  },\n  \"worst_rel\": %.6e,\n  \"pass\": %s\n}\n", rep.worst_rel(), ok ? "true" : "false");
  return ok ? 0 : 1;
}

// Replays an mdlm-trajectory-v1 file (io/trajectory.hpp) through the library's TrainStep and
// prints a JSON report; exit 0 only within the dtype's tolerance (trajectory_tolerance<T>).
int check_trajectory(int argc, char** argv) {
  MDLM_CHECK(argc >= 3 && argv[2][0] != '-', "check-trajectory needs a trajectory file (mdlm check-trajectory FILE.safetensors)");
  const std::string path = argv[2];
  Args args(argc, argv, 3, command_spec("check-trajectory").defaults);
  const std::string backend = args.str("--backend"), dtype = args.str("--dtype");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  MDLM_CHECK(dtype == "f64" || dtype == "f32" || dtype == "bf16", "unknown dtype '", dtype, "' (expected f64, f32 or bf16)");
  const Trajectory tr = Trajectory::load(path);
  const auto t0 = std::chrono::steady_clock::now();
  const TrajectoryReport rep = on_backend_and_dtype<TrajectoryReport>(
      backend, dtype, [&]<class B, class T, class G>(B& ctx) { return replay_trajectory<B, T, G>(ctx, tr); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json j = rep.to_json();
  j["trajectory"] = path;
  j["backend"] = backend;
  j["dtype"] = dtype;
  j["model"] = tr.model.ar ? "ar" : "mdlm";
  j["loss_kind"] = tr.config.at("loss");
  j["steps"] = tr.steps;
  j["accum"] = tr.accum;
  j["batch"] = tr.batch;
  j["seq_len"] = tr.seq_len;
  j["seconds"] = seconds;
  std::printf("%s\n", j.dump(2).c_str());
  return rep.pass() ? 0 : 1;
}

// Reads text (one document per line) or JSON lines with a "text" field from stdin and writes
// one JSON line {"ids": [...]} per input line, encoding with all cores.
int tokenize(const Args& args) {
  const bool jsonl = args.integer("--jsonl") != 0, special = args.integer("--special") != 0;
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  std::vector<std::string> texts;
  std::size_t line_no = 0;
  for (std::string_view line : split_lines(input)) {
    ++line_no;
    if (!jsonl) {
      texts.emplace_back(line);
      continue;
    }
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      MDLM_FAIL("stdin: line ", line_no, ": invalid JSON (", e.what(), ")");
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) MDLM_FAIL("stdin: line ", line_no, ": no \"text\" string field");
    texts.push_back(j["text"].get<std::string>());
  }
  with_tokenizer(args.str("--tokenizer"), [&](const auto& tok) {
    std::vector<std::vector<std::int32_t>> out(texts.size());
    if constexpr (requires { tok.encode_with_special(std::string_view{}); }) {
      if (special) {
#pragma omp parallel for schedule(dynamic, 64)
        for (std::int64_t i = 0; i < static_cast<std::int64_t>(texts.size()); ++i)
          out[static_cast<std::size_t>(i)] = tok.encode_with_special(texts[static_cast<std::size_t>(i)]);
      }
    } else {
      MDLM_CHECK(!special, "--special 1 is only meaningful for the gpt2 tokenizer");
    }
    if (!special) {
      std::vector<std::string_view> views(texts.begin(), texts.end());
      out = encode_batch(tok, views);
    }
    std::string buf;
    for (const auto& ids : out) {
      buf += "{\"ids\": [";
      for (std::size_t k = 0; k < ids.size(); ++k) {
        if (k) buf += ", ";
        buf += std::to_string(ids[k]);
      }
      buf += "]}\n";
    }
    std::fwrite(buf.data(), 1, buf.size(), stdout);
    return 0;
  });
  return 0;
}

int prepare(int argc, char** argv) {
  std::string tokenizer, out;
  std::vector<std::filesystem::path> inputs;
  double valid_fraction = 0.05;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      MDLM_CHECK(i + 1 < argc, "flag '", flag, "' needs a value");
      return argv[++i];
    };
    if (flag == "--tokenizer") tokenizer = value();
    else if (flag == "--out") out = value();
    else if (flag == "--valid-fraction") valid_fraction = std::stod(value());
    else if (flag == "--input") {
      while (i + 1 < argc && argv[i + 1][0] != '-') inputs.emplace_back(argv[++i]);
    } else unknown_flag("prepare", flag, {"--tokenizer", "--input", "--out", "--valid-fraction", "--threads", "--help"});
  }
  MDLM_CHECK(!tokenizer.empty() && !out.empty() && !inputs.empty(),
             "usage: mdlm prepare --tokenizer SPEC --input FILE... --out DIR [--valid-fraction F]");
  const auto t0 = std::chrono::steady_clock::now();
  PrepareResult r = prepare_corpus(tokenizer, inputs, out, valid_fraction);
  std::printf("prepared %s with %s in %.2f s: train %lld documents / %lld tokens, valid %lld documents / %lld tokens, vocab %lld\n",
              out.c_str(), tokenizer.c_str(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
              static_cast<long long>(r.train_docs), static_cast<long long>(r.train_tokens), static_cast<long long>(r.valid_docs),
              static_cast<long long>(r.valid_tokens), static_cast<long long>(r.vocab_size));
  return 0;
}

const std::map<std::string, std::string> kTrainDefaults = {
    {"--data", "out/kjv-bytes"}, {"--out", "out/run"}, {"--preset", ""}, {"--hidden", "128"}, {"--blocks", "4"},
    {"--heads", "4"}, {"--cond-dim", "64"}, {"--seq-len", "128"}, {"--batch", "16"}, {"--accum", "1"},
    {"--steps", "300"}, {"--lr", "1e-3"}, {"--warmup", "50"}, {"--lr-schedule", "constant"}, {"--weight-decay", "0"},
    {"--clip", "1.0"}, {"--ema", "0.9999"}, {"--seed", "0"}, {"--backend", ""}, {"--objective", "mdlm"},
    {"--style", "wrap"}, {"--dropout", "0.1"}, {"--log-every", "10"}, {"--eval-every", "100"},
    {"--eval-batches", "16"}, {"--save-every", "100"}, {"--stop-after", "0"}, {"--schedule", "loglinear"},
    {"--schedule-eps", ""}, {"--sigma-min", ""}, {"--sigma-max", ""}, {"--schedule-w", ""}, {"--dtype", ""}, {"--zero", "0"}};

double real(const Args& a, const std::string& f) {
  try {
    return std::stod(a.str(f));
  } catch (const std::exception&) {
    MDLM_FAIL("flag '", f, "' expects a number, got '", a.str(f), "'");
  }
}

// ---- schedules: the one place where a name becomes a schedule type ----------------------
// A record is the checkpoint's {"name": ..., parameters} (diffusion/schedule_json.hpp); a
// checkpoint without one (written before schedules were recorded) means log-linear.
template <class F>
auto with_schedule(const nlohmann::json& rec, F&& f) {
  const std::string name = rec.value("name", std::string("loglinear"));
  if (name == "loglinear") return f(rec.get<LogLinearSchedule>());
  if (name == "cosine") return f(rec.get<CosineSchedule>());
  if (name == "linear") return f(rec.get<LinearSchedule>());
  if (name == "geometric") return f(rec.get<GeometricSchedule>());
  if (name == "polynomial") return f(rec.get<PolynomialSchedule>());
  MDLM_FAIL("unknown schedule '", name, "' (expected loglinear, cosine, linear, geometric or polynomial)");
}

// The checkpoint's schedule with every parameter (log-linear for a checkpoint without one).
nlohmann::json schedule_of(const nlohmann::json& training_state) {
  const nlohmann::json rec = training_state.value("schedule", nlohmann::json{{"name", "loglinear"}});
  return with_schedule(rec, [](auto sched) { return schedule_record(sched); });
}

// --schedule NAME and its parameters (--schedule-eps, --sigma-min, --sigma-max, --schedule-w)
// as a record; a parameter the schedule does not have, or a value out of range, is an error
// naming the flag.
nlohmann::json schedule_from_flags(const Args& args, bool ar);

// Trains with the objective type `obj` on the chosen backend, data-parallel over the ranks of
// mpirun/srun where built with MPI (one rank otherwise).
template <class Obj>
TrainResult run_trainer(const std::string& backend, const std::string& dtype, TrainConfig& cfg, const Obj& obj) {
  if (backend == "host") {
    MDLM_CHECK(dtype == "f32" || dtype == "f64", "--dtype ", dtype, ": the Host trains f32 or f64");
    Host host = host_context();
#if MDLM_WITH_MPI
    MpiCommunicator ranks;
#else
    SingleProcess ranks;
#endif
    return dtype == "f64" ? Trainer<Host, double, double, Obj>{obj}.run(host, cfg, ranks)
                          : Trainer<Host, float, float, Obj>{obj}.run(host, cfg, ranks);
  }
  MDLM_CHECK(dtype == "bf16", "--dtype ", dtype, ": the CUDA backend trains bf16 (mixed precision)");
#if MDLM_WITH_CUDA
  MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
  cfg.peak_tflops = 989.4;
#if MDLM_WITH_NCCL
  MpiCommunicator mpi;
  Cuda ctx(NcclCommunicator::device_for(mpi));
  NcclCommunicator ranks(mpi, ctx);
  return Trainer<Cuda, bf16, float, Obj>{obj}.run(ctx, cfg, ranks);
#else
#if MDLM_WITH_MPI
  MDLM_CHECK(MpiCommunicator().size() == 1, "--backend cuda on several ranks: this mdlm was built without NCCL");
#endif
  Cuda ctx;
  return Trainer<Cuda, bf16, float, Obj>{obj}.run(ctx, cfg);
#endif
#else
  MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
}

nlohmann::json schedule_from_flags(const Args& args, bool ar) {
  const std::string name = args.str("--schedule");
  const std::map<std::string, std::vector<std::string>> params = {
      {"loglinear", {"--schedule-eps"}}, {"cosine", {"--schedule-eps"}}, {"linear", {"--sigma-min", "--sigma-max"}},
      {"geometric", {"--sigma-min", "--sigma-max"}}, {"polynomial", {"--schedule-w", "--schedule-eps"}}};
  MDLM_CHECK(params.count(name) == 1, "--schedule: unknown schedule '", name,
             "' (expected loglinear, cosine, linear, geometric or polynomial)");
  for (const char* f : {"--schedule", "--schedule-eps", "--sigma-min", "--sigma-max", "--schedule-w"}) {
    MDLM_CHECK(!ar || !args.was_given(f), "flag '", f, "' applies to --objective mdlm only");
  }
  // The flag -> JSON key of each parameter; absent flags keep the schedule's defaults.
  const std::map<std::string, std::string> key = {
      {"--schedule-eps", "eps"}, {"--sigma-min", "sigma_min"}, {"--sigma-max", "sigma_max"}, {"--schedule-w", "w"}};
  nlohmann::json rec{{"name", name}};
  for (const auto& [flag, k] : key) {
    if (args.str(flag).empty()) continue;
    const auto& own = params.at(name);
    MDLM_CHECK(std::find(own.begin(), own.end(), flag) != own.end(), "flag '", flag, "' does not apply to --schedule ", name,
               " (its parameters: ", [&] {
                 std::string l;
                 for (const auto& o : own) l += (l.empty() ? "" : ", ") + o;
                 return l;
               }(), ")");
    const double v = real(args, flag);
    MDLM_CHECK(std::isfinite(v), "flag '", flag, "' expects a finite number, got '", args.str(flag), "'");
    rec[k] = v;
  }
  // The resulting schedule's parameters must give a valid process.
  with_schedule(rec, [&](auto sched) {
    using S = decltype(sched);
    if constexpr (std::is_same_v<S, LinearSchedule> || std::is_same_v<S, GeometricSchedule>) {
      MDLM_CHECK(sched.sigma_max > sched.sigma_min, "--sigma-max ", sched.sigma_max, " must exceed --sigma-min ", sched.sigma_min);
      MDLM_CHECK(sched.sigma_min >= 0, "--sigma-min ", sched.sigma_min, " must be >= 0");
      if constexpr (std::is_same_v<S, GeometricSchedule>) MDLM_CHECK(sched.sigma_min > 0, "--sigma-min must be > 0 for --schedule geometric");
    } else {
      MDLM_CHECK(sched.eps >= 0 && sched.eps < 1, "--schedule-eps ", sched.eps, " must be in [0, 1)");
      if constexpr (std::is_same_v<S, PolynomialSchedule>) MDLM_CHECK(sched.w > 0, "--schedule-w ", sched.w, " must be > 0");
    }
    return 0;
  });
  return with_schedule(rec, [](auto sched) { return schedule_record(sched); });  // every parameter, defaults too
}

int train(const Args& args) {
  TrainConfig cfg;
  cfg.data_dir = args.str("--data");
  cfg.out_dir = args.str("--out");
  if (!args.str("--preset").empty()) {
    cfg.model = DiTConfig::preset(args.str("--preset"), 1);
  } else {
    cfg.model.hidden = args.integer("--hidden");
    cfg.model.blocks = args.integer("--blocks");
    cfg.model.heads = args.integer("--heads");
    cfg.model.cond_dim = args.integer("--cond-dim");
  }
  cfg.model.dropout = static_cast<float>(real(args, "--dropout"));
  cfg.model.time_conditioning = args.integer("--time-conditioning") != 0;
  const std::string objective = args.str("--objective");
  MDLM_CHECK(objective == "mdlm" || objective == "ar", "--objective: unknown objective '", objective, "' (expected mdlm or ar)");
  cfg.style = args.str("--style");
  cfg.seq_len = args.integer("--seq-len");
  cfg.batch = args.integer("--batch");
  cfg.accum = args.integer("--accum");
  cfg.steps = args.integer("--steps");
  cfg.lr.peak = real(args, "--lr");
  cfg.adam.lr = cfg.lr.peak;
  cfg.lr.warmup = args.integer("--warmup");
  cfg.lr.kind = LrSchedule::parse(args.str("--lr-schedule"));
  cfg.lr.total = cfg.steps;
  cfg.adam.weight_decay = real(args, "--weight-decay");
  cfg.clip = real(args, "--clip");
  cfg.ema = real(args, "--ema");
  cfg.seed = static_cast<std::uint64_t>(args.integer("--seed"));
  cfg.log_every = args.integer("--log-every");
  cfg.eval_every = args.integer("--eval-every");
  cfg.eval_batches = args.integer("--eval-batches");
  cfg.save_every = args.integer("--save-every");
  cfg.stop_after = args.integer("--stop-after");
  cfg.resume = args.integer("--resume") != 0;
  const std::string backend = args.str("--backend").empty() ? default_backend() : args.str("--backend");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  const std::string dtype = !args.str("--dtype").empty() ? args.str("--dtype") : backend == "host" ? "f32" : "bf16";
  cfg.zero = static_cast<int>(args.integer("--zero"));
  // The names become types here, once: the objective (and, for mdlm, the schedule).
  const nlohmann::json schedule = schedule_from_flags(args, objective == "ar");
  const TrainResult r = objective == "ar" ? run_trainer(backend, dtype, cfg, Autoregressive{})
                                          : with_schedule(schedule, [&](auto sched) {
                                              return run_trainer(backend, dtype, cfg, MaskedDiffusion<decltype(sched)>{sched});
                                            });
  if (r.valid.tokens > 0) {
    std::printf("final validation: %.4f nats/token, %s %.3f (unigram baseline %.4f nats/token)\n", r.valid.nats,
                objective == "ar" ? "perplexity" : "perplexity bound", r.valid.ppl, r.unigram_nats);
  }
  return 0;
}

int eval(const Args& args) {
  const std::string backend = args.str("--backend"), dtype = args.str("--dtype");
  MDLM_CHECK(backend == "host" || backend == "cuda", "--backend: unknown backend '", backend, "' (expected host or cuda)");
  MDLM_CHECK(dtype == "f32" || dtype == "bf16", "--dtype: unknown dtype '", dtype, "' (expected f32 or bf16)");
  MDLM_CHECK(backend == "cuda" || dtype == "f32", "--dtype ", dtype, " needs --backend cuda (the Host evaluates in f32)");
  const std::filesystem::path ckpt = args.str("--checkpoint");
  const std::filesystem::path path = std::filesystem::is_directory(ckpt) ? ckpt / "checkpoint.safetensors" : ckpt;
  LoadedCheckpoint c = load_checkpoint(path, /*with_optimizer=*/false);
  const std::filesystem::path data = args.str("--data").empty() ? std::filesystem::path(c.training_state.value("data", std::string()))
                                                                  : std::filesystem::path(args.str("--data"));
  const DataMeta meta = DataMeta::read(data);
  MDLM_CHECK(meta.vocab_size == c.model.vocab, "the data's vocabulary (", meta.vocab_size, ") differs from the checkpoint's (",
             c.model.vocab, ")");
  const Shard shard = Shard::read(data / (args.str("--split") + ".bin"));
  const std::int64_t seq_len = c.training_state.value("seq_len", std::int64_t{128});
  SequenceSet set(shard, parse_batch_style(c.training_state.value("style", std::string("wrap"))), seq_len, meta.specials);
  DiT model(c.model);
  ParamStore<Host, float> store(model.layout());
  const auto& weights = args.integer("--ema") != 0 ? c.tensors.ema : c.tensors.master;
  std::copy(weights.begin(), weights.end(), store.values().data());
  Host host = host_context();
  const std::int64_t batch = args.integer("--batch"), batches = args.integer("--batches");
  const std::uint64_t seed = c.training_state.value("seed", std::uint64_t{0}) + 1;
  // MDLM: the schedule the checkpoint was trained with.
  const nlohmann::json schedule = c.model.ar ? nlohmann::json() : schedule_of(c.training_state);
  auto run = [&](auto& ctx, const auto& params) {
    return c.model.ar ? evaluate(ctx, Autoregressive{}, model, params, set, batch, batches, seed)
                      : with_schedule(schedule, [&](auto sched) {
                          return evaluate(ctx, MaskedDiffusion<decltype(sched)>{sched}.with_mask_id(meta.specials.mask), model,
                                          params, set, batch, batches, seed);
                        });
  };
  EvalResult r;
  if (backend == "host") {
    r = run(host, store.params());
  } else {
#if MDLM_WITH_CUDA
    MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
    Cuda ctx;
    auto on_device = [&](auto tag) {  // the weights as T on the GPU (bf16: values rounded, compute in fp32)
      using T = decltype(tag);
      ParamStore<Cuda, T, float> dev(model.layout());
      const auto values = cast_vector<T>(weights);
      upload_into(ctx, values.data(), model.layout().buffer_elements(), dev.values().data());
      return run(ctx, dev.params());
    };
    r = dtype == "bf16" ? on_device(bf16{}) : on_device(float{});
#else
    MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
  }
  const std::string device = backend == "host" ? "" : "\"backend\": \"cuda\", \"dtype\": \"" + dtype + "\", ";
  std::printf("{\"checkpoint\": \"%s\", \"split\": \"%s\", \"objective\": \"%s\", %s%s\"tokens\": %lld, \"nats_per_token\": %.6f, \"%s\": %.6f}\n",
              path.string().c_str(), args.str("--split").c_str(), c.model.ar ? "ar" : "mdlm", device.c_str(),
              c.model.ar ? "" : ("\"schedule\": " + schedule.dump() + ", ").c_str(), static_cast<long long>(r.tokens), r.nats,
              c.model.ar ? "perplexity" : "perplexity_bound", r.ppl);
  return 0;
}

// Loads a checkpoint's EMA (or raw) weights into a Host fp32 store.
struct LoadedModel {
  LoadedCheckpoint ckpt;
  DiT model;
  ParamStore<Host, float> store;
  std::int64_t mask_id;
  std::string tokenizer;
  explicit LoadedModel(const std::filesystem::path& dir_or_file, bool ema = true)
      : ckpt(load_checkpoint(std::filesystem::is_directory(dir_or_file) ? dir_or_file / "checkpoint.safetensors" : dir_or_file,
                             false)),
        model(ckpt.model),
        store(model.layout()),
        mask_id(ckpt.training_state.value("mask_id", ckpt.model.vocab - 1)),
        tokenizer(ckpt.training_state.value("tokenizer", std::string("bytes"))) {
    const auto& w = ema ? ckpt.tensors.ema : ckpt.tensors.master;
    std::copy(w.begin(), w.end(), store.values().data());
  }
};

struct Generated {
  std::vector<std::int32_t> ids;
  std::int64_t n, len, nfe_calls, nfe_sequences;
  double seconds;
  std::string backend;
  bool cuda_graph = false;
  std::string note;
};

// Samples with the schedule the checkpoint was trained with (`sched`).
template <class Schedule>
Generated generate_with(LoadedModel& m, const Args& args, Host& host, const Schedule& sched) {
  MDLM_CHECK(!m.model.config().ar, "mdlm sample needs an MDLM checkpoint (this one is the AR baseline)");
  SamplerConfig cfg;
  cfg.kind = parse_sampler(args.str("--sampler"));
  cfg.steps = args.integer("--steps");
  cfg.seed = static_cast<std::uint64_t>(args.integer("--seed"));
  cfg.filters.temperature = real(args, "--temperature");
  cfg.filters.top_p = real(args, "--top-p");
  cfg.filters.top_k = args.integer("--top-k");
  cfg.threshold = real(args, "--threshold");
  cfg.draw = args.integer("--paper-fp32-draws") != 0 ? DrawMode::PaperFp32 : DrawMode::Exact;
  const std::int64_t n = args.integer("--num-samples"), len = args.integer("--length");
  const std::int64_t window = args.integer("--window") > 0 ? args.integer("--window")
                                                            : m.ckpt.training_state.value("seq_len", std::int64_t{128});
  std::vector<std::int32_t> prompt;
  with_tokenizer(m.tokenizer, [&](const auto& tok) {
    const SpecialTokens sp = tok.specials();
    if (sp.bos >= 0) prompt.push_back(sp.bos);
    for (std::int32_t id : tok.encode(args.str("--prompt"))) prompt.push_back(id);
    return 0;
  });
  // Tokens the training data never contained stay out of samples (the model can only have
  // learned that they are rare): their output bias is lowered by 1e4, which leaves every other
  // token's probability as the renormalized rest. --allow-unseen keeps the model as trained.
  if (args.integer("--allow-unseen") == 0 && m.ckpt.training_state.contains("unseen_ids")) {
    auto bias = m.store.value("output_layer.linear.bias");
    for (std::int32_t id : m.ckpt.training_state.at("unseen_ids").get<std::vector<std::int32_t>>()) {
      MDLM_CHECK(id >= 0 && id < bias.rows * bias.cols, "checkpoint: unseen id ", id, " outside the vocabulary");
      bias.data[id] -= 1e4f;
    }
  }
  Denoiser d = model_denoiser(host, m.model, m.store, m.mask_id);
  SampleResult r;
  const std::string backend = args.str("--backend").empty() ? default_backend() : args.str("--backend");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  cfg.cuda_graph = args.integer("--no-cuda-graph") == 0;
  const bool semi_ar = len > window || args.integer("--stride") > 0;
  const std::int64_t stride = args.integer("--stride") > 0 ? args.integer("--stride") : window / 2;
  const std::int64_t span = semi_ar ? window : len;
  MDLM_CHECK(static_cast<std::int64_t>(prompt.size()) < span, "the prompt (", prompt.size(), " tokens) must be shorter than ",
             semi_ar ? "the window " : "--length ", span);
  std::vector<std::int32_t> init(static_cast<std::size_t>(n * len), static_cast<std::int32_t>(m.mask_id));
  for (std::int64_t b = 0; b < n; ++b) std::copy(prompt.begin(), prompt.end(), init.begin() + b * len);
  // the paper-era fp32 draw is a Host reproduction mode: it runs on the Host whatever the backend
  if (backend == "cuda" && cfg.draw == DrawMode::Exact) {
#if MDLM_WITH_CUDA
    MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
    const std::string dtype = args.str("--dtype");
    MDLM_CHECK(dtype == "f32" || dtype == "bf16", "--dtype '", dtype, "' (expected f32 or bf16 with --backend cuda)");
    Cuda ctx;
    auto on_device = [&](auto tag) {  // the weights as T on the GPU (bf16: values rounded, compute in fp32)
      using T = decltype(tag);
      ParamStore<Cuda, T, float> dev(m.model.layout());
      const std::vector<float> host(m.store.values().data(), m.store.values().data() + m.model.layout().buffer_elements());
      const auto values = cast_vector<T>(host);
      upload_into(ctx, values.data(), m.model.layout().buffer_elements(), dev.values().data());
      auto run = [&](const std::vector<std::int32_t>& z0, const SamplerConfig& c) {
        return sample_on_device(ctx, m.model, dev, m.mask_id, sched, c, z0, n, span);
      };
      return semi_ar ? sample_semi_ar(run, m.mask_id, cfg, prompt, n, len, window, stride) : run(init, cfg);
    };
    r = dtype == "bf16" ? on_device(bf16{}) : on_device(float{});
    return {r.ids, n, len, r.nfe_calls, r.nfe_sequences, r.seconds, "cuda", r.cuda_graph, r.note};
#else
    MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
  }
  if (cfg.draw == DrawMode::Exact) {
    // The batch shares each forward pass (the GPU path's loop on the Host kernels); it gives
    // the per-sequence sample()'s tokens (tests/host/test_sampling.cpp).
    auto run = [&](const std::vector<std::int32_t>& z0, const SamplerConfig& c) {
      return sample_batched(host, m.model, m.store, m.mask_id, sched, c, z0, n, span);
    };
    r = semi_ar ? sample_semi_ar(run, m.mask_id, cfg, prompt, n, len, window, stride) : run(init, cfg);
  } else {
    r = semi_ar ? sample_semi_ar(d, sched, cfg, prompt, n, len, window, stride) : sample(d, sched, cfg, init, n, len);
  }
  return {r.ids, n, len, r.nfe_calls, r.nfe_sequences, r.seconds, "host", false, ""};
}

Generated generate(LoadedModel& m, const Args& args, Host& host) {
  MDLM_CHECK(!m.model.config().ar, "mdlm sample needs an MDLM checkpoint (this one is the AR baseline)");
  return with_schedule(schedule_of(m.ckpt.training_state), [&](auto sched) { return generate_with(m, args, host, sched); });
}

const std::map<std::string, std::string> kSampleDefaults = {
    {"--checkpoint", "out/kjv-mdlm"}, {"--steps", "128"}, {"--sampler", "cached"}, {"--length", "128"},
    {"--stride", "0"}, {"--window", "0"}, {"--prompt", ""}, {"--temperature", "1"}, {"--top-p", "1"}, {"--top-k", "0"},
    {"--threshold", "0"}, {"--seed", "0"}, {"--num-samples", "2"}, {"--backend", "host"}, {"--dtype", "f32"}};

int sample_cmd(const Args& args) {
  LoadedModel m(args.str("--checkpoint"));
  Host host = host_context();
  Generated g = generate(m, args, host);
  const bool json = args.integer("--json") != 0;
  with_tokenizer(m.tokenizer, [&](const auto& tok) {
    for (std::int64_t b = 0; b < g.n; ++b) {
      std::vector<std::int32_t> ids(g.ids.begin() + b * g.len, g.ids.begin() + (b + 1) * g.len);
      std::vector<std::int32_t> text_ids;
      const SpecialTokens sp = tok.specials();
      for (std::int32_t id : ids) if (id != sp.bos && id != sp.eos && id != sp.pad) text_ids.push_back(id);
      const std::string text = tok.decode(text_ids);
      if (json) {
        nlohmann::json j{{"ids", ids}, {"text", text}, {"nfe", g.nfe_sequences / g.n}, {"network_calls", g.nfe_calls},
                         {"seconds", g.seconds}, {"unigram_entropy", unigram_entropy(ids.data(), g.len)},
                         {"backend", g.backend}, {"cuda_graph", g.cuda_graph}};
        if (!g.note.empty()) j["note"] = g.note;
        std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      } else {
        std::printf("--- sample %lld (unigram entropy %.3f nats)\n%s\n", static_cast<long long>(b),
                    unigram_entropy(ids.data(), g.len), text.c_str());
      }
    }
    if (!json) {
      std::printf("--- %lld samples of %lld tokens, %s sampler, %lld steps: %lld sequence evaluations, %.2f s\n",
                  static_cast<long long>(g.n), static_cast<long long>(g.len), args.str("--sampler").c_str(),
                  static_cast<long long>(args.integer("--steps")), static_cast<long long>(g.nfe_sequences), g.seconds);
    }
    return 0;
  });
  return 0;
}

// Generative perplexity: samples from an MDLM checkpoint scored by an AR checkpoint of the same
// tokenizer (mean NLL of the samples' tokens after the first under the AR model).
int gen_ppl(const Args& args) {
  LoadedModel m(args.str("--checkpoint"));
  LoadedModel scorer(args.str("--scorer"));
  MDLM_CHECK(scorer.model.config().ar, "--scorer must be an AR checkpoint");
  MDLM_CHECK(scorer.tokenizer == m.tokenizer && scorer.model.config().vocab == m.model.config().vocab,
             "the scorer's tokenizer (", scorer.tokenizer, ") differs from the sampler's (", m.tokenizer, ")");
  Host host = host_context();
  Generated g = generate(m, args, host);
  Tape<Host, float> tape(host);
  auto out = Autoregressive{}.loss(tape, scorer.model, scorer.store.params(), TokenBatch{g.ids.data(), g.n, g.len, nullptr});
  const double nll = out.loss.value.data[0];
  double ent = 0;
  for (std::int64_t b = 0; b < g.n; ++b) ent += unigram_entropy(g.ids.data() + b * g.len, g.len) / static_cast<double>(g.n);
  std::printf("{\"samples\": %lld, \"length\": %lld, \"gen_nll\": %.6f, \"gen_ppl\": %.6f, \"mean_unigram_entropy\": %.6f, \"nfe\": %lld}\n",
              static_cast<long long>(g.n), static_cast<long long>(g.len), nll, std::exp(nll), ent,
              static_cast<long long>(g.nfe_sequences / g.n));
  return 0;
}

// ---- flags of every command: defaults, switches and one line of meaning each -------------
CommandSpec command_spec(const std::string& cmd, bool gen_ppl) {
  if (cmd == "train") return {kTrainDefaults, {"--resume", "--time-conditioning"}, ""};
  if (cmd == "sample") return {kSampleDefaults, {"--json", "--paper-fp32-draws", "--no-cuda-graph", "--allow-unseen"}, ""};
  if (cmd == "eval" && gen_ppl) {
    auto d = kSampleDefaults;
    d["--scorer"] = "";
    return {d, {"--gen-ppl", "--paper-fp32-draws", "--no-cuda-graph", "--allow-unseen"}, ""};
  }
  if (cmd == "eval") {
    return {{{"--checkpoint", "out/run"}, {"--data", ""}, {"--split", "valid"}, {"--batches", "0"}, {"--batch", "16"}, {"--ema", "1"},
             {"--backend", "host"}, {"--dtype", "f32"}},
            {},
            ""};
  }
  if (cmd == "info") return {{{"--preset", "small"}, {"--vocab", "50258"}, {"--ar", "0"}, {"--verbose", "0"}}, {}, ""};
  if (cmd == "tokenize") return {{{"--tokenizer", "gpt2:data/gpt2"}}, {"--jsonl", "--special"}, ""};
  if (cmd == "demo") return {{{"--backend", default_backend()}, {"--size", "512"}, {"--seed", "0"}}, {}, ""};
  if (cmd == "check-fixture") return {{{"--backend", "host"}, {"--dtype", "f64"}}, {}, " FILE.safetensors"};
  if (cmd == "check-trajectory") return {{{"--backend", "host"}, {"--dtype", "f64"}}, {}, " FILE.safetensors"};
  if (cmd == "prepare") return {{{"--tokenizer", ""}, {"--input", ""}, {"--out", ""}, {"--valid-fraction", "0.05"}}, {}, ""};
  if (cmd == "version") return {};
  MDLM_FAIL("unknown command '", cmd, "' (try mdlm --help)");
}

// The meaning of a flag: "cmd --flag" first, then "--flag" (same meaning in every command).
const std::map<std::string, std::string>& flag_meanings() {
  static const std::map<std::string, std::string> m = {
      {"--threads", "CPU threads of the Host backend, OpenMP and BLAS (or MDLM_NUM_THREADS; default: all cores)"},
      {"--help", "print this list and exit"},
      {"--seed", "seed of every random draw"},
      {"--backend", "host or cuda"},
      {"train --backend", "host or cuda (empty: cuda where a GPU is present, else host)"},
      {"train --data", "prepared data directory (mdlm prepare)"},
      {"train --out", "output directory: checkpoint.safetensors, metrics.jsonl/csv, loss.svg"},
      {"train --preset", "model preset tiny|small|medium (empty: use --hidden/--blocks/--heads/--cond-dim)"},
      {"train --hidden", "model width d"},
      {"train --blocks", "transformer blocks"},
      {"train --heads", "attention heads"},
      {"train --cond-dim", "width of the time conditioning"},
      {"train --seq-len", "tokens per sequence"},
      {"train --batch", "sequences per micro-batch (of the whole job: mpirun ranks each take a slice)"},
      {"train --accum", "micro-batches per optimizer step (gradient accumulation)"},
      {"train --steps", "optimizer steps of the whole run"},
      {"train --lr", "peak learning rate (AdamW)"},
      {"train --warmup", "linear learning-rate warmup steps"},
      {"train --lr-schedule", "constant or cosine after the warmup"},
      {"train --weight-decay", "AdamW weight decay"},
      {"train --clip", "global gradient-norm clipping threshold"},
      {"train --ema", "EMA decay of the weights used for validation"},
      {"train --objective", "mdlm (masked diffusion) or ar (the autoregressive baseline)"},
      {"train --style", "wrap (concatenate, cut, frame with BOS/EOS) or pad (a document per row, padded)"},
      {"train --dropout", "dropout on the residual branches"},
      {"train --log-every", "steps between progress lines"},
      {"train --eval-every", "steps between validations with the EMA weights (0: only at the end)"},
      {"train --eval-batches", "validation batches (0: the whole split)"},
      {"train --save-every", "steps between checkpoints (0: only at the end)"},
      {"train --stop-after", "stop with a checkpoint after this many steps of this run (0: never)"},
      {"train --schedule", "noise schedule: loglinear, cosine, linear, geometric or polynomial (recorded in the checkpoint)"},
      {"train --schedule-eps", "eps of loglinear, cosine and polynomial (empty: 1e-3)"},
      {"train --sigma-min", "sigma_min of linear and geometric (empty: 0 and 1e-3)"},
      {"train --sigma-max", "sigma_max of linear and geometric (empty: 10 and 1)"},
      {"train --schedule-w", "exponent w of polynomial (empty: 1)"},
      {"train --resume", "continue from OUT/checkpoint.safetensors (same config and schedule)"},
      {"train --time-conditioning", "feed sigma(t) to the model (off: a time-agnostic denoiser)"},
      {"train --dtype", "f32 or f64 on the Host, bf16 on CUDA (empty: f32 on the Host, bf16 on CUDA)"},
      {"train --zero", "data-parallel (mpirun): 1 shards the AdamW moments, master weights and EMA over the ranks (ZeRO-1)"},
      {"eval --checkpoint", "checkpoint directory or file (with --gen-ppl: the MDLM one that samples)"},
      {"eval --data", "data directory (empty: the one recorded in the checkpoint)"},
      {"eval --split", "valid or train"},
      {"eval --batches", "batches to evaluate (0: the whole split)"},
      {"eval --batch", "sequences per batch"},
      {"eval --ema", "1: the EMA weights, 0: the raw weights"},
      {"eval --gen-ppl", "generative perplexity: score samples with the AR checkpoint --scorer (takes sample's flags)"},
      {"eval --scorer", "AR checkpoint that scores the samples (with --gen-ppl)"},
      {"eval --backend", "host or cuda (cuda: the network on the GPU, --dtype f32 or bf16)"},
      {"--checkpoint", "MDLM checkpoint directory or file"},
      {"--steps", "sampler steps"},
      {"--sampler", "ancestral, cached, confidence, remdm or first-hit"},
      {"--length", "tokens per sample"},
      {"--stride", "semi-autoregressive stride (0: half the window)"},
      {"--window", "semi-autoregressive window (0: the training sequence length)"},
      {"--prompt", "text every sample starts with"},
      {"--temperature", "logit temperature"},
      {"--top-p", "nucleus probability mass (1: off)"},
      {"--top-k", "keep the k most likely tokens (0: off)"},
      {"--threshold", "confidence sampler: unmask every position above this probability (0: k per step)"},
      {"--num-samples", "samples to draw"},
      {"--dtype", "network precision with --backend cuda: f32 or bf16"},
      {"--json", "print JSON lines: ids, text, evaluations, time, unigram entropy"},
      {"--paper-fp32-draws", "the official code's fp32 Gumbel draws (a Host reproduction mode)"},
      {"--no-cuda-graph", "do not replay the sampling loop as a CUDA graph"},
      {"--allow-unseen", "let tokens the training data never contained be sampled"},
      {"info --preset", "model preset: tiny, small or medium"},
      {"info --vocab", "vocabulary size"},
      {"info --ar", "1: the AR variant"},
      {"info --verbose", "1: list every parameter tensor"},
      {"tokenize --tokenizer", "gpt2:DIR, wordpiece:FILE or bytes"},
      {"tokenize --jsonl", "input lines are JSON objects with \"text\""},
      {"tokenize --special", "gpt2: encode special tokens such as <|endoftext|>"},
      {"demo --size", "GEMM size N"},
      {"check-fixture --dtype", "f64, f32 or bf16"},
      {"check-trajectory --dtype", "f64, f32 or bf16"},
      {"prepare --tokenizer", "gpt2:DIR, wordpiece:FILE or bytes (required)"},
      {"prepare --input", "FILE... corpus files, a document per line (required)"},
      {"prepare --out", "output directory for train.bin, valid.bin, meta.json (required)"},
      {"prepare --valid-fraction", "the last fraction of the documents kept for validation"},
  };
  return m;
}

std::string flag_meaning(const std::string& cmd, const std::string& flag) {
  const auto& m = flag_meanings();
  if (auto it = m.find(cmd + " " + flag); it != m.end()) return it->second;
  if (auto it = m.find(flag); it != m.end()) return it->second;
  return "(undocumented)";
}

// `mdlm CMD --help`: every flag with its default and meaning.
void command_help(const std::string& cmd) {
  std::vector<CommandSpec> specs{command_spec(cmd)};
  if (cmd == "eval") specs.push_back(command_spec(cmd, /*gen_ppl=*/true));
  std::printf("usage: mdlm %s%s [flags]\n", cmd.c_str(), specs[0].synopsis.c_str());
  for (std::size_t k = 0; k < specs.size(); ++k) {
    if (k == 1) std::printf("with --gen-ppl (samples scored by an AR checkpoint):\n");
    for (const auto& [flag, def] : specs[k].defaults) {
      if (k == 1 && specs[0].defaults.count(flag) && flag != "--checkpoint") continue;
      std::printf("  %-22s %s (default: %s)\n", flag.c_str(), flag_meaning(cmd, flag).c_str(), def.empty() ? "none" : def.c_str());
    }
    for (const auto& flag : specs[k].switches) {
      std::printf("  %-22s %s (a switch; default: off)\n", flag.c_str(), flag_meaning(cmd, flag).c_str());
    }
  }
  std::printf("  %-22s %s\n  %-22s %s\n", "--threads", flag_meaning(cmd, "--threads").c_str(), "--help", flag_meaning(cmd, "--help").c_str());
}

void usage() {
  std::printf(
      "usage: mdlm <command> [flags]\n"
      "  version                              print the library version\n"
      "  demo [--backend host|cuda] [--size N] [--seed S]\n"
      "                                       Philox, bf16 and a checked GEMM on a backend\n"
      "  info [--preset tiny|small|medium] [--vocab V] [--ar 0|1] [--verbose 0|1]\n"
      "                                       architecture and parameter count\n"
      "  tokenize --tokenizer gpt2:DIR|wordpiece:FILE|bytes [--jsonl] [--special]\n"
      "                                       text lines (or JSON lines with \"text\") on stdin ->\n"
      "                                       JSON lines {\"ids\": [...]} on stdout\n"
      "  prepare --tokenizer SPEC --input FILE... --out DIR [--valid-fraction F]\n"
      "                                       tokenize a corpus (a document per line) into shards\n"
      "  train [--data DIR] [--out DIR] [--preset P | --hidden H --blocks L --heads N] [--seq-len L]\n"
      "        [--batch B] [--accum K] [--steps S] [--lr LR] [--warmup W] [--lr-schedule constant|cosine]\n"
      "        [--ema D] [--seed S] [--backend host|cuda] [--objective mdlm|ar] [--style wrap|pad]\n"
      "        [--dropout P] [--time-conditioning] [--eval-every N] [--save-every N] [--resume]\n"
      "        [--dtype f32|f64|bf16] [--zero 0|1]   (mpirun -np N mdlm train ...: data-parallel, --batch global)\n"
      "  eval --checkpoint DIR|FILE [--data DIR] [--split valid|train] [--batches N] [--batch B] [--ema 0|1]\n"
      "       [--backend host|cuda] [--dtype f32|bf16]\n"
      "                                       the perplexity bound (MDLM) or perplexity (AR)\n"
      "  sample --checkpoint DIR [--steps N] [--sampler ancestral|cached|confidence|remdm|first-hit]\n"
      "         [--length L] [--stride S] [--window W] [--prompt TEXT] [--temperature T] [--top-p P]\n"
      "         [--top-k K] [--threshold C] [--seed S] [--num-samples N] [--json] [--paper-fp32-draws]\n"
      "         [--backend host|cuda] [--dtype f32|bf16] [--no-cuda-graph]  (cuda: every sampler on the device, fused step kernels,\n"
      "         the loop replayed as a CUDA graph except for cached) [--allow-unseen] (by default tokens\n"
      "         the training data never contained are kept out of samples)\n"
      "  eval --gen-ppl --scorer AR_CHECKPOINT --checkpoint MDLM_CHECKPOINT [sample flags]\n"
      "  check-fixture FILE.safetensors [--backend host|cuda] [--dtype f64|f32|bf16]\n"
      "                                       run a golden fixture (forward, loss, backward) and\n"
      "                                       print a JSON report; exit 0 only within tolerance\n"
      "  check-trajectory FILE.safetensors [--backend host|cuda] [--dtype f64|f32|bf16]\n"
      "                                       replay a training trajectory (mdlm-trajectory-v1) through\n"
      "                                       the trainer's step; JSON report; exit 0 only within tolerance\n"
      "every command: --threads N (or MDLM_NUM_THREADS=N) CPU threads of the Host backend and BLAS;\n"
      "  mdlm <command> --help lists its flags with their defaults and meanings\n");
}

}  // namespace

int main(int argc_in, char** argv_in) {
  mdlm::host_retain_freed_memory();  // no trim/re-fault of the heap between GEMM calls (backend/host.hpp)
#if MDLM_WITH_MPI
  const mdlm::MpiSession mpi(&argc_in, &argv_in);  // MPI_Init under mpirun/srun only
#endif
  try {
    std::vector<char*> args(argv_in, argv_in + argc_in);
    apply_threads(args);
    args.push_back(nullptr);  // argv[argc] == nullptr, as for main
    const int argc = static_cast<int>(args.size()) - 1;
    char** argv = args.data();
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
      usage();
      return argc < 2 ? 2 : 0;
    }
    const std::string cmd = argv[1];
    if (std::any_of(argv + 2, argv + argc, [](const char* a) { return std::string(a) == "--help" || std::string(a) == "-h"; })) {
      command_help(cmd);
      return 0;
    }
    if (cmd == "version") {
      std::printf("mdlm %s (%s backend%s)\n", kVersion, MDLM_WITH_CUDA ? "host + cuda" : "host",
                  MDLM_WITH_CUDA ? "s" : "");
      return 0;
    }
    if (cmd == "info") {
      const CommandSpec c = command_spec(cmd);
      return info(Args(argc, argv, 2, c.defaults, c.switches));
    }
    if (cmd == "check-fixture") return check_fixture(argc, argv);
    if (cmd == "check-trajectory") return check_trajectory(argc, argv);
    if (cmd == "prepare") return prepare(argc, argv);
    if (cmd == "train") {
      const CommandSpec c = command_spec(cmd);
      return train(Args(argc, argv, 2, c.defaults, c.switches));
    }
    if (cmd == "eval") {
      const bool gen = std::find_if(argv + 2, argv + argc, [](const char* a) { return std::string(a) == "--gen-ppl"; }) != argv + argc;
      const CommandSpec c = command_spec(cmd, gen);
      return gen ? gen_ppl(Args(argc, argv, 2, c.defaults, c.switches)) : eval(Args(argc, argv, 2, c.defaults, c.switches));
    }
    if (cmd == "sample") {
      const CommandSpec c = command_spec(cmd);
      return sample_cmd(Args(argc, argv, 2, c.defaults, c.switches));
    }
    if (cmd == "tokenize") {
      const CommandSpec c = command_spec(cmd);
      return tokenize(Args(argc, argv, 2, c.defaults, c.switches));
    }
    if (cmd == "demo") {
      const CommandSpec c = command_spec(cmd);
      return demo(Args(argc, argv, 2, c.defaults, c.switches));
    }
    MDLM_FAIL("unknown command '", cmd, "' (try mdlm --help)");
  } catch (const mdlm::Error& e) {
    std::fprintf(stderr, "mdlm: error: %s\n", e.what());
    return 2;
  }
}
