// libFuzzer target: a safetensors file from arbitrary bytes (header JSON, offsets, dtypes,
// shapes, data size). Either it parses and every tensor's bytes can be read as its dtype, or
// it is rejected with mdlm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "mdlm/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const mdlm::SafeTensors st = mdlm::SafeTensors::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& name : st.names()) {  // reads every element as its kind
      if (mdlm::dtype_is_float(st.info(name).dtype)) (void)st.get<double>(name);
      else (void)st.get<std::int64_t>(name);
    }
  } catch (const mdlm::Error&) {
  }
  return 0;
}
