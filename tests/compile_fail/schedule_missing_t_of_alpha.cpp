// Must NOT compile: a schedule without t_of_alpha given to a sampler. The ctest entry
// host_compile_fail_schedule_t_of_alpha passes only when the compiler's error names the member.
#include "mdlm/mdlm.hpp"

struct NoInverse {  // everything but t_of_alpha
  double sigma(double t) const { return -std::log1p(-t); }
  double dsigma(double t) const { return 1.0 / (1.0 - t); }
  double alpha(double t) const { return 1.0 - t; }
  double move_chance(double t) const { return t; }
  double loss_weight(double t) const { return 1.0 / t; }
};

int main() {
  mdlm::FunctionDenoiser<> d;
  const mdlm::SampleResult r = mdlm::sample(d, NoInverse{}, mdlm::Ancestral{}, mdlm::SamplerSettings{}, {}, 0, 0);
  return static_cast<int>(r.ids.size());
}
