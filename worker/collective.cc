#include "worker/collective.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "absl/strings/str_cat.h"

namespace dfc {
namespace {

absl::Status FromException(const std::string& what, const std::exception& e) {
  return absl::UnavailableError(absl::StrCat(what, ": ", e.what()));
}

class C10dWork : public CollectiveWork {
 public:
  explicit C10dWork(c10::intrusive_ptr<c10d::Work> work) : work_(std::move(work)) {}
  absl::Status Wait() override {
    try {
      work_->wait();
    } catch (const std::exception& e) {
      return FromException("collective failed", e);
    }
    return absl::OkStatus();
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
};

class FailedWork : public CollectiveWork {
 public:
  explicit FailedWork(absl::Status st) : st_(std::move(st)) {}
  absl::Status Wait() override { return st_; }

 private:
  absl::Status st_;
};

class C10dCollective : public Collective {
 public:
  C10dCollective(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::ProcessGroup> pg, int rank,
                 int world)
      : store_(std::move(store)), pg_(std::move(pg)), rank_(rank), world_(world) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  std::unique_ptr<CollectiveWork> AllReduceSumAsync(torch::Tensor t) override {
    try {
      std::vector<at::Tensor> tensors = {std::move(t)};
      return std::make_unique<C10dWork>(pg_->allreduce(tensors));
    } catch (const std::exception& e) {
      return std::make_unique<FailedWork>(FromException("allreduce failed", e));
    }
  }

  absl::Status Broadcast(std::vector<torch::Tensor> tensors, int root) override {
    try {
      for (auto& t : tensors) {
        std::vector<at::Tensor> one = {t};
        c10d::BroadcastOptions opts;
        opts.rootRank = root;
        pg_->broadcast(one, opts)->wait();
      }
    } catch (const std::exception& e) {
      return FromException("broadcast failed", e);
    }
    return absl::OkStatus();
  }

  absl::Status Barrier() override {
    try {
      pg_->barrier()->wait();
    } catch (const std::exception& e) {
      return FromException("barrier failed", e);
    }
    return absl::OkStatus();
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  const int rank_, world_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Collective>> Collective::Connect(const CollectiveOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", o.rank, " is not in a world of size ", o.world_size));
  }
  if (o.store_port <= 0 || o.store_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("store port ", o.store_port, " is not a TCP port"));
  }
  if (o.backend != "gloo") {
    return absl::UnimplementedError(absl::StrCat("collective backend '", o.backend,
                                                 "' is not built in (this LibTorch has no CUDA)"));
  }
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.store_port);
    so.isServer = o.rank == 0;
    so.numWorkers = static_cast<size_t>(o.world_size);
    so.waitWorkers = true;
    so.timeout = o.timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(o.store_host, so);
    auto options = c10d::ProcessGroupGloo::Options::create(o.timeout);
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(o.bind_host));
    options->threads = 2;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, options);
    return std::unique_ptr<Collective>(new C10dCollective(store, pg, o.rank, o.world_size));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", o.rank, " cannot join the process group at ", o.store_host,
                                               ":", o.store_port, ": ", e.what()));
  }
}

}  // namespace dfc
