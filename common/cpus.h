#ifndef DFC_COMMON_CPUS_H_
#define DFC_COMMON_CPUS_H_

#include <optional>
#include <string>

namespace dfc {

// The CPUs this process may run on, as thread pools should be sized.
// std::thread::hardware_concurrency counts the machine's online CPUs; in a
// pod or container with a CPU limit (a cgroup quota) or pinned to some CPUs
// (an affinity mask: taskset, the kubelet's static CPU manager) that is
// far more than the process may use, and a pool sized by it oversubscribes
// the CPUs it has.
struct CpuBudget {
  int usable = 1;                 // min(affinity, the quota rounded up), at least 1
  int affinity = 1;               // CPUs in the calling thread's affinity mask
  std::optional<double> quota;    // the cgroup CPU limit in CPUs, if any
  // "2 CPUs (affinity 2, cgroup limit 1.5)"
  std::string Describe() const;
};
CpuBudget UsableCpuBudget();
int UsableCpus();

// One of `parts` equal shares of `cpus` (a worker's per slot, a machine's
// per local worker or rank), at least 1.
int CpuShare(int cpus, int parts);

// The lowest CPU limit (quota / period) of this process's cgroup and its
// ancestors, in CPUs, from cgroup v2 (cpu.max) and v1 (cpu.cfs_quota_us,
// cpu.cfs_period_us); nullopt when none is set or none can be read.
// `root` is prepended to every path read (/proc/self/cgroup,
// /proc/self/mountinfo, the cgroup files): a test's fake tree.
std::optional<double> CgroupCpuLimit(const std::string& root = "");

}  // namespace dfc

#endif  // DFC_COMMON_CPUS_H_
