// mdlm check-fixture FILE: a golden fixture (forward, loss, backward) against the independent
// fp64 reference; mdlm check-trajectory FILE: a training trajectory (mdlm-trajectory-v1)
// replayed through the trainer's step. Each prints a JSON report and exits 0 only within the
// dtype's tolerance.
#include <chrono>
#include <cstdio>
#include <string>

#include "cli.hpp"

namespace mdlm::cli {
namespace {

// The flags of both (the file is positional).
CommandSpec check_spec() {
  return {" FILE.safetensors", {{"--backend", "host", "host or cuda"}, {"--dtype", "f64", "f64, f32 or bf16"}}};
}

int run_check_fixture(const CommandLine& cl) {
  MDLM_CHECK(cl.argc >= 3 && cl.argv[2][0] != '-', "check-fixture needs a fixture file (mdlm check-fixture FILE.safetensors)");
  const std::string path = cl.argv[2];
  const Args args = cl.flags(check_spec(), 3);
  const std::string backend = args.str("--backend"), dtype = args.str("--dtype");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  MDLM_CHECK(dtype == "f64" || dtype == "f32" || dtype == "bf16", "unknown dtype '", dtype, "' (expected f64, f32 or bf16)");
  // Tolerances relative to each reference tensor's largest magnitude. bf16 (8-bit mantissa,
  // relative rounding 2^-9 = 2e-3 per stored activation) through ~10 stored roundings per
  // block and a softmax: errors of a few 1e-3 are expected; 5e-2 separates rounding from bugs.
  const double tol = dtype == "f64" ? 1e-10 : dtype == "f32" ? 1e-5 : 5e-2;
  GoldenFixture g = GoldenFixture::load(path);
  const GoldenReport rep = on_backend_and_dtype<GoldenReport>(
      cl, backend, dtype, [&]<class B, class T, class G>(B& ctx) { return check_golden<B, T, G>(ctx, g); });
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
int run_check_trajectory(const CommandLine& cl) {
  MDLM_CHECK(cl.argc >= 3 && cl.argv[2][0] != '-', "check-trajectory needs a trajectory file (mdlm check-trajectory FILE.safetensors)");
  const std::string path = cl.argv[2];
  const Args args = cl.flags(check_spec(), 3);
  const std::string backend = args.str("--backend"), dtype = args.str("--dtype");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  MDLM_CHECK(dtype == "f64" || dtype == "f32" || dtype == "bf16", "unknown dtype '", dtype, "' (expected f64, f32 or bf16)");
  const Trajectory tr = Trajectory::load(path);
  const auto t0 = std::chrono::steady_clock::now();
  const TrajectoryReport rep = on_backend_and_dtype<TrajectoryReport>(
      cl, backend, dtype, [&]<class B, class T, class G>(B& ctx) { return replay_trajectory<B, T, G>(ctx, tr); });
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

}  // namespace

Command check_fixture_command() { return {"check-fixture", {check_spec()}, run_check_fixture}; }
Command check_trajectory_command() { return {"check-trajectory", {check_spec()}, run_check_trajectory}; }

}  // namespace mdlm::cli
