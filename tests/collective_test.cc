// The Gloo process group behind `Collective`, ranks as threads of one
// process: only ranks that hold the attempt's rendezvous key meet.
#include "training/collective.h"

#include <array>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "common/random_token.h"
#include "common/subprocess.h"

namespace dfc {
namespace {

struct Joined {
  absl::Status status;
  float sum = 0;
};

// Ranks 0 and 1 join with their own keys and, if they meet, sum rank + 1.
std::array<Joined, 2> JoinTwoRanks(const std::array<std::string, 2>& keys, std::chrono::milliseconds timeout) {
  const int port = PickFreePort();
  std::array<Joined, 2> out;
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      CollectiveOptions o;
      o.rank = r;
      o.world_size = 2;
      o.store_port = port;
      o.timeout = timeout;
      o.rendezvous_key = keys[r];
      auto c = Collective::Connect(o);
      if (!c.ok()) {
        out[r].status = c.status();
        return;
      }
      torch::Tensor t = torch::full({4}, static_cast<float>(r + 1));
      out[r].status = (*c)->AllReduceSum(t);
      out[r].sum = t[0].item<float>();
    });
  }
  for (auto& t : ranks) t.join();
  return out;
}

TEST(CollectiveTest, RanksHoldingTheSameKeyMeet) {
  const std::string key = RandomHexToken();
  ASSERT_EQ(key.size(), 32u);
  EXPECT_EQ(key.find_first_not_of("0123456789abcdef"), std::string::npos) << key;
  EXPECT_NE(RandomHexToken(), key);
  for (const auto& r : JoinTwoRanks({key, key}, std::chrono::milliseconds(30000))) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.sum, 3.0f);
  }
}

// A peer without the attempt's key (a stale rank of an earlier attempt, or
// anything else that reaches the store's port) reads and writes other keys
// than the real ranks: the rendezvous never completes with it, and both
// sides fail at the timeout, naming the store, instead of wiring a stranger
// into the job's all-reduce.
TEST(CollectiveTest, APeerWithoutTheKeyNeverJoins) {
  for (const std::array<std::string, 2>& keys : {std::array<std::string, 2>{RandomHexToken(), RandomHexToken()},
                                                 std::array<std::string, 2>{RandomHexToken(), ""}}) {
    SCOPED_TRACE("rank 1's key: '" + keys[1] + "'");
    const auto start = std::chrono::steady_clock::now();
    const auto joined = JoinTwoRanks(keys, std::chrono::milliseconds(3000));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (int r = 0; r < 2; ++r) {
      ASSERT_FALSE(joined[r].status.ok()) << "rank " << r << " met a peer holding another key";
      EXPECT_EQ(joined[r].status.code(), absl::StatusCode::kUnavailable) << joined[r].status;
      EXPECT_NE(joined[r].status.message().find("cannot join the process group at 127.0.0.1:"), std::string::npos)
          << joined[r].status;
    }
    EXPECT_LT(seconds, 60) << "the rendezvous outlived its timeout";
  }
}

}  // namespace
}  // namespace dfc
