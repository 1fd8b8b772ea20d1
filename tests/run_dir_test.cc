// The run directory's fencing file: which attempt of a cluster job may write.
#include "common/run_dir.h"

#include <string>

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace dfc
