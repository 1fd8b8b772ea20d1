// The container image as a Kubernetes user runs it (docs/DEPLOY.md, k8s/):
// dfc:cpu built by scripts/build_images.sh, then a coordinator container, an
// evaluation server container and
// two worker containers (read-only root file system, uid 10001, the shared
// data and the state as bind mounts, host network) train a 2-rank job that
// `dfc evaluate` then scores, as a job checkpoint and imported by name. Labelled "images" (ctest -L images).
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

using testing::RunCommand;

const char kImage[] = "localhost/dfc:cpu";

std::string Podman(const std::string& args) {
  return "CONTAINERS_CONF=" + testing::SourceDir() + "/docker/containers.conf podman " + args;
}

class ImagesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Builds the image (warm: seconds, every layer cached; cold: minutes).
    auto r = RunCommand(testing::SourceDir() + "/scripts/build_images.sh --cpu");
    build_ok_ = r.exit_code == 0;
    build_log_ = r.out.substr(r.out.size() > 4000 ? r.out.size() - 4000 : 0) + r.err.substr(r.err.size() > 4000 ? r.err.size() - 4000 : 0);
  }
  void SetUp() override { ASSERT_TRUE(build_ok_) << build_log_; }
  void TearDown() override {
    for (const std::string& c : containers_) RunCommand(Podman("rm -f " + c));
  }
  // Starts `program` (a binary in /opt/dfc/bin) of the image as a detached
  // container the way the manifests run it; returns its name. `options`:
  // podman's (volumes, a CPU limit).
  std::string Start(const std::string& name, const std::string& options, const std::string& program,
                    const std::string& args) {
    const std::string full = name + "-" + std::to_string(::getpid());
    auto r = RunCommand(Podman("run -d --name " + full + " --network=host --read-only --user 10001:10001 " + options +
                               " --entrypoint /opt/dfc/bin/" + program + " " + kImage + " " + args));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    containers_.push_back(full);
    return full;
  }
  std::string Logs(const std::string& c) {
    auto r = RunCommand(Podman("logs " + c));
    return r.out + r.err;
  }

  static bool build_ok_;
  static std::string build_log_;
  std::vector<std::string> containers_;
};
bool ImagesTest::build_ok_ = false;
std::string ImagesTest::build_log_;

TEST_F(ImagesTest, TheImageHoldsTheProgramsAndNothingToBuildWith) {
  auto r = RunCommand(Podman(std::string("run --rm --network=host --entrypoint /bin/sh ") + kImage +
                             " -c 'id -u; for c in gcc g++ cc c++ clang ld make cmake ninja; do command -v $c; done;"
                             " ls /var/lib/apt/lists | grep -v -e lock -e partial; ls /var/cache/apt/archives | grep deb;"
                             " test -e /src && echo SOURCE;"
                             " grep -rqs bookworm-security /etc/apt/sources.list /etc/apt/sources.list.d && echo security;"
                             " ls /opt/dfc/bin'"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "10001\nsecurity\ndfc\ndfc-coordinator\ndfc-decode\ndfc-server\ndfc-torch\ndfc-worker\n")
      << "expected uid 10001, no compiler, no package lists or archives, no source tree, Debian's security updates"
         " in the apt sources; got:\n" << r.out;
  // dfc (the entrypoint) runs train and predict in dfc-torch beside it.
  auto train = RunCommand(Podman(std::string("run --rm --network=host ") + kImage + " train --help"));
  EXPECT_EQ(train.exit_code, 0) << train.err;
  EXPECT_NE(train.out.find("Usage: dfc train [OPTIONS]"), std::string::npos) << train.out << train.err;
  auto size = RunCommand(Podman(std::string("image inspect --format '{{.Size}}' ") + kImage));
  std::printf("dfc:cpu: %s bytes\n", size.out.c_str());
}

TEST_F(ImagesTest, ContainersTrainATwoRankJobAndEvaluateItsCheckpoint) {
  testing::TempDir dir;
  const std::string shared = dir.Join("shared"), state = dir.Join("state");
  for (const std::string& d : {shared, state, dir.Join("work-0"), dir.Join("work-1")}) {
    std::filesystem::create_directories(d);
  }
  ASSERT_EQ(RunCommand(testing::DfcBinary() + " synth --out " + shared + "/synth --count 96 --seed 4").exit_code, 0);
  ASSERT_EQ(RunCommand(testing::DfcBinary() + " shard --src " + shared + "/synth --out " + shared +
                       "/shards --validation-split 0.25")
                .exit_code,
            0);
  // The containers run as uid 10001, as in the pods (fsGroup there).
  ASSERT_EQ(RunCommand("chown -R 10001:10001 " + dir.path()).exit_code, 0);
  const std::string addr = "127.0.0.1:" + std::to_string(PickFreePort());
  const std::string coordinator =
      Start("dfc-coordinator", "-v " + state + ":/var/lib/dfc -v " + shared + ":/shared", "dfc-coordinator",
            "--listen " + addr + " --state /var/lib/dfc --output-root /shared/jobs --data-root /shared --heartbeat-ms 200");
  // Each with a CPU limit of one, as a pod's limits.cpu sets it (a cgroup
  // CPU quota): they size their ranks' threads and the server its decoders
  // and inference threads by it, not by this machine's cores.
  std::vector<std::string> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(Start("dfc-worker-" + std::to_string(w),
                            "--cpus=1 -v " + shared + ":/shared -v " + dir.Join("work-" + std::to_string(w)) +
                                ":/var/lib/dfc-worker",
                            "dfc-worker", "--coordinator " + addr + " --cpu-slots 1 --work-dir /var/lib/dfc-worker"));
  }
  // The evaluation tier in its own container, weights on the shared volume.
  const std::string server = Start("dfc-server", "--cpus=1 -v " + shared + ":/shared", "dfc-server",
                                   "--listen 127.0.0.1:" + std::to_string(PickFreePort()) + " --coordinator " + addr +
                                       " --models-dir /shared/models --device cpu");
  for (int i = 0; i < 600; ++i) {
    if (Logs(workers[0]).find("registered as") != std::string::npos &&
        Logs(workers[1]).find("registered as") != std::string::npos &&
        Logs(server).find("catalogue answers") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (const std::string& w : workers) {
    EXPECT_NE(Logs(w).find("with 1 slot(s), 1 CPU(s) per rank of 1 CPU (affinity "), std::string::npos) << Logs(w);
    EXPECT_NE(Logs(w).find(", cgroup limit 1)"), std::string::npos) << Logs(w);
  }
  const std::string dfc = testing::DfcBinary() + " --coordinator " + addr;
  auto submit = RunCommand(dfc + " submit --json --model mesoinception4 --data /shared/shards --world-size 2"
                                 " --epochs 2 --batch-size 12 --threads 1");
  ASSERT_EQ(submit.exit_code, 0) << submit.err << Logs(coordinator);
  const std::string job = nlohmann::json::parse(submit.out)["job_id"];
  auto watch = RunCommand(dfc + " watch --timeout 600 " + job);
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err << Logs(workers[0]) << Logs(workers[1]);
  // Each rank confined itself inside its container (podman's default
  // seccomp profile lets a process add its own filter and use Landlock).
  int rank_logs = 0;
  for (int w = 0; w < 2; ++w) {
    const std::string work = dir.Join("work-" + std::to_string(w)) + "/" + job + "/attempt-1";
    for (const auto& rank : std::filesystem::directory_iterator(work)) {
      ++rank_logs;
      const std::string log = testing::ReadFileOrDie(rank.path() / "log");
      const size_t line = log.find("confined to its job's files (seccomp, Landlock ABI ");
      EXPECT_NE(line, std::string::npos) << rank.path() << ":\n" << log;
      if (line != std::string::npos) {
        std::printf("%s: %s\n", rank.path().filename().c_str(), log.substr(line, log.find('\n', line) - line).c_str());
      }
    }
  }
  EXPECT_EQ(rank_logs, 2);
  auto eval = RunCommand(dfc + " evaluate --json --job " + job + " --checkpoint best " + shared + "/synth");
  ASSERT_EQ(eval.exit_code, 0) << eval.err << Logs(coordinator) << Logs(server);
  const auto summary = nlohmann::json::parse(eval.out);
  EXPECT_EQ(summary["count"], 96) << eval.out;
  EXPECT_EQ(summary["errors"], 0) << eval.out;
  // The same checkpoint imported through the containerised server: its
  // confined converter runs inside the container, and the numbers agree.
  std::string best;
  for (const auto& e : std::filesystem::recursive_directory_iterator(shared + "/jobs")) {
    if (e.path().filename() == "best.ckpt") best = e.path().string();
  }
  ASSERT_FALSE(best.empty());
  auto import = RunCommand(dfc + " import --name job-best --model mesoinception4 --weights " + best);
  ASSERT_EQ(import.exit_code, 0) << import.err << Logs(server);
  const std::string server_log = Logs(server);
  // Its image decoders confined themselves inside the container too.
  EXPECT_NE(server_log.find(", 1 inference thread, catalogue "), std::string::npos) << server_log;
  EXPECT_NE(server_log.find("this process may use 1 CPU (affinity "), std::string::npos) << server_log;
  const size_t decoders = server_log.find("images are decoded by 1 dfc-decode process (seccomp, Landlock ABI ");
  EXPECT_NE(decoders, std::string::npos) << server_log;
  if (decoders != std::string::npos) {
    const size_t from = server_log.rfind('\n', decoders) + 1;
    std::printf("%s\n", server_log.substr(from, server_log.find('\n', decoders) - from).c_str());
  }
  const size_t confined = server_log.find("converted in a confined process (seccomp");
  EXPECT_NE(confined, std::string::npos) << server_log;
  if (confined != std::string::npos) {
    std::printf("%s\n", server_log.substr(confined, server_log.find('\n', confined) - confined).c_str());
  }
  auto imported = RunCommand(dfc + " evaluate --json --model job-best " + shared + "/synth");
  ASSERT_EQ(imported.exit_code, 0) << imported.err << Logs(server);
  const auto imported_summary = nlohmann::json::parse(imported.out);
  EXPECT_EQ(imported_summary["count"], 96) << imported.out;
  EXPECT_DOUBLE_EQ(imported_summary["accuracy"].get<double>(), summary["accuracy"].get<double>());
  EXPECT_DOUBLE_EQ(imported_summary["auc"].get<double>(), summary["auc"].get<double>());
  std::vector<std::string> all = workers;
  all.push_back(coordinator);
  all.push_back(server);
  for (const std::string& c : all) {
    auto uid = RunCommand(Podman("exec " + c + " id -u"));
    EXPECT_EQ(uid.out, "10001\n") << c;
    // Nothing written to the image's file system (it is read-only; the
    // writable tmpfs of /tmp and /run do not count). podman's own changes
    // remain: the mount points it adds (A) and their folders (C), and /etc
    // (where it mounts hosts and resolv.conf).
    auto diff = RunCommand(Podman("diff " + c));
    EXPECT_EQ(diff.exit_code, 0) << diff.err;
    const std::set<std::string> podmans = {"A /shared", "A /var/lib/dfc", "A /var/lib/dfc-worker", "C /var",
                                           "C /var/lib", "C /etc"};
    for (const std::string& line : testing::SplitLines(diff.out)) {
      EXPECT_TRUE(podmans.count(line)) << c << " changed its file system: " << line;
    }
  }
}

}  // namespace
}  // namespace dfc
