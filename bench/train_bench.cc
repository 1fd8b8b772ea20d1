// Training-step throughput of DFC's models on synthetic batches (no data
// loading), the counterpart of train_bench.py. Prints one JSON line.
#include <chrono>
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "models/detector.h"
#include "models/precision.h"
#include "models/tensor_batch.h"
#include "training/cuda_step.h"
#include "training/graphed_step.h"

int main(int argc, char** argv) {
  CLI::App app{"train_bench"};
  std::string model_name = "mesoinception4";
  int batch = 32, steps = 10, warmup = 2, threads = 2;
  std::string precision = "fp32", cuda_graphs = "off";
  app.add_option("--model", model_name)->check(CLI::IsMember(dfc::DetectorNames()));
  app.add_option("--batch", batch)->check(CLI::Range(1, 1024));
  app.add_option("--steps", steps)->check(CLI::Range(1, 100000));
  app.add_option("--warmup", warmup)->check(CLI::Range(0, 1000));
  app.add_option("--threads", threads)->check(CLI::Range(1, 1024));
  app.add_option("--precision", precision, "Forward-pass autocast: fp32, bf16 or fp16")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--cuda-graphs", cuda_graphs,
                 "on: the trainer's captured step (GraphedTrainStep, staged copies); off: eager")
      ->check(CLI::IsMember({"on", "off"}));
  CLI11_PARSE(app, argc, argv);
  const std::optional<at::ScalarType> amp = dfc::AutocastType(precision);
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  auto model = dfc::MakeDetector(model_name);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 2;
  }
  const torch::Device device = dfc::DefaultDevice();
  (*model)->to(device);
  const bool resnet = model_name == "resnet50-vggface";
  std::vector<torch::Tensor> params;
  for (auto& p : (*model)->parameters())
    if (p.requires_grad()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(resnet ? 1e-5 : 1e-3).eps(resnet ? 1e-9 : 1e-7));
  const int size = (*model)->input_size();
  torch::Tensor pixels = torch::randint(0, 256, {batch, size, size, 3}, torch::kUInt8);
  torch::Tensor y = torch::randint(0, 2, {batch}).to(torch::kFloat32).to(device);
  (*model)->train();
  std::function<void()> step = [&] {
    torch::Tensor x = dfc::PixelsToTensor(pixels.data_ptr<uint8_t>(), batch, size, device);
    opt.zero_grad();
    torch::Tensor logits;
    {
      dfc::AutocastGuard autocast(device.type(), amp);
      logits = (*model)->forward(x);
    }
    torch::Tensor loss = torch::binary_cross_entropy_with_logits(logits.to(torch::kFloat32), y);
    loss.backward();
    opt.step();
    loss.item<float>();
  };
  // The trainer's graphed step: staged copy of the host batch, replay.
  std::unique_ptr<dfc::BatchUploader> uploader;
  std::unique_ptr<dfc::GraphedTrainStep> graphed;
  dfc::Batch host;
  if (cuda_graphs == "on") {
    if (!dfc::CudaGraphsBuilt() || !device.is_cuda()) {
      std::fprintf(stderr, "--cuda-graphs on needs a CUDA build and a CUDA device\n");
      return 2;
    }
    host.count = batch;
    host.image_size = size;
    host.pixels.assign(pixels.data_ptr<uint8_t>(), pixels.data_ptr<uint8_t>() + pixels.numel());
    torch::Tensor labels = y.to(torch::kCPU).to(torch::kInt32);
    host.labels.assign(labels.data_ptr<int32_t>(), labels.data_ptr<int32_t>() + batch);
    uploader = dfc::BatchUploader::Create(device);
    dfc::GraphedTrainStep::Options go;
    go.autocast = amp;
    go.batch_rows = batch;
    graphed = std::make_unique<dfc::GraphedTrainStep>(**model, opt, device, go, dfc::NewCudaGraphBackend(device));
    step = [&] {
      auto [px, labels_dev] = uploader->Upload(host);
      absl::Status st = graphed->Run(px, labels_dev, batch);
      if (!st.ok()) throw std::runtime_error(std::string(st.message()));
      graphed->loss_sum().item<float>();
    };
  }
  for (int i = 0; i < warmup; ++i) step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"impl\": \"dfc\", \"model\": \"%s\", \"batch\": %d, \"threads\": %d, \"device\": \"%s\", "
              "\"precision\": \"%s\", \"cuda_graphs\": \"%s\", \"images_per_second\": %.3f}\n",
              model_name.c_str(), batch, threads, device.str().c_str(), precision.c_str(), cuda_graphs.c_str(),
              batch * steps / dt);
  return 0;
}
