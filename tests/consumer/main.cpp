// A downstream program: includes the umbrella header, draws from Philox, rounds to bf16 and
// multiplies two matrices on the Host backend. Exit code 0 only if all results are right.
#include <mdlm/mdlm.hpp>

#include <cstdio>
#include <vector>

int main() {
  mdlm::U32x4 r = mdlm::philox4x32(mdlm::U32x4{{0, 0, 0, 0}}, mdlm::U32x2{{0, 0}});
  bool ok = r.v[0] == 0x6627e8d5u && r.v[3] == 0x9b00dbd8u;
  ok = ok && mdlm::bf16(1.00390625f).bits == 0x3f80;  // a tie rounds to even
  mdlm::Host host;
  std::vector<double> a{1, 2, 3, 4, 5, 6}, b{1, 0, 0, 1, 1, 1}, c(4);  // (2x3) (3x2)
  mdlm::gemm(host, mdlm::Op::N, mdlm::MatrixView<const double, mdlm::Host>(a.data(), 2, 3), mdlm::Op::N,
             mdlm::MatrixView<const double, mdlm::Host>(b.data(), 3, 2),
             mdlm::MatrixView<double, mdlm::Host>(c.data(), 2, 2));
  ok = ok && c[0] == 4 && c[1] == 5 && c[2] == 10 && c[3] == 11;
  try {
    MDLM_CHECK(c[0] == 0, "c[0] = ", c[0]);
    ok = false;
  } catch (const mdlm::Error&) {
  }
  std::printf("mdlm %s consumer: %s\n", mdlm::kVersion, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
