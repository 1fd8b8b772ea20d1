#include "common/cpus.h"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/atomic_file.h"

namespace dfc {
namespace {

// One cgroup hierarchy mounted in this mount namespace: the cgroup path
// seen at `mountpoint` (`root`, "/" unless a container's view of the host's
// hierarchy is a sub-tree).
struct CgroupMount {
  std::string root;
  std::string mountpoint;
};

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && absl::ascii_isdigit(s[i + 1]) && absl::ascii_isdigit(s[i + 2]) &&
        absl::ascii_isdigit(s[i + 3])) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool HasOption(absl::string_view options, absl::string_view name) {
  for (absl::string_view o : absl::StrSplit(options, ',')) {
    if (o == name) return true;
  }
  return false;
}

// The first mount of cgroup2 (v2) or of the v1 hierarchy holding the cpu
// controller.
std::optional<CgroupMount> FindMount(const std::string& root, bool v2) {
  std::ifstream f(root + "/proc/self/mountinfo");
  for (std::string line; std::getline(f, line);) {
    const std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    const auto dash = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 5 || dash == fields.end() || fields.end() - dash < 4) continue;
    const absl::string_view type = dash[1], super_options = dash[3];
    if (v2 ? type == "cgroup2" : (type == "cgroup" && HasOption(super_options, "cpu"))) {
      return CgroupMount{Unescape(fields[3]), Unescape(fields[4])};
    }
  }
  return std::nullopt;
}

// This process's cgroup path in the v2 hierarchy or the v1 cpu hierarchy.
std::optional<std::string> CgroupPath(const std::string& root, bool v2) {
  std::ifstream f(root + "/proc/self/cgroup");
  for (std::string line; std::getline(f, line);) {
    const std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (v2 ? (parts[0] == "0" && parts[1].empty()) : HasOption(parts[1], "cpu")) return parts[2];
  }
  return std::nullopt;
}

// The limit one directory sets, in CPUs.
std::optional<double> LimitIn(const std::string& dir, bool v2) {
  constexpr size_t kMaxLine = 256;
  double quota = 0, period = 0;
  if (v2) {
    const auto line = ReadFirstLine(dir + "/cpu.max", kMaxLine);  // "max 100000" or "150000 100000"
    if (!line.ok()) return std::nullopt;
    const std::vector<absl::string_view> f = absl::StrSplit(*line, ' ', absl::SkipEmpty());
    if (f.size() != 2 || !absl::SimpleAtod(f[0], &quota) || !absl::SimpleAtod(f[1], &period)) return std::nullopt;
  } else {
    const auto q = ReadFirstLine(dir + "/cpu.cfs_quota_us", kMaxLine);  // -1: none
    const auto p = ReadFirstLine(dir + "/cpu.cfs_period_us", kMaxLine);
    if (!q.ok() || !p.ok() || !absl::SimpleAtod(*q, &quota) || !absl::SimpleAtod(*p, &period)) return std::nullopt;
  }
  if (quota <= 0 || period <= 0) return std::nullopt;
  return quota / period;
}

// The lowest limit from this process's cgroup up to the hierarchy's root.
std::optional<double> HierarchyLimit(const std::string& root, bool v2) {
  const std::optional<CgroupMount> mount = FindMount(root, v2);
  const std::optional<std::string> path = CgroupPath(root, v2);
  if (!mount || !path) return std::nullopt;
  // The mount shows the hierarchy from mount->root down; a container that
  // sees the host's paths (no cgroup namespace) has its own cgroup there.
  std::string relative;
  if (mount->root == "/") {
    relative = *path;
  } else if (absl::StartsWith(*path, mount->root) &&
             (path->size() == mount->root.size() || (*path)[mount->root.size()] == '/')) {
    relative = path->substr(mount->root.size());
  }
  const std::string top = root + mount->mountpoint;
  std::string dir = top + std::string(absl::StripSuffix(relative, "/"));
  std::optional<double> lowest;
  for (;;) {
    if (const auto limit = LimitIn(dir, v2); limit && (!lowest || *limit < *lowest)) lowest = limit;
    if (dir.size() <= top.size()) break;
    dir.resize(dir.rfind('/'));
  }
  return lowest;
}

int AffinityCpus() {
  for (int n = 1024; n <= (1 << 16); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    const size_t size = CPU_ALLOC_SIZE(n);
    if (sched_getaffinity(0, size, set) == 0) {
      const int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  return static_cast<int>(std::thread::hardware_concurrency());
}

}  // namespace

std::optional<double> CgroupCpuLimit(const std::string& root) {
  // Hybrid hosts mount both; the cpu controller is in one of them.
  std::optional<double> v1 = HierarchyLimit(root, false), v2 = HierarchyLimit(root, true);
  if (v1 && v2) return std::min(*v1, *v2);
  return v1 ? v1 : v2;
}

CpuBudget UsableCpuBudget() {
  CpuBudget b;
  b.affinity = std::max(1, AffinityCpus());
  b.quota = CgroupCpuLimit();
  b.usable = b.affinity;
  if (b.quota) b.usable = std::min(b.usable, static_cast<int>(std::ceil(*b.quota - 1e-9)));
  b.usable = std::max(1, b.usable);
  return b;
}

int UsableCpus() { return UsableCpuBudget().usable; }

int CpuShare(int cpus, int parts) { return std::max(1, cpus / std::max(1, parts)); }

std::string CpuBudget::Describe() const {
  std::ostringstream limit;
  if (quota) limit << *quota;
  return absl::StrCat(usable, usable == 1 ? " CPU" : " CPUs", " (affinity ", affinity,
                      quota ? ", cgroup limit " + limit.str() : ", no cgroup limit", ")");
}

}  // namespace dfc
