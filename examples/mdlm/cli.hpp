// What the `mdlm` program's commands share: their flags (parsing, --help, the nearest known
// flag for a typo), the Host thread count, and the few places where a name typed on the
// command line becomes a type (backend and dtype, noise schedule). One file per command
// (train.cpp, eval.cpp, ...) defines that command's flags and its run function; main.cpp
// picks the command.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#ifndef MDLM_WITH_CUDA
#define MDLM_WITH_CUDA 0
#endif
#if MDLM_WITH_CUDA
#include "mdlm/cuda.cuh"
#else
#include "mdlm/mdlm.hpp"
#endif
#ifndef MDLM_WITH_MPI
#define MDLM_WITH_MPI 0  // 1: built with MPI (mpirun -np N mdlm train: data-parallel)
#endif
#ifndef MDLM_WITH_NCCL
#define MDLM_WITH_NCCL 0  // 1: built with NCCL (data-parallel --backend cuda)
#endif

namespace mdlm::cli {

// One flag of a command: its default ("" where there is none) and one line of meaning.
// A switch takes no value: present means 1 (an explicit 0 or 1 may follow).
struct Flag {
  std::string name, default_value, meaning;
  bool is_switch = false;
};

// The flags of a command (or of one form of it, such as `eval --gen-ppl`).
struct CommandSpec {
  std::string synopsis;  // positional arguments, e.g. " FILE.safetensors"
  std::vector<Flag> flags;
};

// Flags every command takes (main.cpp handles them before the command's own).
inline const std::vector<Flag>& common_flags() {
  static const std::vector<Flag> flags = {
      {"--threads", "", "CPU threads of the Host backend, OpenMP and BLAS (or MDLM_NUM_THREADS; default: all cores)"},
      {"--help", "", "print this list and exit"}};
  return flags;
}

// Levenshtein distance, for "did you mean" on an unknown flag.
inline std::size_t edit_distance(const std::string& a, const std::string& b) {
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
[[noreturn]] inline void unknown_flag(const std::string& cmd, const std::string& flag, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_d = static_cast<std::size_t>(-1);
  for (const std::string& k : known) {
    const std::size_t d = edit_distance(flag, k);
    if (d < best_d) best_d = d, best = k;
  }
  MDLM_FAIL("unknown flag '", flag, "' (nearest known flag: '", best, "'; see mdlm ", cmd, " --help)");
}

// --flag value pairs after the command's positional arguments; unknown flags are errors.
struct Args {
  std::map<std::string, std::string> values;
  std::vector<std::string> given;  // the flags on the command line
  Args(const std::string& cmd, int argc, char** argv, int first, const CommandSpec& spec) {
    std::vector<std::string> switches;
    for (const Flag& f : spec.flags) {
      values[f.name] = f.is_switch ? "0" : f.default_value;
      if (f.is_switch) switches.push_back(f.name);
    }
    for (int i = first; i < argc; ++i) {
      const std::string flag = argv[i];
      if (values.count(flag) != 1) {
        std::vector<std::string> known;
        for (const Flag& f : common_flags()) known.push_back(f.name);
        for (const auto& [k, v] : values) known.push_back(k);
        unknown_flag(cmd, flag, known);
      }
      given.push_back(flag);
      if (std::find(switches.begin(), switches.end(), flag) != switches.end()) {
        const bool explicit_value = i + 1 < argc && (std::string(argv[i + 1]) == "0" || std::string(argv[i + 1]) == "1");
        values[flag] = explicit_value ? argv[++i] : "1";
        continue;
      }
      MDLM_CHECK(i + 1 < argc, "flag '", flag, "' needs a value");
      values[flag] = argv[++i];
    }
  }
  bool was_given(const std::string& f) const { return std::find(given.begin(), given.end(), f) != given.end(); }
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
  double real(const std::string& f) const {
    try {
      return std::stod(str(f));
    } catch (const std::exception&) {
      MDLM_FAIL("flag '", f, "' expects a number, got '", str(f), "'");
    }
  }
};

// What main hands a command: the whole command line (argv[1] is the command) and the Host
// thread count of --threads / MDLM_NUM_THREADS (0: OpenMP's default).
struct CommandLine {
  int argc;
  char** argv;
  int threads;
  std::string command() const { return argv[1]; }
  Args flags(const CommandSpec& spec, int first = 2) const { return Args(command(), argc, argv, first, spec); }
  // A Host context with the program's thread count.
  Host host() const {
    Host h;
    h.threads = threads;
    return h;
  }
};

// A command: its forms' flags (the first is the plain form; --help lists them all) and what runs it.
struct Command {
  std::string name;
  std::vector<CommandSpec> forms;
  std::function<int(const CommandLine&)> run;
};

// Each defined in the command's file.
Command train_command();
Command eval_command();
Command sample_command();
Command info_command();
Command tokenize_command();
Command prepare_command();
Command demo_command();
Command check_fixture_command();
Command check_trajectory_command();
CommandSpec sample_spec();  // sample.cpp; `eval --gen-ppl` takes these flags too
int gen_ppl(const CommandLine& cl, const CommandSpec& spec);  // sample.cpp, run by `eval --gen-ppl`

inline std::string default_backend() {
#if MDLM_WITH_CUDA
  return Cuda::device_count() > 0 ? "cuda" : "host";
#else
  return "host";
#endif
}

// The checking commands' one dispatch from --backend / --dtype to types: calls
// fn.operator()<B, T, G>(ctx) with Host fp64 / fp32, or CUDA fp32 / bf16 (fp32 gradients).
template <class R, class F>
R on_backend_and_dtype(const CommandLine& cl, const std::string& backend, const std::string& dtype, F&& fn) {
  if (backend == "host") {
    MDLM_CHECK(dtype != "bf16", "--dtype bf16 runs on the CUDA backend only");
    Host host = cl.host();
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
inline nlohmann::json schedule_of(const nlohmann::json& training_state) {
  const nlohmann::json rec = training_state.value("schedule", nlohmann::json{{"name", "loglinear"}});
  return with_schedule(rec, [](auto sched) { return schedule_record(sched); });
}

}  // namespace mdlm::cli
