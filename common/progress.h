#ifndef DFC_COMMON_PROGRESS_H_
#define DFC_COMMON_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dfc {

// A one-line progress bar redrawn in place on a terminal; silent when the
// stream is not a terminal (logs and pipes get the per-epoch lines instead).
// Not thread-safe: one owner draws it.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::FILE* out = stderr);
  ~ProgressBar();

  // Sets the absolute position and an optional suffix (e.g. "loss 0.31").
  void Update(int64_t done, const std::string& suffix = "");
  // Erases the bar so the next line starts clean.
  void Finish();

  bool enabled() const { return enabled_; }

 private:
  const std::string label_;
  const int64_t total_;
  std::FILE* const out_;
  const bool enabled_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  bool drawn_ = false;
};

// "1m23s" style duration.
std::string FormatDuration(double seconds);

}  // namespace dfc

#endif  // DFC_COMMON_PROGRESS_H_
