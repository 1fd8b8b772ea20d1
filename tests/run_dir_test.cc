// The run directory's fencing file (which attempt of a cluster job may
// write) and its lock (which run writes there now).
#include "common/run_dir.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/dir_lock.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

TEST(RunDirTest, OnlyTheAttemptThatOwnsTheDirectoryMayWrite) {
  testing::TempDir dir;
  const std::string out = dir.Join("jobs/job-1");  // not there yet: the claim creates it
  // `dfc train` and runs from before fencing record no attempt: anyone writes.
  EXPECT_TRUE(run_dir::CheckOwnedBy(out, 1).ok());
  ASSERT_TRUE(run_dir::ClaimForAttempt(out, 1).ok());
  EXPECT_EQ(testing::ReadFileOrDie(run_dir::AttemptFile(out)), "1\n");
  EXPECT_TRUE(run_dir::CheckOwnedBy(out, 1).ok());
  // The job restarts as attempt 3 (2 never started); attempt 1's rank is cut
  // off and still running.
  ASSERT_TRUE(run_dir::ClaimForAttempt(out, 3).ok());
  EXPECT_TRUE(run_dir::CheckOwnedBy(out, 3).ok());
  const absl::Status stale = run_dir::CheckOwnedBy(out, 1);
  EXPECT_EQ(stale.code(), absl::StatusCode::kAborted) << stale;
  EXPECT_NE(stale.message().find("attempt 1 no longer owns " + out + ": the job was restarted as attempt 3"),
            std::string::npos)
      << stale;
  // A file that is not a number is named, not taken for "anyone may write".
  testing::WriteFileOrDie(run_dir::AttemptFile(out), "three\n");
  const absl::Status garbled = run_dir::CheckOwnedBy(out, 3);
  EXPECT_EQ(garbled.code(), absl::StatusCode::kDataLoss) << garbled;
  EXPECT_NE(garbled.message().find(run_dir::AttemptFile(out)), std::string::npos) << garbled;
}

// A cluster rank starts only where the coordinator's claim for its attempt
// is visible. None there, or an earlier attempt's, after the wait, means the
// worker does not share the coordinator's output root: FAILED_PRECONDITION
// (permanent) saying so. A later attempt's claim fences it off (ABORTED).
TEST(RunDirTest, ARankStartsOnlyWhereTheCoordinatorClaimedItsRunDirectory) {
  testing::TempDir dir;
  const std::string out = dir.Join("jobs/job-1");
  const absl::Status none = run_dir::CheckClaimedFor(out, 1, std::chrono::milliseconds(300));
  EXPECT_EQ(none.code(), absl::StatusCode::kFailedPrecondition) << none;
  EXPECT_NE(none.message().find("but there is none on this worker: this worker does not see the coordinator's "
                                "--output-root"),
            std::string::npos)
      << none;
  EXPECT_FALSE(std::filesystem::exists(out)) << "the check created the run directory";
  ASSERT_TRUE(run_dir::ClaimForAttempt(out, 1).ok());
  EXPECT_TRUE(run_dir::CheckClaimedFor(out, 1, std::chrono::milliseconds(0)).ok());
  const absl::Status earlier = run_dir::CheckClaimedFor(out, 2, std::chrono::milliseconds(0));
  EXPECT_EQ(earlier.code(), absl::StatusCode::kFailedPrecondition) << earlier;
  EXPECT_NE(earlier.message().find("for attempt 2 in its 'attempt' file, but it names attempt 1"), std::string::npos)
      << earlier;
  ASSERT_TRUE(run_dir::ClaimForAttempt(out, 3).ok());
  EXPECT_EQ(run_dir::CheckClaimedFor(out, 2, std::chrono::milliseconds(0)).code(), absl::StatusCode::kAborted);
  // Shared storage may show the claim late: it is waited for.
  const std::string late = dir.Join("jobs/job-2");
  std::thread claim([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_TRUE(run_dir::ClaimForAttempt(late, 1).ok());
  });
  const absl::Status waited = run_dir::CheckClaimedFor(late, 1, std::chrono::seconds(10));
  claim.join();
  EXPECT_TRUE(waited.ok()) << waited;
}

// `dfc train` holds the lock alone; cluster attempts share it with each
// other and keep `dfc train` out; whoever is refused is told who holds it,
// in printable ASCII whatever the file holds (a rank may write it).
TEST(RunDirTest, TheLockKeepsASecondRunOutAndNamesTheFirst) {
  testing::TempDir dir;
  const std::string out = dir.Join("run");  // not there yet: the lock creates it
  std::string note;
  auto train = run_dir::LockForWriting(out, /*shared=*/false, "dfc train", &note);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(note, "");
  EXPECT_EQ(testing::ReadFileOrDie(out + "/run.lock").rfind("dfc train (pid " + std::to_string(::getpid()) + " on ", 0),
            0u);
  for (const bool shared : {false, true}) {
    auto second = run_dir::LockForWriting(out, shared, "job j attempt 1 (its rank 0)", &note);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(second.status().message().find("'" + out + "' is in use by dfc train (pid "), std::string::npos)
        << second.status();
  }
  ::close(*train);
  auto attempt1 = run_dir::LockForWriting(out, true, "job j attempt 1 (its rank 0)", &note);
  auto attempt2 = run_dir::LockForWriting(out, true, "job j attempt 2 (its rank 0)", &note);
  ASSERT_TRUE(attempt1.ok()) << attempt1.status();
  ASSERT_TRUE(attempt2.ok()) << "a stale attempt kept the next out: " << attempt2.status();
  auto local = run_dir::LockForWriting(out, false, "dfc train", &note);
  ASSERT_FALSE(local.ok());
  EXPECT_NE(local.status().message().find("is in use by job j attempt 2 (its rank 0) (pid "), std::string::npos)
      << local.status();
  ::close(*attempt1);
  ::close(*attempt2);

  auto hostile = TryLockFile(out + "/run.lock", LockMode::kExclusive, "a\x1b[2Jb\xff\x01" "c\nsecond line");
  ASSERT_TRUE(hostile.ok()) << hostile.status();
  auto refused = TryLockFile(out + "/run.lock", LockMode::kShared, "x");
  EXPECT_EQ(refused.status().message(), "a?[2Jb??c");
  ::close(*hostile);
  auto free_again = run_dir::LockForWriting(out, false, "dfc train", &note);
  EXPECT_TRUE(free_again.ok()) << free_again.status();
  if (free_again.ok()) ::close(*free_again);
}

}  // namespace
}  // namespace dfc
