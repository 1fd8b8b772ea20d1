// One data-parallel rank for the distributed tests: trains one epoch over
// `--records` deterministic synthetic images in global batches of
// `--global-batch` (the last one ragged when they do not divide), taking its
// rows of each as the trainer's shard planner assigns them -- a rank's share
// may be empty -- and writes the model (parameters + buffers) as a
// checkpoint. With --world-size 1 it is the single-process reference.
#include <cstdio>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>

#include "data_shards/shard_planner.h"
#include "models/checkpoint.h"
#include "training/collective.h"
#include "training/gradient_sync.h"
#include "models/detector.h"

int main(int argc, char** argv) {
  CLI::App app{"ddp_rank_main"};
  std::string arch = "mesoinception4", out, optimizer = "adam";
  int rank = 0, world = 1, port = 0, global_batch = 8, records = 24, image_size = 0;
  int64_t bucket_bytes = dfc::GradientSynchronizer::kDefaultBucketBytes;
  uint64_t seed = 1;
  app.add_option("--model", arch);
  app.add_option("--rank", rank);
  app.add_option("--world-size", world);
  app.add_option("--port", port)->required();
  app.add_option("--global-batch", global_batch);
  app.add_option("--records", records, "Images in the epoch (any number >= 1)");
  app.add_option("--image-size", image_size, "0 = the model's");
  app.add_option("--bucket-bytes", bucket_bytes);
  app.add_option("--seed", seed);
  app.add_option("--optimizer", optimizer)->check(CLI::IsMember({"adam", "sgd"}));
  bool float64 = false;
  app.add_flag("--float64", float64, "Train in double precision");
  app.add_option("--out", out)->required();
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);

  dfc::DetectorOptions dopt;
  if (arch == "resnet50-vggface") {  // the small configuration
    dopt.resnet_width = 8;
    dopt.resnet_blocks = {1, 1, 1, 1};
    dopt.freeze_keras_layers = 10;
  }
  torch::manual_seed(seed + static_cast<uint64_t>(rank) * 7919);  // ranks start different: broadcast must fix it
  auto model = dfc::MakeDetector(arch, dopt);
  if (!model.ok()) return 2;
  const int size = image_size > 0 ? image_size : (*model)->input_size();
  const auto dtype = float64 ? torch::kFloat64 : torch::kFloat32;
  (*model)->to(dtype);
  dfc::CollectiveOptions copt;
  copt.store_port = port;
  copt.rank = rank;
  copt.world_size = world;
  copt.timeout = std::chrono::milliseconds(30000);
  auto collective = dfc::Collective::Connect(copt);
  if (!collective.ok()) {
    std::fprintf(stderr, "%s\n", std::string(collective.status().message()).c_str());
    return 1;
  }
  std::vector<torch::Tensor> state;
  for (auto& p : (*model)->parameters()) state.push_back(p.data());
  for (auto& b : (*model)->buffers()) state.push_back(b);
  if (auto st = (*collective)->Broadcast(state, 0); !st.ok()) return 1;

  (*model)->SetBatchNormAllReduce([c = collective->get()](torch::Tensor& t) {
    auto st = c->AllReduceSum(t);
    if (!st.ok()) throw std::runtime_error(std::string(st.message()));
  });
  const dfc::RankEpochPlan plan = dfc::PlanRankEpoch(static_cast<uint32_t>(records), global_batch, world, rank, seed, 0,
                                                     /*shuffle=*/false);
  std::vector<torch::Tensor> trainable;
  for (auto& p : (*model)->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (optimizer == "adam") {
    opt = std::make_unique<torch::optim::Adam>(trainable, torch::optim::AdamOptions(1e-3).eps(1e-7));
  } else {
    opt = std::make_unique<torch::optim::SGD>(trainable, torch::optim::SGDOptions(0.05));
  }
  dfc::GradientSynchronizer sync(collective->get(), (*model)->parameters(), bucket_bytes);
  (*model)->train();
  const int steps = static_cast<int>(plan.steps.size());
  for (int step = 0; step < steps; ++step) {
    const int64_t g = plan.global_batch[step];
    auto data_gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000 + static_cast<uint64_t>(step));
    torch::Tensor images = (torch::rand({g, 3, size, size}, data_gen) * 255).to(dtype);
    torch::Tensor labels = torch::randint(0, 2, {g}, data_gen).to(dtype);
    const int64_t n = static_cast<int64_t>(plan.steps[step].size());
    torch::Tensor x = images.narrow(0, plan.offset[step], n).contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor y = labels.narrow(0, plan.offset[step], n);
    (*model)->SetBatchShard(plan.offset[step], g);
    torch::manual_seed(seed * 31 + static_cast<uint64_t>(step));  // dropout draws the same on every rank
    opt->zero_grad();
    sync.BeginStep();
    // This rank's part of the global batch's mean loss, as the trainer does
    // (the gradient all-reduce averages over ranks, hence world / g).
    torch::Tensor loss = torch::binary_cross_entropy_with_logits((*model)->forward(x), y, {}, {}, torch::Reduction::Sum) *
                         (static_cast<double>(world) / static_cast<double>(g));
    loss.backward();
    if (auto st = sync.Finish(); !st.ok()) {
      std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
      return 1;
    }
    opt->step();
  }
  dfc::CheckpointMeta meta;
  meta.arch = arch;
  meta.step = steps;
  if (auto st = dfc::SaveCheckpoint(out, **model, nullptr, meta); !st.ok()) return 1;
  std::printf("buckets %zu\n", sync.num_buckets());
  return 0;
}
