#ifndef DFC_SERVING_DECODER_POOL_H_
#define DFC_SERVING_DECODER_POOL_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "data_shards/image_codec.h"

namespace dfc {

struct DecoderPoolOptions {
  // The decoder program (dfc-decode). Empty: images are decoded in the
  // calling process, unconfined (`dfc-server --decode-processes 0`).
  std::string program;
  // Decoder processes; a stream that finds all of them busy waits.
  int processes = 2;
  // Checked on the header before any pixel is decoded.
  ImageLimits limits{size_t{12} << 20, int64_t{40} * 1000 * 1000};
  // What a decoder may allocate beyond its mapped binary (RLIMIT_AS).
  int64_t memory_bytes = int64_t{1} << 30;
  // Longest one image may take; then its decoder is killed and replaced.
  std::chrono::milliseconds timeout{30000};
};

// Decodes clients' images in separate confined processes (dfc-decode:
// seccomp without sockets, exec or new processes; Landlock with no file but
// the system libraries; an empty environment; an address-space limit), so a
// decoder bug that a crafted JPEG or PNG reaches can read no file of the
// server's and no secret in its memory, and a crash or hang fails that one
// image instead of the server. Each request goes over a socketpair: the
// encoded bytes out, the resized pixels (or the error) back. Thread-safe.
class DecoderPool {
 public:
  // Starts every decoder and waits for each to report its confinement.
  // Fails naming the cause when one cannot start or confine itself.
  static absl::StatusOr<std::unique_ptr<DecoderPool>> Start(const DecoderPoolOptions& options);
  ~DecoderPool();
  DecoderPool(const DecoderPool&) = delete;
  DecoderPool& operator=(const DecoderPool&) = delete;

  // DecodeResizeInto (data_shards/image_codec.h) run by a decoder: the same
  // pixels and errors, plus INVALID_ARGUMENT when the image crashed its
  // decoder or took longer than the timeout (the decoder is replaced).
  absl::Status DecodeResizeInto(std::string_view bytes, int size, uint8_t* out);

  // What confines the decoders ("seccomp, Landlock ABI 7"), or that images
  // are decoded in the server's own process.
  const std::string& confinement() const { return confinement_; }
  // The decoders' process ids now (idle ones; tests and logs).
  std::vector<pid_t> IdlePids() ABSL_LOCKS_EXCLUDED(mu_);
  // Decoders replaced after a crash, a hang or an unexpected exit (each
  // also logged on stderr with its pid and how it ended).
  int64_t replaced() const { return replaced_.load(); }

  struct Decoder;  // one process and its socket (decoder_pool.cc)

 private:
  explicit DecoderPool(const DecoderPoolOptions& options);
  // A started decoder that reported its confinement (into `confinement`
  // when given).
  absl::StatusOr<std::unique_ptr<Decoder>> Spawn(std::string* confinement = nullptr);
  bool CanAcquire() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An idle decoder, or a new one when fewer than `processes` run.
  absl::StatusOr<std::unique_ptr<Decoder>> Acquire() ABSL_LOCKS_EXCLUDED(mu_);
  // Back to the idle list when `healthy`; else it is ended and its slot freed.
  void Release(std::unique_ptr<Decoder> d, bool healthy) ABSL_LOCKS_EXCLUDED(mu_);

  const DecoderPoolOptions options_;
  std::string confinement_;  // set by Start
  absl::Mutex mu_;
  // Taken from the front, returned to the back: every decoder takes its
  // turn, so one that died while idle is found (and replaced) soon.
  std::deque<std::unique_ptr<Decoder>> idle_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // idle or in use
  std::atomic<int64_t> replaced_{0};
};

// dfc-decode's main: confines itself, reports that on stdout (its socket),
// then answers decode requests until the socket closes.
int DecodeImagesMain(int argc, char** argv);

}  // namespace dfc

#endif  // DFC_SERVING_DECODER_POOL_H_
