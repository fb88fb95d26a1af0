// Must NOT compile: a schedule without dsigma plugged into MaskedDiffusion. The ctest entry
// host_compile_fail_schedule_dsigma passes only when the compiler's error names the member.
#include "mdlm/mdlm.hpp"

struct NoDsigma {  // everything but dsigma
  double sigma(double t) const { return -std::log1p(-t); }
  double alpha(double t) const { return 1.0 - t; }
  double move_chance(double t) const { return t; }
  double loss_weight(double t) const { return 1.0 / t; }
  double t_of_alpha(double a) const { return 1.0 - a; }
};

int main() {
  mdlm::MaskedDiffusion<NoDsigma> objective{NoDsigma{}};
  return objective.options().mask_id < 0 ? 0 : 1;
}
