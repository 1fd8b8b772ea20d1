// The CUDA build's own scripts, run the way the GPU machine and the CUDA
// image run them: gather the Debian packages (must fit in 64 MiB, with their
// whole library closure), unpack
// them into a prefix, configure against that prefix (never /usr) and build
// the gRPC/Protobuf targets with the prefix's protoc and plugin. A CPU
// LibTorch stands in for the CUDA one, which no CPU machine has.
#include <filesystem>
#include <regex>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace dfc {
namespace {

using testing::RunCommand;

std::string CacheValue(const std::string& cache, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(cache, m, std::regex("\n" + key + ":[A-Z]+=([^\n]*)"))) return "";
  return m[1];
}

TEST(CudaBuildTest, GatheredPackagesFitAndTheBuildUsesOnlyThePrefix) {
  testing::TempDir dir;
  const std::string src = testing::SourceDir();
  auto gather = RunCommand(src + "/scripts/gather_cuda_deps.sh --out " + dir.Join("deps"));
  ASSERT_EQ(gather.exit_code, 0) << gather.out << gather.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(gather.out, m, std::regex("([0-9]+) MiB"))) << gather.out;
  EXPECT_LE(std::stoi(m[1]), 64) << gather.out;
  // Every library the unpacked ones load is there too (or is glibc/libstdc++/zlib/OpenSSL).
  EXPECT_NE(gather.out.find("closure complete"), std::string::npos) << gather.out;

  // With a CUDA toolkit the CUDA graph code is compiled too (never linked:
  // a CPU LibTorch has no libtorch_cuda).
  const bool toolkit = std::filesystem::exists("/usr/local/cuda/include/nccl.h");
  const std::string targets = toolkit ? "dfc_proto dfc_rpc dfc_cuda_step_compile_check" : "dfc_proto dfc_rpc";
  auto build = RunCommand(src + "/scripts/build_cuda.sh --deps " + dir.Join("deps") + " --build-dir " +
                          dir.Join("build") + " --torch-prefix /usr/lib/x86_64-linux-gnu/cmake/Torch" +
                          " --targets '" + targets + "' -j2");
  ASSERT_EQ(build.exit_code, 0) << build.out.substr(build.out.size() > 4000 ? build.out.size() - 4000 : 0) << build.err;
  const std::string cache = testing::ReadFileOrDie(dir.Join("build/CMakeCache.txt"));
  const std::string root = dir.Join("deps/root/");
  for (const char* key : {"gRPC_DIR", "absl_DIR", "Protobuf_PROTOC_EXECUTABLE", "DFC_GRPC_CPP_PLUGIN",
                          "OpenCV_imgproc_LIBRARY", "JPEG_LIBRARY_RELEASE", "PNG_LIBRARY_RELEASE", "HDF5_C_LIBRARY_hdf5", "SQLite3_LIBRARY", "CLI11_DIR"}) {
    EXPECT_EQ(CacheValue(cache, key).rfind(root, 0), 0u) << key << " = " << CacheValue(cache, key);
  }
  EXPECT_TRUE(std::filesystem::exists(dir.Join("build/proto/dfc/v1/dfc.grpc.pb.h")));
  // Where a CUDA toolkit with NCCL is installed (the CPU build machines carry
  // one), the NCCL backend is configured in.
  if (toolkit) {
    EXPECT_NE(build.out.find("NCCL backend ON"), std::string::npos) << build.out;
    EXPECT_NE(build.out.find("CUDA graph code compiled (not linked)"), std::string::npos) << build.out;
    EXPECT_NE(build.out.find("cuda_step_cuda.cc.o"), std::string::npos) << build.out;
  }
}

}  // namespace
}  // namespace dfc
