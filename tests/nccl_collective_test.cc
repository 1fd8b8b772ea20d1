// The NCCL backend, built wherever a CUDA toolkit with NCCL is found. On a
// machine without a GPU it is compiled and linked, and must refuse clearly;
// the world-size-1 collectives run only where a GPU is visible (skipped, and
// reported as skipped, elsewhere).
#include "training/nccl_collective.h"

#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "training/collective.h"
#include "common/subprocess.h"

namespace dfc {
namespace {

CollectiveOptions NcclOptions() {
  CollectiveOptions o;
  o.backend = "nccl";
  o.store_port = PickFreePort();
  o.timeout = std::chrono::milliseconds(20000);
  return o;
}

bool HaveGpu() {
  auto n = CudaDeviceCount();
  return n.ok() && *n > 0;
}

TEST(NcclCollectiveTest, TheNcclLibraryIsLinkedAndAnswers) {
  const std::string v = NcclVersion();
  EXPECT_EQ(v.rfind("2.", 0), 0u) << v;
}

TEST(NcclCollectiveTest, WithoutAGpuConnectFailsNamingTheReason) {
  if (HaveGpu()) GTEST_SKIP() << "a GPU is visible: covered by WorldSizeOneCollectives";
  auto c = Collective::Connect(NcclOptions());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_NE(std::string(c.status().message()).find("needs a GPU"), std::string::npos) << c.status();
}

TEST(NcclCollectiveTest, WorldSizeOneCollectives) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU visible: " << CudaDeviceCount().status();
  auto c = Collective::Connect(NcclOptions());
  ASSERT_TRUE(c.ok()) << c.status();
  // Host tensors are staged through device memory; the sum over one rank is the tensor.
  torch::Tensor f = torch::arange(1000, torch::kFloat32);
  ASSERT_TRUE((*c)->AllReduceSum(f).ok());
  EXPECT_TRUE(torch::equal(f, torch::arange(1000, torch::kFloat32)));
  torch::Tensor d = torch::rand({3, 5}, torch::kFloat64).t();  // not contiguous: copied back
  torch::Tensor expected = d.clone();
  ASSERT_TRUE((*c)->AllReduceSum(d).ok());
  EXPECT_TRUE(torch::equal(d, expected));
  if (torch::cuda::is_available()) {
    torch::Tensor g = torch::ones({4096}, torch::TensorOptions().device(torch::kCUDA));
    ASSERT_TRUE((*c)->AllReduceSum(g).ok());
    EXPECT_EQ(g.sum().item<float>(), 4096.0f);
  }
  std::vector<torch::Tensor> b = {torch::full({7}, 3.0)};
  ASSERT_TRUE((*c)->Broadcast(b, 0).ok());
  EXPECT_EQ(b[0].sum().item<double>(), 21.0);
  EXPECT_TRUE((*c)->Barrier().ok());
  EXPECT_FALSE((*c)->AllReduceSum(torch::zeros({2}, torch::kBool)).ok());  // unsupported type named
}

}  // namespace
}  // namespace dfc
