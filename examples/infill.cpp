// infill: prompting and infilling through the library API. A trained model (any run directory,
// e.g. the quickstart's) fills the middle between a fixed prefix and a fixed suffix, once with
// the ancestral sampler and once with confidence-ordered unmasking. Positions given before
// sampling are never changed; only masked positions are filled.
//   infill [RUN_DIR]     (default: out/quickstart/run)
#include <mdlm/mdlm.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace mdlm;
  Host host;
  LoadedCheckpoint ckpt = read_checkpoint(argc > 1 ? argv[1] : "out/quickstart/run");
  lower_unseen_token_bias(ckpt);  // tokens the training data never contained stay out
  TrainedModel<Host> m = to_backend(host, ckpt);
  const auto mask = static_cast<std::int32_t>(m.mask_id());
  // Sampling uses the schedule the model was trained with (custom_schedule.cpp shows another).
  const nlohmann::json trained = ckpt.training_state.value("schedule", nlohmann::json{{"name", "loglinear"}});
  MDLM_CHECK(trained.at("name") == "loglinear", "infill samples log-linear models; this one was trained with ", trained.dump());
  const auto schedule = trained.get<LogLinearSchedule>();

  // [BOS] prefix [MASK x 24] suffix: the layout every sampler gets.
  return with_tokenizer(m.tokenizer(), [&](const auto& tok) {
    std::vector<std::int32_t> z{tok.specials().bos};
    for (std::int32_t id : tok.encode("And God said, Let there be")) z.push_back(id);
    const std::size_t middle = z.size(), middle_len = 24;
    z.insert(z.end(), middle_len, mask);
    for (std::int32_t id : tok.encode(" and there was light.")) z.push_back(id);
    const auto len = static_cast<std::int64_t>(z.size());

    SamplerSettings ancestral;  // Ancestral: t -> s, each masked token is revealed with probability (a_s - a_t) / (1 - a_t)
    ancestral.steps = 32, ancestral.seed = 3;
    SamplerSettings confidence;  // Confidence (MaskGIT-style): per step, unmask the positions the model is surest of
    confidence.steps = 8, confidence.seed = 3;
    bool kept = true;
    auto infill = [&](const char* name, const auto& sampler, const SamplerSettings& cfg) {
      const SampleResult r = sample_batched(host, m.model, m.store, mask, schedule, sampler, cfg, z, 1, len);
      for (std::size_t i = 0; i < z.size(); ++i) {
        const bool given = i < middle || i >= middle + middle_len;
        kept = kept && (given ? r.ids[i] == z[i] : r.ids[i] != mask);  // given kept, every mask filled
      }
      std::printf("%-10s (%2lld evaluations): %s\n", name, static_cast<long long>(r.nfe_sequences), tok.decode(r.ids).c_str());
    };
    infill("ancestral", Ancestral{}, ancestral);
    infill("confidence", Confidence{}, confidence);
    std::printf("prefix and suffix kept, middle filled: %s\n", kept ? "yes" : "NO");
    return kept ? 0 : 1;
  });
} catch (const mdlm::Error& e) {
  std::fprintf(stderr, "infill: error: %s\n", e.what());
  return 2;
}
