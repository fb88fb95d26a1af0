// libFuzzer target: a token shard from arbitrary bytes. Either it parses (and then every token
// is below the vocabulary size the header states) or it is rejected with mdlm::Error; nothing
// else may happen (no other exception, no crash, no sanitizer report).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mdlm/data/shard.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const mdlm::Shard s = mdlm::Shard::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.bin");
    for (std::int32_t t : s.tokens)
      if (t < 0 || static_cast<std::uint64_t>(t) >= s.header.vocab_size) std::abort();
  } catch (const mdlm::Error&) {
  }
  return 0;
}
