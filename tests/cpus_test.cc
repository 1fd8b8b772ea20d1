// UsableCpus: the affinity mask of the calling thread, and the cgroup CPU
// limit read from fake /proc and /sys trees laid out as the kernel, podman
// and Kubernetes lay them out.
#include "common/cpus.h"

#include <sched.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace dfc {
namespace {

class CgroupTree {
 public:
  void Write(const std::string& path, const std::string& text) {
    const std::filesystem::path p = dir_.path() + path;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  std::optional<double> Limit() { return CgroupCpuLimit(dir_.path()); }

 private:
  testing::TempDir dir_;
};

// A container in its own cgroup namespace (Docker, containerd on cgroup v2):
// it sees its cgroup as "/" at /sys/fs/cgroup.
TEST(CpusTest, ACgroupV2ContainerSeesItsLimitAtTheMountsRoot) {
  CgroupTree t;
  t.Write("/proc/self/cgroup", "0::/\n");
  t.Write("/proc/self/mountinfo",
          "24 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n");
  t.Write("/sys/fs/cgroup/cpu.max", "150000 100000\n");
  EXPECT_EQ(t.Limit(), 1.5);
}

// A Kubernetes pod on a cgroup v2 node: the pod's limit is on the pod's
// cgroup, the container's own may say "max"; the lowest on the way up counts.
TEST(CpusTest, TheLowestLimitOfTheCgroupAndItsAncestorsCounts) {
  CgroupTree t;
  t.Write("/proc/self/cgroup", "0::/kubepods.slice/pod-1.slice/cri-abc.scope\n");
  t.Write("/proc/self/mountinfo", "24 30 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
  t.Write("/sys/fs/cgroup/kubepods.slice/cpu.max", "max 100000\n");
  t.Write("/sys/fs/cgroup/kubepods.slice/pod-1.slice/cpu.max", "400000 100000\n");
  t.Write("/sys/fs/cgroup/kubepods.slice/pod-1.slice/cri-abc.scope/cpu.max", "max 100000\n");
  EXPECT_EQ(t.Limit(), 4.0);
  t.Write("/sys/fs/cgroup/kubepods.slice/cpu.max", "200000 100000\n");
  EXPECT_EQ(t.Limit(), 2.0);
}

// podman on a cgroup v1 (hybrid) host, as measured here: the container sees
// the host's path of its cgroup, and the cpu hierarchy mounted from there.
TEST(CpusTest, ACgroupV1ContainerSeesTheHostsPathOfItsCgroup) {
  CgroupTree t;
  const std::string cg = "/libpod_parent/libpod-b70a67c6";
  t.Write("/proc/self/cgroup", "2:cpuacct:" + cg + "\n1:cpu:" + cg + "\n0::" + cg + "\n");
  t.Write("/proc/self/mountinfo",
          "91 83 0:47 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n"
          "92 91 0:29 " + cg + " /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu\n"
          "93 91 0:30 " + cg + " /sys/fs/cgroup/cpuacct ro,nosuid - cgroup cgroup rw,cpuacct\n");
  t.Write("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000\n");
  t.Write("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(t.Limit(), 1.0);
  t.Write("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
  EXPECT_EQ(t.Limit(), std::nullopt);
}

// A cgroup v1 host with cpu and cpuacct in one hierarchy (systemd's
// cpu,cpuacct) and a limit on a parent of this process's cgroup; the mount
// point's name has a space (mountinfo writes it \040).
TEST(CpusTest, ACombinedCpuHierarchyAndAnEscapedMountPoint) {
  CgroupTree t;
  t.Write("/proc/self/cgroup", "4:cpu,cpuacct:/batch/job-7\n0::/batch/job-7\n");
  t.Write("/proc/self/mountinfo", "40 31 0:37 / /sys/fs/cg\\040v1 rw - cgroup cgroup rw,cpu,cpuacct\n");
  t.Write("/sys/fs/cg v1/batch/cpu.cfs_quota_us", "250000\n");
  t.Write("/sys/fs/cg v1/batch/cpu.cfs_period_us", "100000\n");
  t.Write("/sys/fs/cg v1/batch/job-7/cpu.cfs_quota_us", "-1\n");
  t.Write("/sys/fs/cg v1/batch/job-7/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(t.Limit(), 2.5);
}

TEST(CpusTest, NoLimitUnreadableFilesOrGarbageMeanNoLimit) {
  CgroupTree t;
  EXPECT_EQ(t.Limit(), std::nullopt);  // no /proc at all
  t.Write("/proc/self/cgroup", "0::/a\n");
  t.Write("/proc/self/mountinfo", "24 30 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
  EXPECT_EQ(t.Limit(), std::nullopt);  // no cpu.max: the cpu controller is not enabled
  t.Write("/sys/fs/cgroup/a/cpu.max", "max 100000\n");
  EXPECT_EQ(t.Limit(), std::nullopt);
  for (const char* garbage : {"", "lots 100000", "100000", "100000 0", "-5 100000", "1 2 3"}) {
    t.Write("/sys/fs/cgroup/a/cpu.max", garbage);
    EXPECT_EQ(t.Limit(), std::nullopt) << "'" << garbage << "'";
  }
  t.Write("/proc/self/mountinfo", "garbage\n\n24 30 0:22 / /sys/fs/cgroup rw cgroup2\n");
  EXPECT_EQ(t.Limit(), std::nullopt);
}

// The affinity mask of the calling thread bounds the count: pinned to one
// CPU (taskset, the kubelet's static CPU manager), it is one.
TEST(CpusTest, AThreadPinnedToOneCpuMayUseOne) {
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof(before), &before), 0);
  if (CPU_COUNT(&before) < 2) GTEST_SKIP() << "this thread may run on one CPU only: nothing to lower";
  const CpuBudget all = UsableCpuBudget();
  EXPECT_EQ(all.affinity, CPU_COUNT(&before));
  EXPECT_GE(all.usable, 1);
  EXPECT_LE(all.usable, all.affinity);
  int first = 0;
  while (!CPU_ISSET(first, &before)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  const CpuBudget pinned = UsableCpuBudget();
  ASSERT_EQ(sched_setaffinity(0, sizeof(before), &before), 0);
  EXPECT_EQ(pinned.affinity, 1);
  EXPECT_EQ(pinned.usable, 1);
  EXPECT_EQ(pinned.Describe().rfind("1 CPU (affinity 1, ", 0), 0u) << pinned.Describe();
}

TEST(CpusTest, DescribeNamesTheAffinityAndTheLimit) {
  CpuBudget b;
  b.usable = 2;
  b.affinity = 8;
  b.quota = 1.5;
  EXPECT_EQ(b.Describe(), "2 CPUs (affinity 8, cgroup limit 1.5)");
  b.quota.reset();
  b.usable = 8;
  EXPECT_EQ(b.Describe(), "8 CPUs (affinity 8, no cgroup limit)");
}

}  // namespace
}  // namespace dfc
