#include "serving/decoder_pool.h"

#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <new>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/sandbox.h"
#include "common/subprocess.h"

namespace dfc {
namespace {

// The wire between the pool and a decoder (one socketpair, host byte order:
// both ends are the same machine). A request is a RequestHeader and the
// encoded image; every reply (the first one says how the decoder is
// confined) is a ReplyHeader and its payload: the pixels when code is 0,
// else the error message.
constexpr uint32_t kMagic = 0x44434644;  // "DFCD"
constexpr int kMaxSize = 4096;           // output side in pixels
constexpr uint32_t kMaxMessage = 64 << 10;

struct RequestHeader {
  uint32_t magic;
  uint32_t size;
  uint64_t bytes;
};
struct ReplyHeader {
  uint32_t code;  // absl::StatusCode
  uint32_t length;
};

enum class Io { kOk, kClosed, kTimeout };

using Clock = std::chrono::steady_clock;

// Waits for `events` on fd until the deadline.
Io Wait(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Io::kTimeout;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
    if (r > 0) return Io::kOk;  // ready, or an error/hang-up the next call reports
    if (r < 0 && errno != EINTR) return Io::kClosed;
  }
}

Io SendAll(int fd, const void* data, size_t n, Clock::time_point deadline) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    if (Io w = Wait(fd, POLLOUT, deadline); w != Io::kOk) return w;
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) return Io::kClosed;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return Io::kOk;
}

Io RecvAll(int fd, void* data, size_t n, Clock::time_point deadline) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    if (Io w = Wait(fd, POLLIN, deadline); w != Io::kOk) return w;
    const ssize_t k = ::recv(fd, p, n, MSG_DONTWAIT);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) return Io::kClosed;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return Io::kOk;
}

// A reply's payload as a status (code != 0).
absl::Status ReplyStatus(uint32_t code, std::string message) {
  if (code == 0 || code > static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(absl::StrCat("the image decoder answered code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace

struct DecoderPool::Decoder {
  Subprocess process;
  int fd = -1;
  ~Decoder() {
    if (fd >= 0) ::close(fd);  // a decoder that is still alive reads end-of-file and exits
  }
  // Ends it for good (it hung, crashed, or broke the protocol) and says how.
  std::string End() {
    process.Signal(SIGKILL);
    process.Wait();
    return process.term_signal() != 0 ? SignalName(process.term_signal())
                                      : absl::StrCat("exit status ", process.exit_code());
  }
};

absl::StatusOr<std::unique_ptr<DecoderPool>> DecoderPool::Start(const DecoderPoolOptions& options) {
  if (!options.program.empty() && options.processes < 1) {
    return absl::InvalidArgumentError("decoder processes: at least 1 (or no decoder program)");
  }
  std::unique_ptr<DecoderPool> pool(new DecoderPool(options));
  if (options.program.empty()) {
    pool->confinement_ = "in the server's own process (not confined)";
    return pool;
  }
  absl::MutexLock lock(&pool->mu_);
  for (int i = 0; i < options.processes; ++i) {
    auto d = pool->Spawn(i == 0 ? &pool->confinement_ : nullptr);
    if (!d.ok()) return d.status();
    pool->idle_.push_back(std::move(*d));
    ++pool->running_;
  }
  return pool;
}

DecoderPool::DecoderPool(const DecoderPoolOptions& options) : options_(options) {}
DecoderPool::~DecoderPool() = default;

absl::StatusOr<std::unique_ptr<DecoderPool::Decoder>> DecoderPool::Spawn(std::string* confinement) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("image decoder: socketpair: ", ::strerror(errno)));
  }
  auto d = std::make_unique<Decoder>();
  d->fd = sv[0];
  SubprocessOptions so = UntrustedInputChildOptions(
      {options_.program, std::to_string(options_.limits.max_bytes), std::to_string(options_.limits.max_pixels),
       std::to_string(options_.memory_bytes)});
  so.stdio_fd = sv[1];
  so.rlimits.push_back({RLIMIT_NOFILE, 64});
  // The end of its socket ends it. PR_SET_PDEATHSIG would follow the thread
  // that started it, and the server's stream threads come and go.
  so.die_with_parent = false;
  auto child = Subprocess::Start(so);
  ::close(sv[1]);
  if (!child.ok()) return absl::ResourceExhaustedError(absl::StrCat("image decoder: ", child.status().message()));
  d->process = std::move(*child);
  // Its first reply says how it is confined, or why it could not be.
  const auto deadline = Clock::now() + std::max(options_.timeout, std::chrono::milliseconds(30000));
  ReplyHeader h{};
  Io r = RecvAll(d->fd, &h, sizeof(h), deadline);
  std::string text;
  if (r == Io::kOk && h.length <= kMaxMessage) {
    text.resize(h.length);
    r = RecvAll(d->fd, text.data(), text.size(), deadline);
  }
  if (r != Io::kOk || h.length > kMaxMessage) {
    const std::string how = d->End();
    return absl::InternalError(absl::StrCat("the image decoder ", options_.program, " did not start (", how,
                                            how == "exit status 127" ? ": missing or not executable" : "", ")"));
  }
  if (h.code != 0) {
    d->End();
    return absl::InternalError(
        absl::StrCat("the image decoder cannot confine itself: ", ReplyStatus(h.code, text).message()));
  }
  if (confinement != nullptr) *confinement = std::move(text);
  return d;
}

bool DecoderPool::CanAcquire() const { return !idle_.empty() || running_ < options_.processes; }

absl::StatusOr<std::unique_ptr<DecoderPool::Decoder>> DecoderPool::Acquire() {
  {
    absl::MutexLock lock(&mu_, absl::Condition(this, &DecoderPool::CanAcquire));
    if (!idle_.empty()) {
      std::unique_ptr<Decoder> d = std::move(idle_.front());
      idle_.pop_front();
      return d;
    }
    ++running_;
  }
  auto d = Spawn();  // outside the lock: a fork of the server takes a while
  if (!d.ok()) {
    absl::MutexLock lock(&mu_);
    --running_;
  }
  return d;
}

void DecoderPool::Release(std::unique_ptr<Decoder> d, bool healthy) {
  absl::MutexLock lock(&mu_);
  if (healthy) {
    idle_.push_back(std::move(d));
    return;
  }
  --running_;
  ++replaced_;
}

std::vector<pid_t> DecoderPool::IdlePids() {
  absl::MutexLock lock(&mu_);
  std::vector<pid_t> pids;
  for (const auto& d : idle_) pids.push_back(d->process.pid());
  return pids;
}

absl::Status DecoderPool::DecodeResizeInto(std::string_view bytes, int size, uint8_t* out) {
  // In process when there is no decoder; and an image refused on its length
  // alone, before any of its bytes is read.
  if (options_.program.empty() || bytes.size() > options_.limits.max_bytes) {
    return dfc::DecodeResizeInto(bytes, size, out, options_.limits);
  }
  if (size < 1 || size > kMaxSize) return absl::InvalidArgumentError(absl::StrCat("decode: bad output size ", size));
  const size_t pixels = static_cast<size_t>(size) * size * 3;
  for (int attempt = 0;; ++attempt) {
    auto d = Acquire();
    if (!d.ok()) return absl::UnavailableError(absl::StrCat("no image decoder: ", d.status().message()));
    Decoder& dec = **d;
    const auto deadline = Clock::now() + options_.timeout;
    const RequestHeader req{kMagic, static_cast<uint32_t>(size), bytes.size()};
    Io r = SendAll(dec.fd, &req, sizeof(req), deadline);
    if (r == Io::kOk) r = SendAll(dec.fd, bytes.data(), bytes.size(), deadline);
    const pid_t pid = dec.process.pid();
    if (r == Io::kClosed && attempt == 0) {
      // It had ended before it read this image (killed while idle): the
      // image is not to blame, so it goes to a fresh decoder once.
      const std::string how = dec.End();
      Release(std::move(*d), false);
      std::fprintf(stderr, "dfc-server: an image decoder (pid %d) had ended while idle (%s); replaced\n", pid,
                   how.c_str());
      continue;
    }
    ReplyHeader h{};
    if (r == Io::kOk) r = RecvAll(dec.fd, &h, sizeof(h), deadline);
    std::string message;
    bool protocol_ok = r != Io::kOk || (h.code == 0 ? h.length == pixels : h.length <= kMaxMessage);
    if (r == Io::kOk && protocol_ok) {
      if (h.code == 0) {
        r = RecvAll(dec.fd, out, pixels, deadline);
      } else {
        message.resize(h.length);
        r = RecvAll(dec.fd, message.data(), message.size(), deadline);
      }
    }
    if (r == Io::kOk && protocol_ok) {
      Release(std::move(*d), true);
      return h.code == 0 ? absl::OkStatus() : ReplyStatus(h.code, std::move(message));
    }
    const std::string how = dec.End();
    Release(std::move(*d), false);
    absl::Status failed;
    if (r == Io::kTimeout) {
      failed = absl::InvalidArgumentError(absl::StrCat("decoding took longer than ", options_.timeout.count(),
                                                       " ms; its decoder process was killed and replaced"));
    } else if (!protocol_ok) {
      failed = absl::InternalError(absl::StrCat("the image decoder broke the protocol (", how, "); it was replaced"));
    } else {
      failed = absl::InvalidArgumentError(absl::StrCat(
          "decoding it ended its decoder process (", how, "): a malformed image or a decoder bug; the decoder was replaced"));
    }
    std::fprintf(stderr, "dfc-server: image decoder (pid %d), an image of %zu bytes: %s\n", pid, bytes.size(),
                 std::string(failed.message()).c_str());
    return failed;
  }
}

namespace {

bool WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// 1: all read; 0: end of input before the first byte; -1: cut short.
int ReadAll(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  size_t got = 0;
  while (got < n) {
    const ssize_t k = ::read(fd, p + got, n - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return got == 0 ? 0 : -1;
    got += static_cast<size_t>(k);
  }
  return 1;
}

bool Reply(const absl::Status& st, const void* payload = nullptr, size_t n = 0) {
  std::string message;
  if (!st.ok()) {
    message = std::string(st.message().substr(0, kMaxMessage));
    payload = message.data();
    n = message.size();
  }
  const ReplyHeader h{static_cast<uint32_t>(st.code()), static_cast<uint32_t>(n)};
  return WriteAll(STDOUT_FILENO, &h, sizeof(h)) && WriteAll(STDOUT_FILENO, payload, n);
}

}  // namespace

int DecodeImagesMain(int argc, char** argv) {
  ImageLimits limits;
  uint64_t max_bytes = 0;
  int64_t memory = 0;
  if (argc != 4 || !absl::SimpleAtoi(argv[1], &max_bytes) || !absl::SimpleAtoi(argv[2], &limits.max_pixels) ||
      !absl::SimpleAtoi(argv[3], &memory) || max_bytes == 0 || limits.max_pixels <= 0 || memory <= 0) {
    Reply(absl::InvalidArgumentError("usage: dfc-decode MAX_BYTES MAX_PIXELS MEMORY_BYTES (started by dfc-server)"));
    return 3;
  }
  limits.max_bytes = static_cast<size_t>(max_bytes);
  if (absl::Status st = LimitMemory(memory); !st.ok()) {
    Reply(st);
    return 3;
  }
  // Nothing to read but the libraries it may still load; nothing to write;
  // stdin and stdout (its socket) stay open.
  SandboxPolicy policy;
  policy.read_paths = SystemReadPaths();
  auto report = EnterSandbox(policy);
  if (!report.ok()) {
    Reply(report.status());
    return 3;
  }
  const std::string described = report->Describe();
  if (!Reply(absl::OkStatus(), described.data(), described.size())) return 0;
  std::string bytes;
  std::vector<uint8_t> pixels;
  for (;;) {
    RequestHeader req{};
    const int got = ReadAll(STDIN_FILENO, &req, sizeof(req));
    if (got == 0) return 0;  // the server closed the socket
    if (got < 0 || req.magic != kMagic || req.size < 1 || req.size > kMaxSize || req.bytes > limits.max_bytes) {
      Reply(absl::InvalidArgumentError("dfc-decode: a malformed request"));
      return 3;
    }
    absl::Status st;
    try {
      bytes.resize(req.bytes);
      if (ReadAll(STDIN_FILENO, bytes.data(), bytes.size()) != 1) return 3;
      pixels.resize(static_cast<size_t>(req.size) * req.size * 3);
      st = dfc::DecodeResizeInto(bytes, static_cast<int>(req.size), pixels.data(), limits);
    } catch (const std::bad_alloc&) {
      st = absl::ResourceExhaustedError(
          absl::StrCat("decoding it needs more than the decoder's ", memory >> 20, " MiB of memory"));
    } catch (const std::exception& e) {
      st = absl::InvalidArgumentError(absl::StrCat("cannot decode image: ", e.what()));
    }
    if (!(st.ok() ? Reply(st, pixels.data(), pixels.size()) : Reply(st))) return 0;
  }
}

}  // namespace dfc
