#pragma once
// What the training and bad-input tests share: scratch directories, whole-file reads and
// writes, a small prepared corpus (bytes tokenizer, the bundled KJV) and a tiny training run on it.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "mdlm/mdlm.hpp"

namespace mdlm::testing {

// An empty scratch directory under the system's temporary directory.
inline std::filesystem::path temp_dir(const std::string& name) {
  const std::filesystem::path d = std::filesystem::temp_directory_path() / ("mdlm_train_test_" + name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
inline void write_bytes(const std::filesystem::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// The repository root: $MDLM_TEST_REPO when set (a test binary run from another copy of the
// tree, as on the GPU machine: scripts/device-check.sh sets it), else this build's sources.
inline std::filesystem::path test_repo() {
  if (const char* e = std::getenv("MDLM_TEST_REPO"); e != nullptr && *e != '\0') return e;
  return MDLM_TEST_REPO;
}

// A small prepared corpus (bytes tokenizer) from the bundled KJV, prepared once per test run.
inline std::filesystem::path small_corpus() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path d = temp_dir("corpus");
    write_bytes(d / "input.txt", read_bytes(test_repo() / "data" / "kjv" / "kjv.valid.txt"));
    prepare_corpus("bytes", {d / "input.txt"}, d / "data", 0.2);
    return d / "data";
  }();
  return dir;
}

// Six steps of a 1-block model on small_corpus(), writing to `out`.
inline TrainConfig tiny_run(const std::filesystem::path& out) {
  TrainConfig c;
  c.data_dir = small_corpus();
  c.out_dir = out;
  c.model.hidden = 16;
  c.model.blocks = 1;
  c.model.heads = 2;
  c.model.cond_dim = 8;
  c.model.dropout = 0.1f;
  c.seq_len = 24;
  c.batch = 4;
  c.accum = 2;
  c.steps = 6;
  c.lr.peak = 3e-3;
  c.lr.warmup = 2;
  c.log_every = 100;
  c.eval_every = 0;
  c.eval_batches = 2;
  c.save_every = 0;
  c.quiet = true;
  return c;
}

}  // namespace mdlm::testing
