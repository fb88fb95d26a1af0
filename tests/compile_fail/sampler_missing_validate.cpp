// Must NOT compile: a sampler type without validate() given to sample(). The ctest entry
// host_compile_fail_sampler_validate passes only when the compiler's concept error names the member.
#include "mdlm/mdlm.hpp"

struct NoValidate {  // everything a Sampler has but validate()
  static constexpr bool caches_logits = false, remasks = false;
  mdlm::StepProbabilities probabilities(double move_t, double move_s) const { return mdlm::ancestral_probabilities(move_t, move_s); }
};

int main() {
  mdlm::FunctionDenoiser<> d;
  const mdlm::SampleResult r = mdlm::sample(d, mdlm::LogLinearSchedule{}, NoValidate{}, mdlm::SamplerSettings{}, {}, 0, 0);
  return static_cast<int>(r.ids.size());
}
