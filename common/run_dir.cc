#include "common/run_dir.h"

#include <cstdint>
#include <filesystem>
#include <limits>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/atomic_file.h"
#include "common/dir_lock.h"
#include "common/status_macros.h"

namespace dfc {
namespace run_dir {

std::string Checkpoint(const std::string& dir, const std::string& which) { return absl::StrCat(dir, "/", which, ".ckpt"); }
std::string EpochCheckpoint(const std::string& dir, int64_t epoch) { return absl::StrCat(dir, "/epoch-", epoch, ".ckpt"); }
std::string Metrics(const std::string& dir) { return absl::StrCat(dir, "/metrics.jsonl"); }
std::string Sidecar(const std::string& checkpoint_path) { return checkpoint_path + ".json"; }
std::string SelectionDir(const std::string& dir) { return absl::StrCat(dir, "/", kSelection); }

int MetricsLineEpoch(const nlohmann::json& line) {
  if (!line.is_object() || !line.contains("epoch") || !line["epoch"].is_number_integer()) return 0;
  // An epoch beyond int (written by a rank, not by us) is no epoch.
  const int64_t epoch = line["epoch"].get<int64_t>();
  return epoch >= 1 && epoch <= std::numeric_limits<int>::max() ? static_cast<int>(epoch) : 0;
}

bool PhaseHasResumePoint(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::exists(Checkpoint(dir, kLatest), ec) ||
         std::filesystem::exists(Checkpoint(dir, kInterrupted), ec);
}

bool HasResumePoint(const std::string& dir) {
  return PhaseHasResumePoint(dir) || PhaseHasResumePoint(SelectionDir(dir));
}

std::string AttemptFile(const std::string& dir) { return (std::filesystem::path(dir) / "attempt").string(); }

absl::Status ClaimForAttempt(const std::string& dir, int attempt) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create the run directory '", dir, "': ", ec.message()));
  return WriteFileAtomically(AttemptFile(dir), absl::StrCat(attempt, "\n"));
}

namespace {
// The attempt `dir`'s attempt file records; 0 when there is no such file.
absl::StatusOr<int> RecordedAttempt(const std::string& dir) {
  const std::string path = AttemptFile(dir);
  absl::StatusOr<std::string> text = ReadFile(path, 64);
  if (absl::IsNotFound(text.status())) return 0;
  if (!text.ok()) return text.status();
  int owner = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &owner)) {
    return absl::DataLossError(absl::StrCat("'", path, "' does not hold an attempt number"));
  }
  return owner;
}

absl::Status FencedOff(const std::string& dir, int attempt, int owner) {
  return absl::AbortedError(absl::StrCat("attempt ", attempt, " no longer owns ", dir, ": the job was restarted as "
                                         "attempt ", owner, " while this rank was cut off from the coordinator; "
                                         "stopping without writing"));
}
}  // namespace

absl::Status CheckOwnedBy(const std::string& dir, int attempt) {
  DFC_ASSIGN_OR_RETURN(const int owner, RecordedAttempt(dir));
  return owner > attempt ? FencedOff(dir, attempt, owner) : absl::OkStatus();
}

absl::Status CheckClaimedFor(const std::string& dir, int attempt, std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  int owner = 0;
  while (true) {
    DFC_ASSIGN_OR_RETURN(owner, RecordedAttempt(dir));
    if (owner == attempt) return absl::OkStatus();
    if (owner > attempt) return FencedOff(dir, attempt, owner);
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "the coordinator claimed the run directory '", dir, "' for attempt ", attempt, " in its 'attempt' file, but ",
      owner == 0 ? "there is none" : absl::StrCat("it names attempt ", owner),
      " on this worker: this worker does not see the coordinator's --output-root (the coordinator and every worker "
      "need the same shared storage at that path)"));
}

absl::StatusOr<int> LockForWriting(const std::string& dir, bool shared, const std::string& who, std::string* note) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create the run directory '", dir, "': ", ec.message()));
  const std::string path = (std::filesystem::path(dir) / kLockFile).string();
  const std::string me = absl::StrCat(who, " (", ThisProcess(), " since ",
                                      absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::Now(), absl::UTCTimeZone()), " UTC)");
  auto fd = TryLockFile(path, shared ? LockMode::kShared : LockMode::kExclusive, me);
  if (fd.ok()) return fd;
  if (absl::IsUnimplemented(fd.status())) {
    *note = absl::StrCat(fd.status().message(), ": the run directory is not locked, so nothing keeps a second run "
                         "from writing there at the same time");
    return -1;
  }
  if (!absl::IsFailedPrecondition(fd.status())) return fd.status();
  return absl::FailedPreconditionError(absl::StrCat(
      shared ? "the job's run directory '" : "--out: '", dir, "' is in use by ", fd.status().message(), "; two runs in one directory would interleave their epochs "
      "in metrics.jsonl and overwrite each other's checkpoints: wait for it to end (or stop it: Ctrl-C or SIGTERM "
      "saves its step), or write elsewhere"));
}

std::string CheckpointSummary::ToJson() const {
  nlohmann::ordered_json j;
  j["arch"] = arch;
  j["epoch"] = epoch;
  j["step"] = step;
  j["val_accuracy"] = val_accuracy;
  j["val_auc"] = val_auc;
  j["val_loss"] = val_loss;
  return j.dump();
}

absl::Status WriteSidecar(const std::string& checkpoint_path, const CheckpointSummary& summary) {
  return WriteFileAtomically(Sidecar(checkpoint_path), summary.ToJson() + "\n");
}

absl::StatusOr<CheckpointSummary> ReadSidecar(const std::string& checkpoint_path) {
  DFC_ASSIGN_OR_RETURN(std::string text, ReadFile(Sidecar(checkpoint_path), 1 << 20));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("epoch") || !j["epoch"].is_number_integer()) {
    return absl::DataLossError(absl::StrCat("'", Sidecar(checkpoint_path), "' is not a checkpoint summary"));
  }
  CheckpointSummary s;
  s.arch = j.value("arch", "");
  s.epoch = j["epoch"].get<int64_t>();
  s.step = j.value("step", int64_t{0});
  s.val_accuracy = j.value("val_accuracy", 0.0);
  s.val_auc = j.value("val_auc", 0.0);
  s.val_loss = j.value("val_loss", 0.0);
  return s;
}

}  // namespace run_dir
}  // namespace dfc
