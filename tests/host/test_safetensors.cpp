// safetensors reading and writing: every dtype round-trips; malformed files are rejected with
// errors naming the file and the tensor; writes are atomic.
#include <doctest/doctest.h>

#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mdlm/mdlm.hpp"

using namespace mdlm;

namespace {
std::string header_file(const std::string& json, std::size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  return out + json + std::string(data_bytes, '\0');
}
}  // namespace

TEST_CASE("safetensors: every dtype round-trips, with metadata") {
  SafeTensorsWriter w;
  std::vector<double> d{1.5, -2.25, 1e-300};
  std::vector<float> f{3.0f, -0.0f};
  std::vector<bf16> h{bf16(1.0f), bf16(-3.5f)};
  std::vector<std::int64_t> i64{-5, 1LL << 40};
  std::vector<std::int32_t> i32{7, -8, 9};
  std::vector<std::uint8_t> u8{0, 255};
  w.add("d", {3}, d.data());
  w.add("f", {1, 2}, f.data());
  w.add("h", {2}, h.data());
  w.add("half", {3}, d.data(), DType::F16);  // stored as F16: 1.5, -2.25 exact; 1e-300 -> 0
  w.add("i64", {2}, i64.data());
  w.add("i32", {3, 1}, i32.data());
  w.add("u8", {2}, u8.data());
  w.set_metadata("config", "{\"a\": 1}");
  SafeTensors r = SafeTensors::parse(w.serialize(), "mem");
  CHECK(r.metadata().at("config") == "{\"a\": 1}");
  CHECK(r.get<double>("d") == d);
  CHECK(r.get<float>("f") == f);
  CHECK(r.get<float>("h") == std::vector<float>{1.0f, -3.5f});
  CHECK(r.get<double>("half") == std::vector<double>{1.5, -2.25, 0.0});
  CHECK(r.info("half").dtype == DType::F16);
  CHECK(r.get<std::int64_t>("i64") == i64);
  CHECK(r.get<std::int32_t>("i32") == i32);
  CHECK(r.info("i32").shape == std::vector<std::int64_t>{3, 1});
  CHECK(r.get<std::uint8_t>("u8") == u8);
  CHECK(r.get<std::int64_t>("u8") == std::vector<std::int64_t>{0, 255});
  CHECK_THROWS_WITH_AS(r.get<float>("i64"), doctest::Contains("is I64, cannot read it as F32"), Error);
  CHECK_THROWS_WITH_AS(r.get<std::uint8_t>("i32"), doctest::Contains("element 1 = -8 does not fit U8"), Error);
  CHECK_THROWS_WITH_AS(r.get<double>("nope"), doctest::Contains("no tensor named 'nope'"), Error);
}

TEST_CASE("f16 conversion: exact values, rounding, denormals, overflow, NaN") {
  CHECK(float_to_f16_bits(1.0f) == 0x3c00);
  CHECK(float_to_f16_bits(65504.0f) == 0x7bff);
  CHECK(float_to_f16_bits(65520.0f) == 0x7c00);  // rounds to infinity
  CHECK(float_to_f16_bits(5.9604645e-8f) == 0x0001);  // smallest denormal
  CHECK(float_to_f16_bits(2.9802322e-8f) == 0x0000);  // half of it: tie to even (0)
  CHECK(float_to_f16_bits(-0.0f) == 0x8000);
  CHECK((float_to_f16_bits(std::nanf("")) & 0x7c00) == 0x7c00);
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {  // every finite half round-trips
    const auto h = static_cast<std::uint16_t>(b);
    if ((h & 0x7c00u) == 0x7c00u) continue;
    REQUIRE(float_to_f16_bits(f16_bits_to_float(h)) == h);
  }
}

TEST_CASE("safetensors: malformed files give mdlm::Error naming the problem") {
  CHECK_THROWS_WITH_AS(SafeTensors::parse("abc", "tiny.st"), doctest::Contains("tiny.st: not a safetensors file"), Error);
  CHECK_THROWS_WITH_AS(SafeTensors::parse(header_file("{}", 0).substr(0, 8) + std::string(1, '{'), "x.st"),
                       doctest::Contains("x.st: header length 2 exceeds the file size"), Error);
  CHECK_THROWS_WITH_AS(SafeTensors::parse(header_file("{not json", 0), "bad.st"),
                       doctest::Contains("bad.st: header is not valid JSON"), Error);
  CHECK_THROWS_WITH_AS(
      SafeTensors::parse(header_file(R"({"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}})", 1), "q.st"),
      doctest::Contains("tensor 'w': unsupported dtype 'Q4'"), Error);
  CHECK_THROWS_WITH_AS(
      SafeTensors::parse(header_file(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8), "t.st"),
      doctest::Contains("fall outside the data section of 8 bytes (truncated or corrupt)"), Error);
  CHECK_THROWS_WITH_AS(
      SafeTensors::parse(header_file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8), "s.st"),
      doctest::Contains("holds 8 bytes but shape [3] of F32 needs 12"), Error);
  CHECK_THROWS_WITH_AS(
      SafeTensors::parse(header_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0), "n.st"),
      doctest::Contains("negative entry"), Error);
  CHECK_THROWS_WITH_AS(SafeTensors::read("/nonexistent/file.safetensors"),
                       doctest::Contains("cannot open safetensors file '/nonexistent/file.safetensors'"), Error);
}

TEST_CASE("safetensors: a truncated real file is rejected, never read past its end") {
  std::ifstream in(std::string(MDLM_TEST_FIXTURES) + "/ar_tiny.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 1000);
  CHECK_NOTHROW(SafeTensors::parse(bytes, "ar_tiny"));
  for (std::size_t cut : {std::size_t{4}, std::size_t{100}, bytes.size() / 2, bytes.size() - 1}) {
    CAPTURE(cut);
    CHECK_THROWS_AS(SafeTensors::parse(bytes.substr(0, cut), "cut"), Error);
  }
  std::string flipped = bytes;
  flipped[20] = '\x01';  // corrupt the JSON header
  CHECK_THROWS_AS(SafeTensors::parse(flipped, "flipped"), Error);
}

TEST_CASE("safetensors: writes are atomic; a failed write leaves the old file intact") {
  const auto dir = std::filesystem::temp_directory_path() / "mdlm_st_test";
  std::filesystem::create_directories(dir);
  const auto path = dir / "w.safetensors";
  std::vector<float> v{1, 2, 3};
  SafeTensorsWriter w;
  w.add("v", {3}, v.data());
  w.write(path);
  CHECK(SafeTensors::read(path).get<float>("v") == v);
  CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  CHECK_THROWS_WITH_AS(SafeTensorsWriter::write_file_atomically(dir / "missing" / "x.safetensors", "data"),
                       doctest::Contains("cannot create"), Error);
  CHECK(SafeTensors::read(path).get<float>("v") == v);
  std::filesystem::remove_all(dir);
}

namespace {
// Runs `write` in a child process whose files may not grow past `limit` bytes (RLIMIT_FSIZE,
// with SIGXFSZ ignored, so a write that crosses it fails with EFBIG as on a full disk) and
// returns the mdlm::Error message it raised, or "no error" / "crashed".
template <class Write>
std::string message_of_write_under_limit(rlim_t limit, Write&& write) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit r{limit, limit};
    ::setrlimit(RLIMIT_FSIZE, &r);
    std::string msg = "no error";
    try {
      write();
    } catch (const Error& e) {
      msg = e.what();
    }
    if (::write(fds[1], msg.data(), msg.size()) < 0) ::_exit(2);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? msg : "crashed";
}
}  // namespace

TEST_CASE("a write that runs out of space (EFBIG under RLIMIT_FSIZE) names the file and the cause; the old file stays") {
  const auto dir = std::filesystem::temp_directory_path() / "mdlm_full_disk_test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  // A checkpoint-like safetensors file, then a larger one that cannot be written.
  const auto ckpt = dir / "checkpoint.safetensors";
  std::vector<float> small(256, 1.5f), big(1 << 16, 2.5f);
  SafeTensorsWriter w1;
  w1.add("w", {256}, small.data());
  w1.write(ckpt);
  const std::string msg = message_of_write_under_limit(64 * 1024, [&] {
    SafeTensorsWriter w2;
    w2.add("w", {1 << 16}, big.data());  // 256 KiB > the 64 KiB limit
    w2.write(ckpt);
  });
  CAPTURE(msg);
  CHECK(msg.find(ckpt.string()) != std::string::npos);
  CHECK(msg.find(std::strerror(EFBIG)) != std::string::npos);
  CHECK(msg.find("previous file is unchanged") != std::string::npos);
  CHECK(SafeTensors::read(ckpt).get<float>("w") == small);  // intact and loadable
  CHECK_FALSE(std::filesystem::exists(ckpt.string() + ".tmp"));

  // A token shard the same way.
  const auto shard = dir / "train.bin";
  std::vector<std::vector<std::int32_t>> docs(1, std::vector<std::int32_t>(100000, 7));
  const std::string smsg = message_of_write_under_limit(64 * 1024, [&] { write_shard(shard, docs, 260, 257); });
  CAPTURE(smsg);
  CHECK(smsg.find(shard.string()) != std::string::npos);
  CHECK(smsg.find(std::strerror(EFBIG)) != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(shard));
  CHECK_FALSE(std::filesystem::exists(shard.string() + ".tmp"));
  std::filesystem::remove_all(dir);
}
