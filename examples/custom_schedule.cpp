// custom_schedule: a noise schedule written by the user, plugged into training, evaluation and
// sampling without touching the library. The schedule is a plain type checked by the concept
// mdlm::NoiseSchedule (a missing member is a compile error naming it); the trainer records it
// in the checkpoint, and evaluation and sampling rebuild it from that record.
//   custom_schedule [CORPUS.txt] [OUT_DIR] [STEPS]
#include <mdlm/mdlm.hpp>

#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace user {
// 1 - alpha_t = (1 - eps) t^2: fewer masked tokens early in the forward process than log-linear.
struct SquareSchedule {
  double eps = 1e-3;
  static constexpr const char* name() { return "square"; }                    // recorded name
  double move_chance(double t) const { return (1.0 - eps) * t * t; }          // 1 - alpha_t
  double alpha(double t) const { return 1.0 - move_chance(t); }
  double sigma(double t) const { return -std::log1p(-move_chance(t)); }       // alpha_t = exp(-sigma)
  double dsigma(double t) const { return (1.0 - eps) * 2.0 * t / alpha(t); }
  double loss_weight(double t) const { return 2.0 / t; }                      // sigma' / expm1(sigma)
  double t_of_alpha(double a) const { return std::sqrt((1.0 - a) / (1.0 - eps)); }
};
// Its parameters in the checkpoint and back (nlohmann::json finds these by ADL).
inline void to_json(nlohmann::json& j, const SquareSchedule& s) { j = {{"eps", s.eps}}; }
inline void from_json(const nlohmann::json& j, SquareSchedule& s) { s.eps = j.value("eps", s.eps); }
}  // namespace user
static_assert(mdlm::NoiseSchedule<user::SquareSchedule>);

int main(int argc, char** argv) try {
  using namespace mdlm;
  host_retain_freed_memory();  // keep freed heap pages between GEMM calls (a Host training program should)
  const std::filesystem::path corpus = argc > 1 ? argv[1] : "data/kjv/kjv.valid.txt";
  const std::filesystem::path out = argc > 2 ? argv[2] : "out/custom_schedule";
  const std::int64_t steps = argc > 3 ? std::stoll(argv[3]) : 100;
  prepare_corpus("bytes", {corpus}, out / "data", 0.1);

  // Training: the schedule is part of the objective's type.
  using Objective = MaskedDiffusion<user::SquareSchedule>;
  TrainConfig cfg;
  cfg.data_dir = out / "data", cfg.out_dir = out / "run";
  cfg.model.hidden = 32, cfg.model.blocks = 1, cfg.model.heads = 2, cfg.model.cond_dim = 16, cfg.model.dropout = 0;
  cfg.seq_len = 64, cfg.batch = 8, cfg.steps = steps, cfg.lr.peak = cfg.adam.lr = 3e-3, cfg.lr.warmup = 10;
  cfg.eval_every = 0, cfg.eval_batches = 4, cfg.save_every = 0, cfg.log_every = 50;
  Host host;
  const TrainResult r = Trainer<Host, float, float, Objective>{Objective{user::SquareSchedule{.eps = 1e-3}}}.run(host, cfg);

  // The checkpoint records the schedule; rebuild it from the record.
  LoadedCheckpoint ckpt = read_checkpoint(cfg.out_dir);
  const nlohmann::json record = ckpt.training_state.at("schedule");
  std::printf("recorded schedule: %s\n", record.dump().c_str());
  const user::SquareSchedule schedule = record.get<user::SquareSchedule>();

  // Evaluation with that schedule gives the trainer's validation bound again.
  TrainedModel<Host> m = to_backend(host, ckpt);
  const DataMeta meta = DataMeta::read(cfg.data_dir);
  const Shard valid = Shard::read(cfg.data_dir / "valid.bin");
  const SequenceSet set(valid, BatchStyle::Wrap, cfg.seq_len, meta.specials);
  const EvalResult e = evaluate(host, Objective{schedule}.with_mask_id(m.mask_id()), m.model, m.store.params(), set, cfg.batch,
                                cfg.eval_batches, cfg.seed + 1);
  std::printf("validation bound: trainer %.6f, evaluate %.6f nats/token (%s)\n", r.valid.nats, e.nats,
              e.nats == r.valid.nats ? "the same" : "DIFFERENT");

  // Sampling walks the same schedule's time grid.
  lower_unseen_token_bias(ckpt);  // bytes the corpus never contained stay out of the sample
  TrainedModel<Host> sampling_model = to_backend(host, ckpt);
  SamplerSettings sampling;
  sampling.steps = 32, sampling.seed = 7;
  std::vector<std::int32_t> init(48, static_cast<std::int32_t>(m.mask_id()));
  const SampleResult s = sample_batched(host, sampling_model.model, sampling_model.store, m.mask_id(), schedule, Ancestral{}, sampling, init, 1, 48);
  std::printf("sample: %s\n", ByteTokenizer{}.decode(s.ids).c_str());
  return e.nats == r.valid.nats ? 0 : 1;
} catch (const mdlm::Error& e) {
  std::fprintf(stderr, "custom_schedule: error: %s\n", e.what());
  return 2;
}
