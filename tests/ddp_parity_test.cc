// Data-parallel correctness with real Gloo process groups across processes:
// N ranks with 1/N of each global batch end every run with parameters equal
// across ranks and equal to one process trained on the whole global batch.
//
// Against the single process the runs are in double precision: in float32,
// other batch sizes pick other convolution kernels, whose last-bit rounding
// flips a few ReLUs sitting at zero, and Adam, which divides by the
// gradient's own magnitude, turns a rounding-size difference on a near-zero
// gradient into a whole +-lr step. In float64 such noise is ~1e-15 and any
// real error in the algorithm shows. In float32 (production precision) the
// test requires bit-identical ranks.

#include <cstdio>
#include <thread>

#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "models/checkpoint.h"
#include "models/detector.h"
#include "common/subprocess.h"

namespace dfc {
namespace {

std::vector<std::pair<std::string, torch::Tensor>> Load(const std::string& arch, const std::string& path) {
  DetectorOptions dopt;
  if (arch == "resnet50-vggface") {
    dopt.resnet_width = 8;
    dopt.resnet_blocks = {1, 1, 1, 1};
    dopt.freeze_keras_layers = 10;
  }
  auto model = MakeDetector(arch, dopt);
  EXPECT_TRUE(model.ok());
  (*model)->to(torch::kFloat64);  // holds float32 checkpoints exactly
  auto meta = LoadCheckpoint(path, **model, nullptr, false);
  EXPECT_TRUE(meta.ok()) << meta.status();
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : (*model)->named_parameters()) out.emplace_back(p.key(), p.value().clone());
  for (const auto& b : (*model)->named_buffers()) out.emplace_back(b.key(), b.value().clone());
  return out;
}

struct Case {
  std::string arch;
  int world;
  int global_batch;
  int image_size;
  int64_t bucket_bytes;
  int records;  // one epoch; not a multiple of global_batch leaves a ragged last batch
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.arch << " world " << c.world << " bucket " << c.bucket_bytes << " records " << c.records;
}

class DdpParityTest : public ::testing::TestWithParam<Case> {};

TEST_P(DdpParityTest, RanksMatchEachOtherAndTheSingleProcess) {
  const Case& c = GetParam();
  testing::TempDir dir;
  auto cmd = [&](int rank, int world, int port, const std::string& out, const std::string& precision) {
    return std::string(DFC_RANK_BINARY) + (precision == "float64" ? " --float64" : "") + " --model " + c.arch + " --rank " + std::to_string(rank) +
           " --world-size " + std::to_string(world) + " --port " + std::to_string(port) + " --global-batch " +
           std::to_string(c.global_batch) + " --image-size " + std::to_string(c.image_size) + " --bucket-bytes " +
           std::to_string(c.bucket_bytes) + " --records " + std::to_string(c.records) + " --out " + out;
  };
  auto run_ranks = [&](const std::string& precision) {
    const int port = PickFreePort();
    std::vector<testing::CommandResult> results(c.world);
    std::vector<std::thread> ranks;
    for (int r = 0; r < c.world; ++r) {
      ranks.emplace_back([&, r] {
        results[r] = testing::RunCommand(
            cmd(r, c.world, port, dir.Join(precision + "-rank" + std::to_string(r) + ".ckpt"), precision));
      });
    }
    for (auto& t : ranks) t.join();
    for (int r = 0; r < c.world; ++r) ASSERT_EQ(results[r].exit_code, 0) << "rank " << r << ": " << results[r].err;
  };
  auto single = testing::RunCommand(cmd(0, 1, PickFreePort(), dir.Join("float64-single.ckpt"), "float64"));
  ASSERT_EQ(single.exit_code, 0) << single.err;
  run_ranks("float64");
  run_ranks("float32");

  auto ref = Load(c.arch, dir.Join("float64-single.ckpt"));
  for (const std::string precision : {"float32", "float64"}) {
    auto rank0 = Load(c.arch, dir.Join(precision + "-rank0.ckpt"));
    for (int r = 1; r < c.world; ++r) {
      auto got = Load(c.arch, dir.Join(precision + "-rank" + std::to_string(r) + ".ckpt"));
      ASSERT_EQ(got.size(), rank0.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_TRUE(torch::equal(got[i].second, rank0[i].second))
            << precision << ": rank " << r << " differs from rank 0 in " << got[i].first;
      }
    }
  }
  auto got = Load(c.arch, dir.Join("float64-rank0.ckpt"));
  ASSERT_EQ(got.size(), ref.size());
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double scale = ref[i].second.to(torch::kDouble).abs().max().item<double>();
    const double diff = (got[i].second.to(torch::kDouble) - ref[i].second.to(torch::kDouble)).abs().max().item<double>();
    EXPECT_LE(diff, 1e-5 * std::max(1.0, scale))
        << ref[i].first << ": ranks vs single process, max |diff| " << diff << " (max |value| " << scale << ")";
    worst = std::max(worst, diff / std::max(1.0, scale));
  }
  std::printf("float64 ranks vs single process: worst relative difference %.3g\n", worst);
}

// Global batch 8. Ragged cases: 17 records end with a batch of 1 (every rank
// but rank 0 has an empty share), 19 with 3 (world 4: rank 3 empty), 2 records
// are fewer than the ranks of world 3 and 4.
INSTANTIATE_TEST_SUITE_P(
    WorldSizes, DdpParityTest,
    ::testing::Values(Case{"mesoinception4", 2, 8, 256, int64_t{25} << 20, 24},
                      Case{"mesoinception4", 2, 8, 256, 4096, 24},  // many small buckets
                      Case{"mesoinception4", 2, 8, 256, int64_t{25} << 20, 17},
                      Case{"mesoinception4", 3, 8, 256, 4096, 19},
                      Case{"mesoinception4", 4, 8, 256, int64_t{25} << 20, 19},
                      Case{"mesoinception4", 3, 8, 256, int64_t{25} << 20, 2},
                      Case{"mesoinception4", 4, 8, 256, 4096, 2},
                      Case{"resnet50-vggface", 2, 8, 64, 4096, 24},
                      Case{"resnet50-vggface", 4, 8, 64, int64_t{25} << 20, 24},
                      Case{"resnet50-vggface", 3, 8, 64, 4096, 17}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name = info.param.arch == "mesoinception4" ? "MesoInception4" : "SmallResNet";
      return name + "_world" + std::to_string(info.param.world) + "_bucket" + std::to_string(info.param.bucket_bytes) +
             "_records" + std::to_string(info.param.records);
    });

}  // namespace
}  // namespace dfc
