// What the two paper recipes (train_owt.cpp, train_lm1b.cpp) share: their command line and
// training on the GPU (bf16 weights and activations, fp32 master weights) when the program is
// built with nvcc and a GPU is present, else on the Host in fp32.
#pragma once

#if defined(__CUDACC__)
#include <mdlm/cuda.cuh>
#else
#include <mdlm/mdlm.hpp>
#endif

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace recipe {

// --flag value pairs (only the flags in `values`, which hold the defaults), then the text files.
struct CommandLine {
  std::map<std::string, std::string> values;
  std::vector<std::filesystem::path> files;
  CommandLine(int argc, char** argv, std::map<std::string, std::string> defaults) : values(std::move(defaults)) {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        files.emplace_back(a);
        continue;
      }
      MDLM_CHECK(values.count(a) == 1 && i + 1 < argc, "unknown flag or missing value: '", a, "'");
      values[a] = argv[++i];
    }
    MDLM_CHECK(!files.empty(), "no text files given (usage: ", argv[0], " [--flag value]... FILE...)");
  }
  std::string str(const std::string& f) const { return values.at(f); }
  std::int64_t integer(const std::string& f) const { return std::stoll(values.at(f)); }
  double real(const std::string& f) const { return std::stod(values.at(f)); }
};

// The model: a preset (small: 12 blocks x 768) with --hidden/--blocks/--heads overriding it when given.
inline mdlm::DiTConfig model_of(const CommandLine& cl) {
  mdlm::DiTConfig m = mdlm::DiTConfig::preset(cl.str("--preset"), /*vocab: the trainer takes it from the data*/ 1);
  if (!cl.str("--hidden").empty()) m.hidden = cl.integer("--hidden");
  if (!cl.str("--blocks").empty()) m.blocks = cl.integer("--blocks");
  if (!cl.str("--heads").empty()) m.heads = cl.integer("--heads");
  return m;
}

template <class Objective>
mdlm::TrainResult train_on_gpu_or_host(const mdlm::TrainConfig& cfg) {
#if defined(__CUDACC__)
  if (mdlm::Cuda::device_count() > 0) {
    mdlm::Cuda gpu;
    return mdlm::Trainer<mdlm::Cuda, mdlm::bf16, float, Objective>{}.run(gpu, cfg);
  }
#endif
  mdlm::host_retain_freed_memory();  // keep freed heap pages between GEMM calls
  mdlm::Host host;
  return mdlm::Trainer<mdlm::Host, float, float, Objective>{}.run(host, cfg);
}

}  // namespace recipe
