#include "training/collective.h"

#include <type_traits>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DFC_WITH_NCCL
#include "training/nccl_collective.h"
#endif

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

// The process-group type differs across LibTorch versions (1.13:
// ProcessGroup subclasses; 2.x: Backend subclasses) but the calls used here
// are the same, so the wrapper is a template over it. `on_device` is where
// the backend wants tensors (CPU for Gloo); others are copied. (NCCL is
// called directly: training/nccl_collective.cc.)
template <typename PG>
class C10dCollective : public Collective {
 public:
  C10dCollective(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<PG> pg, int rank, int world,
                 torch::Device on_device)
      : store_(std::move(store)), pg_(std::move(pg)), rank_(rank), world_(world), device_(on_device) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  std::unique_ptr<CollectiveWork> AllReduceSumAsync(torch::Tensor t) override {
    try {
      if (t.device() != device_) {
        // A staged copy: all-reduce on the backend's device, copy back on wait.
        torch::Tensor staged = t.to(device_);
        std::vector<at::Tensor> tensors = {staged};
        return std::make_unique<StagedWork>(pg_->allreduce(tensors), staged, t);
      }
      std::vector<at::Tensor> tensors = {std::move(t)};
      return std::make_unique<C10dWork>(pg_->allreduce(tensors));
    } catch (const std::exception& e) {
      return FailedCollectiveWork(FromException("allreduce failed", e));
    }
  }

  absl::Status Broadcast(std::vector<torch::Tensor> tensors, int root) override {
    try {
      for (auto& t : tensors) {
        torch::Tensor staged = t.device() == device_ ? t : t.to(device_);
        std::vector<at::Tensor> one = {staged};
        c10d::BroadcastOptions opts;
        opts.rootRank = root;
        pg_->broadcast(one, opts)->wait();
        if (!staged.is_same(t)) t.copy_(staged);
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
  class StagedWork : public CollectiveWork {
   public:
    StagedWork(c10::intrusive_ptr<c10d::Work> work, torch::Tensor staged, torch::Tensor dst)
        : inner_(std::move(work)), staged_(std::move(staged)), dst_(std::move(dst)) {}
    absl::Status Wait() override {
      absl::Status st = inner_.Wait();
      if (st.ok()) dst_.copy_(staged_);
      return st;
    }

   private:
    C10dWork inner_;
    torch::Tensor staged_, dst_;
  };

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<PG> pg_;
  const int rank_, world_;
  const torch::Device device_;
};

// LibTorch >= 2.6 adds a `lazyInit` parameter to createDeviceForHostname;
// call whichever form the found LibTorch has (the one place the c10d API of
// 1.13 and 2.x differ for what DFC uses).
template <typename PG, typename = void>
struct HasLazyInit : std::false_type {};
template <typename PG>
struct HasLazyInit<PG, std::void_t<decltype(PG::createDeviceForHostname(std::string(), false))>> : std::true_type {};

template <typename PG>
auto GlooDeviceFor(const std::string& host) {
  if constexpr (HasLazyInit<PG>::value) {
    return PG::createDeviceForHostname(host, /*lazyInit=*/false);
  } else {
    return PG::createDeviceForHostname(host);
  }
}

}  // namespace

std::unique_ptr<CollectiveWork> FailedCollectiveWork(absl::Status status) {
  return std::make_unique<FailedWork>(std::move(status));
}

absl::StatusOr<std::unique_ptr<Collective>> Collective::Connect(const CollectiveOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", o.rank, " is not in a world of size ", o.world_size));
  }
  if (o.store_port <= 0 || o.store_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("store port ", o.store_port, " is not a TCP port"));
  }
  if (o.backend != "gloo" && o.backend != "nccl") {
    return absl::InvalidArgumentError(absl::StrCat("collective backend '", o.backend, "' is not gloo or nccl"));
  }
#ifndef DFC_WITH_NCCL
  if (o.backend == "nccl") {
    return absl::UnimplementedError("the nccl backend was not built (no CUDA toolkit with NCCL at build time)");
  }
#endif
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.store_port);
    so.isServer = o.rank == 0;
    so.numWorkers = static_cast<size_t>(o.world_size);
    so.waitWorkers = true;
    so.timeout = o.timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(o.store_host, so);
    // Every key the process group reads or writes carries the attempt's
    // secret: without it, a host that reaches the port (the store listens on
    // all interfaces) can neither read the ranks' addresses nor plant its own.
    if (!o.rendezvous_key.empty()) store = c10::make_intrusive<c10d::PrefixStore>(o.rendezvous_key, store);
#ifdef DFC_WITH_NCCL
    if (o.backend == "nccl") return ConnectNccl(store, o);
#endif
    auto options = c10d::ProcessGroupGloo::Options::create(o.timeout);
    options->devices.push_back(GlooDeviceFor<c10d::ProcessGroupGloo>(o.bind_host));
    options->threads = 2;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, options);
    return std::unique_ptr<Collective>(
        new C10dCollective<c10d::ProcessGroupGloo>(store, pg, o.rank, o.world_size, torch::Device(torch::kCPU)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", o.rank, " cannot join the process group at ", o.store_host,
                                               ":", o.store_port, ": ", e.what()));
  }
}

}  // namespace dfc
