// libFuzzer target: a data directory's meta.json from arbitrary bytes (mdlm::DataMeta::parse,
// what `train` and `eval` read next to the shards). Either it parses, and then the vocabulary
// size is positive and every special id is -1 or inside it, or it is rejected with mdlm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "mdlm/data/prepare.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const mdlm::DataMeta m = mdlm::DataMeta::parse(std::string(reinterpret_cast<const char*>(data), size), "meta.json");
    mdlm_fuzz::require(m.vocab_size > 0, "vocab_size > 0");
    for (std::int32_t id : {m.specials.bos, m.specials.eos, m.specials.pad, m.specials.mask, m.specials.unk})
      mdlm_fuzz::require(id >= -1 && id < m.vocab_size, "special ids are -1 or inside the vocabulary");
  } catch (const mdlm::Error&) {
  }
  return 0;
}
