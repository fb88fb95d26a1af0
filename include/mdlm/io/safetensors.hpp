#pragma once
// safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then
// the raw little-endian tensor bytes. Reading validates everything against the file (header
// size, JSON, dtypes, shapes, offsets, byte counts) and names the file and tensor in every
// error. Writing goes to a temporary file that is renamed into place only when complete, so a
// crash or a full disk never leaves a truncated file under the final name.
//
// Supported dtypes: F64, F32, BF16, F16, I64, I32, U8. get<T>() converts between float types
// (F64/F32/BF16/F16 -> double/float/bf16) and between integer types (with a range check).

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/core/bf16.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/f16.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

enum class DType { F64, F32, BF16, F16, I64, I32, U8 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
  }
  return "?";
}
inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::U8: return 1;
  }
  return 0;
}
inline bool dtype_is_float(DType d) { return d == DType::F64 || d == DType::F32 || d == DType::BF16 || d == DType::F16; }

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>) return DType::F64;
  else if constexpr (std::is_same_v<T, float>) return DType::F32;
  else if constexpr (std::is_same_v<T, bf16>) return DType::BF16;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::I32;
  else {
    static_assert(std::is_same_v<T, std::uint8_t>, "unsupported safetensors element type");
    return DType::U8;
  }
}

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;  // byte offsets into the data section
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  Shape as_shape() const {
    MDLM_CHECK(shape.size() <= static_cast<std::size_t>(Shape::kMaxRank), "tensor '", name, "' has rank ",
               shape.size());
    Shape s;
    switch (shape.size()) {
      case 0: s = Shape{}; break;
      case 1: s = Shape{shape[0]}; break;
      case 2: s = Shape{shape[0], shape[1]}; break;
      case 3: s = Shape{shape[0], shape[1], shape[2]}; break;
      case 4: s = Shape{shape[0], shape[1], shape[2], shape[3]}; break;
      case 5: s = Shape{shape[0], shape[1], shape[2], shape[3], shape[4]}; break;
      default: s = Shape{shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]}; break;
    }
    return s;
  }
};

class SafeTensors {
 public:
  static SafeTensors read(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) MDLM_FAIL("cannot open safetensors file '", path.string(), "'");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse(std::move(bytes), path.string());
  }

  // Parses a whole file's bytes; `origin` names it in errors.
  static SafeTensors parse(std::string bytes, const std::string& origin) {
    SafeTensors st;
    st.origin_ = origin;
    if (bytes.size() < 8) MDLM_FAIL(origin, ": not a safetensors file (", bytes.size(), " bytes, header needs 8)");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
    if (n > bytes.size() - 8) {
      MDLM_FAIL(origin, ": header length ", n, " exceeds the file size ", bytes.size(), " (truncated or corrupt)");
    }
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
    } catch (const nlohmann::json::exception& e) {
      MDLM_FAIL(origin, ": header is not valid JSON: ", e.what());
    }
    if (!header.is_object()) MDLM_FAIL(origin, ": header is not a JSON object");
    const std::size_t data_size = bytes.size() - 8 - n;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (!it->is_object()) MDLM_FAIL(origin, ": __metadata__ is not an object");
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (!m->is_string()) MDLM_FAIL(origin, ": metadata value '", m.key(), "' is not a string");
          st.metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      st.tensors_[it.key()] = parse_info(it.key(), *it, data_size, origin);
    }
    st.data_ = bytes.substr(8 + n);
    return st;
  }

  const std::string& origin() const { return origin_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
  }
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) MDLM_FAIL(origin_, ": no tensor named '", name, "'");
    return it->second;
  }

  // The tensor's elements converted to T (see the file comment for which conversions exist).
  template <class T>
  std::vector<T> get(const std::string& name) const {
    const TensorInfo& ti = info(name);
    const std::size_t n = static_cast<std::size_t>(ti.numel());
    std::vector<T> out(n);
    const char* src = data_.data() + ti.begin;
    constexpr bool want_float = std::is_floating_point_v<T> || std::is_same_v<T, bf16>;
    if (want_float != dtype_is_float(ti.dtype)) {
      MDLM_FAIL(origin_, ": tensor '", name, "' is ", dtype_name(ti.dtype), ", cannot read it as ",
                dtype_name(dtype_of<T>()));
    }
    for (std::size_t i = 0; i < n; ++i) {
      if constexpr (want_float) {
        double v = 0;
        switch (ti.dtype) {
          case DType::F64: v = load<double>(src, i); break;
          case DType::F32: v = load<float>(src, i); break;
          case DType::BF16: v = bf16::from_bits(load<std::uint16_t>(src, i)).to_float(); break;
          case DType::F16: v = f16_bits_to_float(load<std::uint16_t>(src, i)); break;
          default: break;
        }
        if constexpr (std::is_same_v<T, bf16>) out[i] = bf16(static_cast<float>(v));
        else out[i] = static_cast<T>(v);
      } else {
        std::int64_t v = 0;
        switch (ti.dtype) {
          case DType::I64: v = load<std::int64_t>(src, i); break;
          case DType::I32: v = load<std::int32_t>(src, i); break;
          case DType::U8: v = load<std::uint8_t>(src, i); break;
          default: break;
        }
        if (v < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
            v > static_cast<std::int64_t>(std::numeric_limits<T>::max())) {
          MDLM_FAIL(origin_, ": tensor '", name, "' element ", i, " = ", v, " does not fit ", dtype_name(dtype_of<T>()));
        }
        out[i] = static_cast<T>(v);
      }
    }
    return out;
  }

  // As get<T>, checking the shape first.
  template <class T>
  std::vector<T> get(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
    const TensorInfo& ti = info(name);
    if (ti.shape != expected_shape) {
      MDLM_FAIL(origin_, ": tensor '", name, "' has shape ", shape_str(ti.shape), ", expected ",
                shape_str(expected_shape));
    }
    return get<T>(name);
  }

  static std::string shape_str(const std::vector<std::int64_t>& s) {
    std::string r = "[";
    for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }

 private:
  template <class V>
  static V load(const char* src, std::size_t i) {
    V v;
    std::memcpy(&v, src + i * sizeof(V), sizeof(V));  // little-endian hosts only (x86-64, arm64)
    return v;
  }

  static TensorInfo parse_info(const std::string& name, const nlohmann::json& j, std::size_t data_size,
                               const std::string& origin) {
    TensorInfo ti;
    ti.name = name;
    auto bad = [&](const std::string& what) { MDLM_FAIL(origin, ": tensor '", name, "': ", what); };
    if (!j.is_object()) bad("entry is not an object");
    if (!j.contains("dtype") || !j["dtype"].is_string()) bad("missing dtype");
    const std::string dt = j["dtype"].get<std::string>();
    bool known = false;
    for (DType d : {DType::F64, DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32, DType::U8}) {
      if (dt == dtype_name(d)) {
        ti.dtype = d;
        known = true;
      }
    }
    if (!known) bad("unsupported dtype '" + dt + "'");
    if (!j.contains("shape") || !j["shape"].is_array()) bad("missing shape");
    for (const auto& d : j["shape"]) {
      if (!d.is_number_integer() || d.get<std::int64_t>() < 0) bad("shape has a non-integer or negative entry");
      ti.shape.push_back(d.get<std::int64_t>());
    }
    if (!j.contains("data_offsets") || !j["data_offsets"].is_array() || j["data_offsets"].size() != 2 ||
        !j["data_offsets"][0].is_number_unsigned() || !j["data_offsets"][1].is_number_unsigned()) {
      bad("data_offsets must be two non-negative integers");
    }
    ti.begin = j["data_offsets"][0].get<std::size_t>();
    ti.end = j["data_offsets"][1].get<std::size_t>();
    if (ti.begin > ti.end || ti.end > data_size) {
      bad("data_offsets [" + std::to_string(ti.begin) + ", " + std::to_string(ti.end) +
          "] fall outside the data section of " + std::to_string(data_size) + " bytes (truncated or corrupt)");
    }
    // The element count and byte size, checked for overflow: a shape whose product wraps around
    // 2^64 must not match the data it points at.
    std::uint64_t want = dtype_size(ti.dtype);
    for (std::int64_t d : ti.shape) {
      if (__builtin_mul_overflow(want, static_cast<std::uint64_t>(d), &want) ||
          want > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        bad("shape " + shape_str(ti.shape) + " of " + dt + " is too large");
      }
    }
    if (ti.end - ti.begin != want) {
      bad("holds " + std::to_string(ti.end - ti.begin) + " bytes but shape " + shape_str(ti.shape) + " of " + dt +
          " needs " + std::to_string(want));
    }
    return ti;
  }

  std::string origin_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string data_;
};

// Collects tensors and metadata, then writes them atomically.
class SafeTensorsWriter {
 public:
  // Stores `data` (numel elements of T) as `stored` (converting float types if they differ).
  template <class T>
  void add(const std::string& name, const std::vector<std::int64_t>& shape, const T* data,
           DType stored = dtype_of<T>()) {
    MDLM_CHECK(entries_.count(name) == 0, "duplicate tensor name '", name, "'");
    std::int64_t n = 1;
    for (auto d : shape) {
      MDLM_CHECK(d >= 0, "tensor '", name, "' has a negative dimension ", d);
      n *= d;
    }
    Entry e{stored, shape, {}};
    e.bytes.resize(static_cast<std::size_t>(n) * dtype_size(stored));
    constexpr bool is_float = std::is_floating_point_v<T> || std::is_same_v<T, bf16>;
    MDLM_CHECK(is_float == dtype_is_float(stored), "tensor '", name, "': cannot store ", dtype_name(dtype_of<T>()),
               " as ", dtype_name(stored));
    for (std::int64_t i = 0; i < n; ++i) {
      char* dst = e.bytes.data() + static_cast<std::size_t>(i) * dtype_size(stored);
      if constexpr (is_float) {
        float f = 0;
        double d = 0;
        if constexpr (std::is_same_v<T, bf16>) d = f = data[i].to_float();
        else d = static_cast<double>(data[i]), f = static_cast<float>(data[i]);
        switch (stored) {
          case DType::F64: store(dst, d); break;
          case DType::F32: store(dst, f); break;
          case DType::BF16: store(dst, bf16(f).bits); break;
          case DType::F16: store(dst, float_to_f16_bits(f)); break;
          default: break;
        }
      } else {
        const auto v = static_cast<std::int64_t>(data[i]);
        switch (stored) {
          case DType::I64: store(dst, v); break;
          case DType::I32: store(dst, static_cast<std::int32_t>(v)); break;
          case DType::U8: store(dst, static_cast<std::uint8_t>(v)); break;
          default: break;
        }
      }
    }
    entries_.emplace(name, std::move(e));
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // Serialized file contents (header + data, tensors in name order).
  std::string serialize() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& [name, e] : entries_) {
      header[name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data section to 8 bytes
    std::string out(8, '\0');
    std::uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xffu);
    out += h;
    for (const auto& kv : entries_) out.append(kv.second.bytes.data(), kv.second.bytes.size());
    return out;
  }

  // Writes to `path` + ".tmp", flushes, then renames over `path`. On any failure the temporary
  // file is removed, `path` is left as it was, and mdlm::Error names the path.
  void write(const std::filesystem::path& path) const { write_file_atomically(path, serialize()); }

  // Writes `bytes` to path.tmp, flushes it to the disk (fsync), then renames it over `path`: a
  // reader, or a process killed at any moment, sees the old file or the new one, never a
  // partial one. A failed write (a full disk: ENOSPC; a file-size limit: EFBIG) removes the
  // temporary file, leaves `path` as it was and throws an Error naming the file and the cause.
  static void write_file_atomically(const std::filesystem::path& path, const std::string& bytes) {
    const std::filesystem::path tmp = path.string() + ".tmp";
    std::FILE* f = std::fopen(tmp.string().c_str(), "wb");
    if (f == nullptr) MDLM_FAIL("cannot create '", tmp.string(), "': ", std::strerror(errno));
    int err = 0;
    if (std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fflush(f) != 0) {
      err = errno != 0 ? errno : EIO;
#if defined(__unix__) || defined(__APPLE__)
    } else if (::fsync(::fileno(f)) != 0) {
      err = errno;
#endif
    }
    if (std::fclose(f) != 0 && err == 0) err = errno != 0 ? errno : EIO;
    if (err != 0) {
      std::remove(tmp.string().c_str());
      MDLM_FAIL("writing '", path.string(), "' failed: ", std::strerror(err), " (", bytes.size(),
                " bytes); the previous file is unchanged");
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      std::remove(tmp.string().c_str());
      MDLM_FAIL("cannot rename '", tmp.string(), "' to '", path.string(), "': ", ec.message());
    }
  }

 private:
  struct Entry {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::string bytes;
  };
  template <class V>
  static void store(char* dst, V v) {
    std::memcpy(dst, &v, sizeof(V));
  }
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mdlm
