// dfc-server's image decoders: real dfc-decode processes on socketpairs,
// checked against the in-process codec, through /proc, and under SIGSTOP
// and SIGKILL.
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "data_shards/image_codec.h"
#include "serving/decoder_pool.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

std::string DecoderBinary() {
  return (std::filesystem::path(testing::DfcBinary()).parent_path() / "dfc-decode").string();
}

std::unique_ptr<DecoderPool> StartPool(int processes, std::chrono::milliseconds timeout = std::chrono::seconds(30),
                                       int64_t memory_bytes = int64_t{1} << 30) {
  DecoderPoolOptions o;
  o.program = DecoderBinary();
  o.processes = processes;
  o.timeout = timeout;
  o.memory_bytes = memory_bytes;
  auto pool = DecoderPool::Start(o);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

// A width x height image with a gradient (distinct pixels, so a wrong
// resize shows), or of one grey (a small file of many pixels).
std::string Encoded(int width, int height, const std::string& ext, bool flat = false) {
  RgbImage img;
  img.width = width;
  img.height = height;
  img.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) {
    img.pixels[i] = flat ? 128 : static_cast<uint8_t>((i * 7 + i / 997) & 0xFF);
  }
  auto bytes = EncodeImage(img, ext, 90);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

// What the pool answers for `bytes` equals what the codec answers in this
// process: the same pixels, or the same error.
void ExpectSameAsInProcess(DecoderPool& pool, const std::string& bytes, int size, const std::string& what) {
  const size_t n = static_cast<size_t>(size) * size * 3;
  std::vector<uint8_t> want(n), got(n);
  DecoderPoolOptions defaults;
  const absl::Status expected = DecodeResizeInto(bytes, size, want.data(), defaults.limits);
  const absl::Status actual = pool.DecodeResizeInto(bytes, size, got.data());
  EXPECT_EQ(actual, expected) << what;
  if (expected.ok() && actual.ok()) {
    EXPECT_TRUE(want == got) << what << ": other pixels";
  }
}

TEST(DecoderPoolTest, DecodesWhatTheCodecDecodesAndRefusesWhatItRefuses) {
  auto pool = StartPool(2);
  ASSERT_NE(pool, nullptr);
  const std::string jpeg = Encoded(300, 200, ".jpg"), png = Encoded(256, 256, ".png");
  ExpectSameAsInProcess(*pool, jpeg, 256, "a 300x200 JPEG");
  ExpectSameAsInProcess(*pool, jpeg, 224, "the JPEG at 224");
  ExpectSameAsInProcess(*pool, png, 256, "a 256x256 PNG");
  ExpectSameAsInProcess(*pool, "this is a text file, not an image\n", 256, "text");
  ExpectSameAsInProcess(*pool, "", 256, "no bytes");
  ExpectSameAsInProcess(*pool, jpeg.substr(0, jpeg.size() / 2), 256, "a truncated JPEG");
  ExpectSameAsInProcess(*pool, testing::PngHeader(100000, 100000), 256, "a header claiming 10^10 pixels");
  ExpectSameAsInProcess(*pool, std::string((size_t{12} << 20) + 1, 'x'), 256, "one byte over the byte limit");
  // Concurrent streams share the two decoders.
  std::vector<std::future<void>> streams;
  for (int t = 0; t < 6; ++t) {
    streams.push_back(std::async(std::launch::async, [&, t] {
      for (int i = 0; i < 10; ++i) ExpectSameAsInProcess(*pool, (t + i) % 2 ? jpeg : png, 256, "concurrent");
    }));
  }
  for (auto& s : streams) s.get();
  EXPECT_EQ(pool->replaced(), 0);
  EXPECT_EQ(pool->IdlePids().size(), 2u);
}

// Each decoder: seccomp in filter mode, no new privileges, none of the
// server's environment (a token there), no descriptor of the server's but
// its socket (and stderr), and the confinement reported.
TEST(DecoderPoolTest, DecodersAreConfinedAndHoldNothingOfTheServers) {
  ASSERT_EQ(::setenv("DFC_TOKEN", "a-secret-the-decoder-must-not-see", 1), 0);
  auto pool = StartPool(2);
  ::unsetenv("DFC_TOKEN");
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->confinement().rfind("seccomp, ", 0), 0u) << pool->confinement();
  const auto pids = pool->IdlePids();
  ASSERT_EQ(pids.size(), 2u);
  for (pid_t pid : pids) {
    EXPECT_EQ(testing::ProcStatus(pid, "Seccomp"), "2") << pid;
    EXPECT_EQ(testing::ProcStatus(pid, "NoNewPrivs"), "1") << pid;
    // The first to go if the decoders together exhaust the memory.
    EXPECT_EQ(testing::ReadFileOrDie("/proc/" + std::to_string(pid) + "/oom_score_adj"), "1000\n") << pid;
    const auto env = testing::ProcStrings(pid, "environ");
    EXPECT_FALSE(env.empty());
    for (const auto& e : env) EXPECT_NE(e.rfind("DFC_", 0), 0u) << e;
    const auto exe = std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe");
    EXPECT_EQ(exe.filename(), "dfc-decode");
    int fds = 0;
    for (const auto& fd : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
      ++fds;
      EXPECT_LE(std::stoi(fd.path().filename()), 2) << "descriptor " << fd.path() << " leaked into the decoder";
    }
    EXPECT_EQ(fds, 3);
  }
}

// A decoder that stops answering (SIGSTOP here; a decoder looping on a
// crafted image alike) fails only the image it holds, after the timeout,
// and a fresh decoder serves the next one.
TEST(DecoderPoolTest, AHungDecoderFailsItsImageAndIsReplaced) {
  auto pool = StartPool(1, std::chrono::milliseconds(1000));
  ASSERT_NE(pool, nullptr);
  const std::string jpeg = Encoded(64, 64, ".jpg");
  std::vector<uint8_t> out(256 * 256 * 3);
  ASSERT_TRUE(pool->DecodeResizeInto(jpeg, 256, out.data()).ok());
  const pid_t hung = pool->IdlePids().at(0);
  ASSERT_EQ(::kill(hung, SIGSTOP), 0);
  const absl::Status st = pool->DecodeResizeInto(jpeg, 256, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("took longer than 1000 ms"), std::string::npos) << st;
  EXPECT_EQ(pool->replaced(), 1);
  EXPECT_NE(::kill(hung, 0), 0) << "the hung decoder still exists";
  ExpectSameAsInProcess(*pool, jpeg, 256, "the next image");
  ASSERT_EQ(pool->IdlePids().size(), 1u);
  EXPECT_NE(pool->IdlePids()[0], hung);
}

// A decoder that dies while it holds an image (what a decoder bug hit by a
// crafted file does) fails that image, naming the signal; the next image is
// decoded by a fresh one.
TEST(DecoderPoolTest, ADecoderThatDiesOnAnImageFailsThatImageAlone) {
  auto pool = StartPool(1);
  ASSERT_NE(pool, nullptr);
  const std::string jpeg = Encoded(64, 64, ".jpg");
  const pid_t victim = pool->IdlePids().at(0);
  ASSERT_EQ(::kill(victim, SIGSTOP), 0);  // it holds the image unanswered...
  auto decoding = std::async(std::launch::async, [&] {
    std::vector<uint8_t> out(256 * 256 * 3);
    return pool->DecodeResizeInto(jpeg, 256, out.data());
  });
  EXPECT_EQ(decoding.wait_for(std::chrono::milliseconds(500)), std::future_status::timeout);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);  // ...and dies with it
  const absl::Status st = decoding.get();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("ended its decoder process (SIGKILL)"), std::string::npos) << st;
  EXPECT_EQ(pool->replaced(), 1);
  ExpectSameAsInProcess(*pool, jpeg, 256, "the next image");
}

// A decoder that died while idle (the OOM killer, an operator) is not the
// image's fault: the image goes to a fresh decoder and succeeds.
TEST(DecoderPoolTest, ADecoderThatDiedWhileIdleFailsNoImage) {
  auto pool = StartPool(1);
  ASSERT_NE(pool, nullptr);
  const pid_t victim = pool->IdlePids().at(0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  for (int i = 0; i < 200 && testing::ProcStatus(victim, "State").rfind("Z", 0) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // until it is gone (a zombie)
  }
  ExpectSameAsInProcess(*pool, Encoded(300, 200, ".jpg"), 256, "an image after the decoder died");
  EXPECT_EQ(pool->replaced(), 1);
}

// An image within the pixel limit that needs more memory than a decoder may
// allocate fails on its own; the pool goes on.
TEST(DecoderPoolTest, AnImageOverTheDecodersMemoryFailsAlone) {
  auto pool = StartPool(1, std::chrono::seconds(60), int64_t{64} << 20);
  ASSERT_NE(pool, nullptr);
  std::vector<uint8_t> out(256 * 256 * 3);
  const std::string big = Encoded(6000, 5000, ".jpg", /*flat=*/true);  // 90 MB of RGB
  ASSERT_LT(big.size(), size_t{12} << 20);
  std::vector<uint8_t> want(256 * 256 * 3);
  ASSERT_TRUE(DecodeResizeInto(big, 256, want.data(), DecoderPoolOptions{}.limits).ok()) << "in this process";
  const absl::Status st = pool->DecodeResizeInto(big, 256, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("needs more than the decoder's 64 MiB of memory"), std::string::npos) << st;
  ExpectSameAsInProcess(*pool, Encoded(64, 64, ".png"), 256, "the next image");
}

TEST(DecoderPoolTest, AMissingDecoderIsNamedAtStart) {
  DecoderPoolOptions o;
  o.program = "/nonexistent/dfc-decode";
  auto pool = DecoderPool::Start(o);
  ASSERT_FALSE(pool.ok());
  EXPECT_NE(pool.status().message().find("/nonexistent/dfc-decode did not start (exit status 127: missing or not "
                                         "executable)"),
            std::string::npos)
      << pool.status();
}

// Without a decoder program the pool decodes in this process (dfc-server
// --decode-processes 0), with the same answers.
TEST(DecoderPoolTest, WithoutADecoderItDecodesInProcess) {
  auto pool = DecoderPool::Start(DecoderPoolOptions{});
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_NE((*pool)->confinement().find("not confined"), std::string::npos);
  EXPECT_TRUE((*pool)->IdlePids().empty());
  ExpectSameAsInProcess(**pool, Encoded(300, 200, ".jpg"), 256, "in process");
  ExpectSameAsInProcess(**pool, "not an image", 256, "in process");
}

}  // namespace
}  // namespace dfc
