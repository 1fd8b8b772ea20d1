// The dependency rule, checked rather than written down: folders depend one
// way (docs/ARCHITECTURE.md), the coordinator and the workers meet only over
// gRPC, and the control plane links no LibTorch.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace dfc {
namespace {

namespace fs = std::filesystem;
using testing::RunCommand;

std::string BinDir() { return fs::path(testing::DfcBinary()).parent_path().string(); }
std::string BuildDir() { return fs::path(testing::DfcBinary()).parent_path().parent_path().string(); }

// The shared libraries a binary needs (readelf -d).
std::set<std::string> Needed(const std::string& binary) {
  auto r = RunCommand("readelf -d " + binary);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::set<std::string> libs;
  std::regex needed(R"(\(NEEDED\)\s+Shared library: \[([^\]]+)\])");
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), needed), end; it != end; ++it) libs.insert((*it)[1]);
  return libs;
}

bool IsMlLibrary(const std::string& lib) {
  for (const char* p : {"libtorch", "libc10", "libnccl", "libcudart", "libcuda", "libgloo", "libhdf5"}) {
    if (lib.rfind(p, 0) == 0) return true;
  }
  return false;
}

// The link command CMake generated for a target's binary.
std::string LinkLine(const std::string& binary_name) {
  const std::string ninja = BuildDir() + "/build.ninja";
  if (fs::exists(ninja)) {
    std::ifstream f(ninja);
    std::string line, block;
    bool in = false;
    while (std::getline(f, line)) {
      if (line.rfind("build bin/" + binary_name + ":", 0) == 0) in = true;
      else if (in && line.empty()) break;
      if (in) block += line + "\n";
    }
    return block;
  }
  // Makefile generators keep it beside the target's objects.
  return testing::ReadFileOrDie(BuildDir() + "/coordinator/CMakeFiles/" + binary_name + ".dir/link.txt");
}

TEST(ArchitectureTest, CoordinatorLinksNoTorch) {
  const std::set<std::string> coordinator = Needed(BinDir() + "/dfc-coordinator");
  ASSERT_FALSE(coordinator.empty());
  for (const std::string& lib : coordinator) EXPECT_FALSE(IsMlLibrary(lib)) << "dfc-coordinator needs " << lib;
  const std::string link = LinkLine("dfc-coordinator");
  ASSERT_FALSE(link.empty()) << "no link rule for dfc-coordinator in " << BuildDir();
  for (const char* ml : {"torch", "c10", "nccl", "dfc_models", "dfc_training", "dfc_serving"}) {
    EXPECT_EQ(link.find(ml), std::string::npos) << "the coordinator's link line names " << ml << ":\n" << link;
  }
  // The check can fail: the binaries that do inference or training need LibTorch.
  for (const char* ml_binary : {"dfc-worker", "dfc-server"}) {
    const std::set<std::string> libs = Needed(BinDir() + "/" + ml_binary);
    EXPECT_TRUE(std::any_of(libs.begin(), libs.end(), IsMlLibrary)) << ml_binary << " should need LibTorch";
  }
}

// The client's commands start at once: dfc links no LibTorch (its start-up
// alone took half a second, for `dfc list` as for `dfc train`). train and
// predict run in dfc-torch, which dfc execs: that one needs LibTorch.
TEST(ArchitectureTest, TheClientLinksNoTorchAndExecsDfcTorchForTheModelCommands) {
  const std::set<std::string> dfc = Needed(testing::DfcBinary());
  ASSERT_FALSE(dfc.empty());
  for (const std::string& lib : dfc) EXPECT_FALSE(IsMlLibrary(lib)) << "dfc needs " << lib;
  const std::set<std::string> torch = Needed(BinDir() + "/dfc-torch");
  EXPECT_TRUE(std::any_of(torch.begin(), torch.end(), IsMlLibrary)) << "dfc-torch should need LibTorch";
  // `dfc train --help` is dfc-torch's help for train, under dfc's name.
  auto help = RunCommand(testing::DfcBinary() + " train --help");
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_NE(help.out.find("Usage: dfc train [OPTIONS]"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--world-size"), std::string::npos) << help.out;
  // A usage error there is dfc's usage error (exit 2), naming the option.
  auto bad = RunCommand(testing::DfcBinary() + " predict --model meso4 --weights w.h5");
  EXPECT_EQ(bad.exit_code, 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("images is required"), std::string::npos) << bad.err;
  // dfc copied alone somewhere finds dfc-torch on PATH, or says it has none.
  testing::TempDir dir;
  const std::string alone = dir.Join("dfc");
  fs::copy_file(testing::DfcBinary(), alone);
  fs::permissions(alone, fs::perms::owner_all);
  auto on_path = RunCommand("PATH=" + BinDir() + ":/usr/bin:/bin " + alone + " train --help");
  EXPECT_EQ(on_path.exit_code, 0) << on_path.err;
  EXPECT_NE(on_path.out.find("Usage: dfc train [OPTIONS]"), std::string::npos) << on_path.out;
  auto nowhere = RunCommand("PATH=/usr/bin:/bin " + alone + " train --help");
  EXPECT_EQ(nowhere.exit_code, 1) << nowhere.out;
  EXPECT_NE(nowhere.err.find("dfc train runs in dfc-torch, which is installed beside dfc: cannot run " +
                             (fs::canonical(dir.path()) / "dfc-torch").string() +
                             ": No such file or directory (nor is there one on PATH)"),
            std::string::npos)
      << nowhere.err;
}

// dfc-server's image decoder (serving/decoder_pool.h) parses what clients
// send: it links the image codec and the sandbox, neither LibTorch nor gRPC.
TEST(ArchitectureTest, ImageDecoderLinksNoTorchAndNoRpc) {
  const std::set<std::string> libs = Needed(BinDir() + "/dfc-decode");
  ASSERT_FALSE(libs.empty());
  for (const std::string& lib : libs) {
    EXPECT_FALSE(IsMlLibrary(lib)) << "dfc-decode needs " << lib;
    for (const char* rpc : {"libgrpc", "libprotobuf", "libssl"}) {
      EXPECT_EQ(lib.find(rpc), std::string::npos) << "dfc-decode needs " << lib;
    }
  }
  const bool decodes = std::any_of(libs.begin(), libs.end(), [](const std::string& l) {
    return l.find("libjpeg") != std::string::npos;
  });
  EXPECT_TRUE(decodes) << "dfc-decode should need libjpeg (is it the decoder?)";
}

// Which project folders each folder's sources may include from.
TEST(ArchitectureTest, FoldersDependOneWay) {
  const std::set<std::string> project = {"common", "data_shards", "models", "training", "serving",
                                         "worker", "coordinator", "clients", "dfc", "grpc"};
  const std::map<std::string, std::set<std::string>> allowed = {
      {"common", {"common", "dfc", "grpc"}},
      {"data_shards", {"common", "data_shards"}},
      {"models", {"common", "data_shards", "models"}},
      {"training", {"common", "data_shards", "models", "training", "dfc"}},  // dfc: the TrainingConfig
      {"serving", {"common", "data_shards", "models", "serving", "dfc"}},
      {"worker", {"common", "data_shards", "models", "training", "worker", "dfc"}},
      // The control plane: no ML library, and no worker or serving code.
      {"coordinator", {"common", "data_shards", "coordinator", "dfc"}},
      {"clients", {"common", "data_shards", "models", "training", "clients", "dfc"}},
  };
  std::regex include(R"(#include\s+"([a-z_]+)/)");
  int files = 0;
  for (const auto& [folder, ok] : allowed) {
    for (const auto& e : fs::recursive_directory_iterator(testing::SourceDir() + "/" + folder)) {
      const std::string ext = e.path().extension().string();
      if (ext != ".cc" && ext != ".h") continue;
      ++files;
      const std::string text = testing::ReadFileOrDie(e.path().string());
      for (std::sregex_iterator it(text.begin(), text.end(), include), end; it != end; ++it) {
        const std::string dep = (*it)[1];
        if (project.count(dep) == 0) continue;
        EXPECT_TRUE(ok.count(dep)) << e.path().string() << " includes " << dep << "/ (" << folder
                                   << "/ may include only what docs/ARCHITECTURE.md allows)";
      }
    }
  }
  EXPECT_GT(files, 50);
}

}  // namespace
}  // namespace dfc
