// libFuzzer target: a training checkpoint from arbitrary bytes (a safetensors file whose
// metadata holds the format, the model config and the training state), read the way
// `train --resume`, `sample` and `eval` read it (mdlm::parse_checkpoint). Either it loads, and
// then the four buffers have the size of the layout its config implies, or it is rejected with
// mdlm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "mdlm/io/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const mdlm::SafeTensors st = mdlm::SafeTensors::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    const mdlm::LoadedCheckpoint c = mdlm::parse_checkpoint(st, "fuzz", /*with_optimizer=*/true);
    const auto n = static_cast<std::size_t>(mdlm::DiT(c.model).layout().buffer_elements());
    mdlm_fuzz::require(c.tensors.master.size() == n && c.tensors.ema.size() == n && c.tensors.m.size() == n &&
                           c.tensors.v.size() == n,
                       "a loaded checkpoint's buffers have the layout's size");
  } catch (const mdlm::Error&) {
  }
  return 0;
}
