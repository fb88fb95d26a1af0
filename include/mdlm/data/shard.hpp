#pragma once
// Token shards: a fixed 64-byte little-endian header, then the ids.
//   offset  0  magic "MDLMTOKS" (8 bytes)
//           8  u32 version (1)
//          12  u32 token width in bytes (2: uint16 ids, 4: uint32 ids)
//          16  u64 token count
//          24  u64 vocabulary size (every id is below it)
//          32  i64 EOS id that ends every document (-1: none)
//          40  u64 document count
//          48  16 reserved bytes (zero)
// Documents are stored back to back, each followed by EOS, so both batching styles (wrap and
// pad) can be built from one shard. Writing is atomic (temporary file, then rename); reading
// validates the header against the file and every id against the vocabulary.

#include <cstdint>
#include <cstring>
#include <limits>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/io/safetensors.hpp"  // write_file_atomically

namespace mdlm {

struct ShardHeader {
  static constexpr char kMagic[8] = {'M', 'D', 'L', 'M', 'T', 'O', 'K', 'S'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::size_t kBytes = 64;
  std::uint32_t width = 2;
  std::uint64_t count = 0;
  std::uint64_t vocab_size = 0;
  std::int64_t eos = -1;
  std::uint64_t documents = 0;
};

// Writes documents (each followed by EOS) as one shard.
inline void write_shard(const std::filesystem::path& path, const std::vector<std::vector<std::int32_t>>& docs,
                        std::uint64_t vocab_size, std::int64_t eos) {
  MDLM_CHECK(vocab_size > 0, "write_shard: vocabulary size must be positive");
  MDLM_CHECK(eos >= 0 && static_cast<std::uint64_t>(eos) < vocab_size, "write_shard: EOS id ", eos, " outside the vocabulary");
  ShardHeader h;
  h.width = vocab_size <= 65536 ? 2 : 4;
  h.vocab_size = vocab_size;
  h.eos = eos;
  h.documents = docs.size();
  for (const auto& d : docs) h.count += d.size() + 1;
  std::string bytes(ShardHeader::kBytes + h.count * h.width, '\0');
  std::memcpy(bytes.data(), ShardHeader::kMagic, 8);
  auto put = [&](std::size_t at, auto v) { std::memcpy(bytes.data() + at, &v, sizeof v); };
  put(8, ShardHeader::kVersion);
  put(12, h.width);
  put(16, h.count);
  put(24, h.vocab_size);
  put(32, h.eos);
  put(40, h.documents);
  std::size_t at = ShardHeader::kBytes;
  auto emit = [&](std::int64_t id) {
    MDLM_CHECK(id >= 0 && static_cast<std::uint64_t>(id) < vocab_size, "write_shard: token id ", id,
               " outside the vocabulary of ", vocab_size);
    if (h.width == 2) put(at, static_cast<std::uint16_t>(id));
    else put(at, static_cast<std::uint32_t>(id));
    at += h.width;
  };
  for (const auto& d : docs) {
    for (std::int32_t id : d) emit(id);
    emit(eos);
  }
  SafeTensorsWriter::write_file_atomically(path, bytes);
}

// A shard read into memory, validated.
struct Shard {
  ShardHeader header;
  std::vector<std::int32_t> tokens;

  static Shard read(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) MDLM_FAIL("cannot open shard '", path.string(), "'");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse(bytes, path.string());
  }

  // A shard from its bytes; `p` names it in errors (the file's path).
  static Shard parse(const std::string& bytes, const std::string& p) {
    if (bytes.size() < ShardHeader::kBytes) MDLM_FAIL(p, ": ", bytes.size(), " bytes is too short for a shard header");
    if (std::memcmp(bytes.data(), ShardHeader::kMagic, 8) != 0) MDLM_FAIL(p, ": not a token shard (bad magic)");
    auto get = [&](std::size_t at, auto& v) { std::memcpy(&v, bytes.data() + at, sizeof v); };
    std::uint32_t version = 0;
    Shard s;
    get(8, version);
    get(12, s.header.width);
    get(16, s.header.count);
    get(24, s.header.vocab_size);
    get(32, s.header.eos);
    get(40, s.header.documents);
    if (version != ShardHeader::kVersion) MDLM_FAIL(p, ": shard version ", version, " (this build reads version 1)");
    if (s.header.width != 2 && s.header.width != 4) MDLM_FAIL(p, ": token width ", s.header.width, " (expected 2 or 4)");
    // The count is compared by division first: count * width must not wrap around 2^64.
    const std::uint64_t payload = bytes.size() - ShardHeader::kBytes;
    const std::uint64_t want = s.header.count <= payload / s.header.width
                                   ? ShardHeader::kBytes + s.header.count * s.header.width
                                   : std::numeric_limits<std::uint64_t>::max();
    if (bytes.size() != want) {
      MDLM_FAIL(p, ": header says ", s.header.count, " tokens of ", s.header.width, " bytes but the file has ",
                bytes.size(), " bytes (truncated or corrupt)");
    }
    // Ids are int32 in memory: a vocabulary past 2^31 would let an id through the range check
    // and turn it negative (found by fuzz/fuzz_shard.cpp).
    if (s.header.vocab_size == 0 || s.header.vocab_size > (1ULL << 31)) {
      MDLM_FAIL(p, ": vocabulary size ", s.header.vocab_size, " (expected 1 to 2^31: ids are int32)");
    }
    if (s.header.eos < 0 || static_cast<std::uint64_t>(s.header.eos) >= s.header.vocab_size) {
      MDLM_FAIL(p, ": EOS id ", s.header.eos, " is outside the vocabulary of ", s.header.vocab_size);
    }
    s.tokens.resize(s.header.count);
    for (std::uint64_t i = 0; i < s.header.count; ++i) {
      std::uint32_t v = 0;
      if (s.header.width == 2) {
        std::uint16_t w;
        get(ShardHeader::kBytes + i * 2, w);
        v = w;
      } else {
        get(ShardHeader::kBytes + i * 4, v);
      }
      if (v >= s.header.vocab_size) MDLM_FAIL(p, ": token ", i, " = ", v, " is outside the vocabulary of ", s.header.vocab_size);
      s.tokens[i] = static_cast<std::int32_t>(v);
    }
    return s;
  }
};

}  // namespace mdlm
