// mdlm — command-line front end of the library: one program, a command per file in this
// directory (train.cpp, eval.cpp, sample.cpp, ...). `mdlm --help` lists the commands and
// `mdlm <command> --help` a command's flags with their defaults.
// Every command takes --threads N (or the environment variable MDLM_NUM_THREADS; the flag wins):
// the Host backend's thread count, the OpenMP default and OpenBLAS's thread count, all N.
// Errors are reported as "mdlm: error: ..." with exit code 2.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <omp.h>

#include "cli.hpp"
#if MDLM_WITH_MPI
#include "mdlm/dist/mpi.hpp"
#endif

namespace mdlm::cli {
namespace {

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
// trainer's loops) and OpenBLAS's thread count agree. Returns it (0: not set).
int take_threads(std::vector<char*>& args) {
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
    if (env == nullptr || *env == 0) return 0;
    value = env;
  }
  const int threads = parse_threads(value, source);
  omp_set_num_threads(threads);
#ifdef OPENBLAS_VERSION
  openblas_set_num_threads(threads);
#endif
  return threads;
}

std::vector<Command> commands() {
  return {train_command(),   eval_command(), sample_command(),        info_command(),
          tokenize_command(), prepare_command(), demo_command(), check_fixture_command(), check_trajectory_command()};
}

// `mdlm CMD --help`: every flag with its default and meaning.
void command_help(const Command& c) {
  std::printf("usage: mdlm %s%s [flags]\n", c.name.c_str(), c.forms[0].synopsis.c_str());
  for (std::size_t k = 0; k < c.forms.size(); ++k) {
    if (k == 1) std::printf("with --gen-ppl (samples scored by an AR checkpoint):\n");
    std::vector<Flag> flags = c.forms[k].flags;
    std::stable_sort(flags.begin(), flags.end(), [](const Flag& a, const Flag& b) { return a.is_switch < b.is_switch || (a.is_switch == b.is_switch && a.name < b.name); });
    for (const Flag& f : flags) {
      // a later form lists only what it adds (and the flag whose meaning changes)
      const bool in_first = k > 0 && std::any_of(c.forms[0].flags.begin(), c.forms[0].flags.end(), [&](const Flag& g) { return g.name == f.name; });
      if (in_first && f.name != "--checkpoint") continue;
      if (f.is_switch) {
        std::printf("  %-22s %s (a switch; default: off)\n", f.name.c_str(), f.meaning.c_str());
      } else {
        std::printf("  %-22s %s (default: %s)\n", f.name.c_str(), f.meaning.c_str(), f.default_value.empty() ? "none" : f.default_value.c_str());
      }
    }
  }
  for (const Flag& f : common_flags()) std::printf("  %-22s %s\n", f.name.c_str(), f.meaning.c_str());
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
      "        [--dtype f32|f64|bf16] [--zero 0|1] [--no-cuda-graph]   (mpirun -np N mdlm train ...: data-parallel, --batch global)\n"
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

int run(int argc_in, char** argv_in) {
  std::vector<char*> args(argv_in, argv_in + argc_in);
  const int threads = take_threads(args);
  args.push_back(nullptr);  // argv[argc] == nullptr, as for main
  const CommandLine cl{static_cast<int>(args.size()) - 1, args.data(), threads};
  if (cl.argc < 2 || cl.command() == "--help" || cl.command() == "help") {
    usage();
    return cl.argc < 2 ? 2 : 0;
  }
  const std::string cmd = cl.command();
  if (cmd == "version") {
    std::printf("mdlm %s (%s backend%s)\n", kVersion, MDLM_WITH_CUDA ? "host + cuda" : "host", MDLM_WITH_CUDA ? "s" : "");
    return 0;
  }
  for (const Command& c : commands()) {
    if (c.name != cmd) continue;
    const bool help = std::any_of(cl.argv + 2, cl.argv + cl.argc, [](const char* a) { return std::string(a) == "--help" || std::string(a) == "-h"; });
    if (help) {
      command_help(c);
      return 0;
    }
    return c.run(cl);
  }
  MDLM_FAIL("unknown command '", cmd, "' (try mdlm --help)");
}

}  // namespace
}  // namespace mdlm::cli

int main(int argc, char** argv) {
  mdlm::host_retain_freed_memory();  // no trim/re-fault of the heap between GEMM calls (backend/host.hpp)
#if MDLM_WITH_MPI
  const mdlm::MpiSession mpi(&argc, &argv);  // MPI_Init under mpirun/srun only: `mpirun -np N mdlm train ...`
#endif
  try {
    return mdlm::cli::run(argc, argv);
  } catch (const mdlm::Error& e) {
    std::fprintf(stderr, "mdlm: error: %s\n", e.what());
    return 2;
  }
}
