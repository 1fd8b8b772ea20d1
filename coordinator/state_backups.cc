#include "coordinator/state_backups.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/atomic_file.h"
#include "coordinator/job_store.h"

namespace dfc {
namespace {

namespace fs = std::filesystem;

constexpr size_t kNameSize = 24;  // jobs-YYYYMMDDTHHMMSSZ.db
constexpr char kPartial[] = ".partial";
constexpr char kStateIdFile[] = ".dfc-state-id";
constexpr std::chrono::seconds kRetryAtMost = std::chrono::minutes(10);
// A wait is cut into pieces of this at most, so that a step of the wall
// clock (which names the copies and sets their times) is followed.
constexpr std::chrono::seconds kLookAgain{30};

int64_t NowUnix() { return absl::ToUnixSeconds(absl::Now()); }

std::string CopyName(int64_t unix_s) { return absl::StrCat("jobs-", StateStamp(unix_s), ".db"); }

// When the copy named `name` was taken; nullopt for any other name (one
// that CopyName does not give back as it is).
std::optional<int64_t> CopyTime(const std::string& name) {
  if (name.size() != kNameSize || !absl::StartsWith(name, "jobs-") || !absl::EndsWith(name, ".db")) {
    return std::nullopt;
  }
  const std::string stamp = name.substr(5, kNameSize - 8);  // YYYYMMDDTHHMMSSZ
  auto number = [&](size_t at, size_t n, int* out) { return absl::SimpleAtoi(stamp.substr(at, n), out); };
  int y, mo, d, h, mi, sec;
  if (!number(0, 4, &y) || !number(4, 2, &mo) || !number(6, 2, &d) || !number(9, 2, &h) || !number(11, 2, &mi) ||
      !number(13, 2, &sec)) {
    return std::nullopt;
  }
  const int64_t t = absl::ToUnixSeconds(absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, sec), absl::UTCTimeZone()));
  if (CopyName(t) != name) return std::nullopt;  // no T or Z, 20261399..., signs, spaces
  return t;
}

std::string Flag(const std::string& dir) { return absl::StrCat("--backup-dir: '", dir, "'"); }

}  // namespace

std::string StateStamp(int64_t unix_s) {
  return absl::FormatTime("%Y%m%dT%H%M%SZ", absl::FromUnixSeconds(unix_s), absl::UTCTimeZone());
}

std::vector<std::string> StateBackups::List(const std::string& dir) {
  std::vector<std::string> copies;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (CopyTime(it->path().filename().string()) && it->is_regular_file(ec)) copies.push_back(it->path().string());
  }
  std::sort(copies.begin(), copies.end());  // fixed-width UTC stamps: by name is by time
  return copies;
}

absl::StatusOr<std::unique_ptr<StateBackups>> StateBackups::Start(StateBackupOptions options) {
  if (options.keep < 1) return absl::InvalidArgumentError("--backup-keep must be at least 1");
  if (options.interval.count() < 1) return absl::InvalidArgumentError("--backup-interval must be at least 1 s");
  const std::string& dir = options.dir;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return absl::InvalidArgumentError(Flag(dir) + " does not exist");
  if (!fs::is_directory(dir, ec)) return absl::InvalidArgumentError(Flag(dir) + " is not a directory");
  // Written once, as the copies will be (a read-only mount refuses root too).
  const std::string probe = (fs::path(dir) / absl::StrCat(".dfc-backup-probe-", ::getpid())).string();
  if (std::FILE* f = std::fopen(probe.c_str(), "w")) {
    std::fclose(f);
    std::remove(probe.c_str());
  } else {
    return absl::InvalidArgumentError(absl::StrCat(Flag(dir), " cannot be written: ", std::strerror(errno)));
  }
  if (!options.state_id.empty()) {
    const std::string marker = (fs::path(dir) / kStateIdFile).string();
    auto marked = ReadFirstLine(marker, 256);
    if (marked.ok() && *marked != options.state_id) {
      return absl::InvalidArgumentError(absl::StrCat(
          Flag(dir), " holds the copies of another state (", kStateIdFile, " says ", *marked, "; this one is ",
          options.state_id, "): give each coordinator a folder of its own (remove ", marker,
          " if the copies there are to be this state's, e.g. after restoring one of them elsewhere)"));
    }
    if (!marked.ok()) {
      if (absl::Status st = WriteFileAtomically(marker, options.state_id + "\n"); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(Flag(dir), " cannot be marked: ", st.message()));
      }
    }
  }
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // A copy being written, and SQLite's journal of it.
    if (name.size() > kNameSize && CopyTime(name.substr(0, kNameSize)) &&
        absl::StartsWith(absl::string_view(name).substr(kNameSize), kPartial)) {
      std::error_code ignored;
      fs::remove(it->path(), ignored);
    }
  }
  std::unique_ptr<StateBackups> b(new StateBackups(std::move(options)));
  const std::vector<std::string> copies = List(b->options_.dir);
  if (!copies.empty()) b->last_copy_unix_ = *CopyTime(fs::path(copies.back()).filename().string());
  b->thread_ = std::thread([p = b.get()] { p->Run(); });
  return b;
}

StateBackups::~StateBackups() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StateBackups::Run() {
  const int64_t interval = options_.interval.count();
  // The first copy is due an interval after the newest in the folder (at
  // once when there is none); a newest copy from the future (the clock
  // stepped back) delays it by one interval at most.
  int64_t due = last_copy_unix_ == 0 ? NowUnix() : std::min(last_copy_unix_ + interval, NowUnix() + interval);
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
      const int64_t wait = due - NowUnix();
      if (wait > 0) {
        wake_.wait_for(lock, std::min(std::chrono::seconds(wait), kLookAgain));
        continue;
      }
    }
    if (absl::Status st = TakeOne(); st.ok()) {
      due = NowUnix() + interval;
    } else {
      ++failures_;
      const int64_t retry = std::min<int64_t>(interval, kRetryAtMost.count());
      std::fprintf(stderr, "dfc-coordinator: the scheduled backup of the state failed: %s (trying again in %lld s)\n",
                   std::string(st.message()).c_str(), static_cast<long long>(retry));
      due = NowUnix() + retry;
    }
  }
}

absl::Status StateBackups::TakeOne() {
  const int64_t now = NowUnix();
  const std::string path = (fs::path(options_.dir) / CopyName(now)).string();
  auto jobs = JobStore::Backup(options_.database, path, "--backup-dir");
  if (!jobs.ok()) return jobs.status();
  last_copy_unix_ = now;
  ++taken_;
  std::vector<std::string> copies = List(options_.dir);
  copies.erase(std::remove(copies.begin(), copies.end(), path), copies.end());  // kept whatever its name sorts as
  const size_t others = static_cast<size_t>(options_.keep) - 1;  // kept beside the new one
  const size_t remove = copies.size() > others ? copies.size() - others : 0;
  for (size_t i = 0; i < remove; ++i) {
    std::error_code ec;
    if (!fs::remove(copies[i], ec) && ec) {
      std::fprintf(stderr, "dfc-coordinator: cannot remove the old backup '%s': %s\n", copies[i].c_str(),
                   ec.message().c_str());
    }
  }
  std::fprintf(stderr, "dfc-coordinator: backed up %lld job(s) to %s\n", static_cast<long long>(*jobs), path.c_str());
  return absl::OkStatus();
}

}  // namespace dfc
