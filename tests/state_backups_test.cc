// Scheduled copies of the job database (--backup-dir) and restoring one
// (--restore-from): a real SQLite file written through JobStore, copied by
// StateBackups on its own thread, each copy opened again as a database.
#include "coordinator/state_backups.h"

#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "common/http/metrics_endpoint.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/job_store.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

class StateBackupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_.Join("state"));
    fs::create_directories(dir_.Join("copies"));
    auto store = JobStore::Open(database());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    v1::SubmitJobRequest r;
    r.mutable_config()->set_model(v1::MESOINCEPTION4);
    r.mutable_config()->set_data(dir_.Join("data"));
    r.mutable_config()->set_epochs(1);
    r.set_world_size(1);
    auto job = store_->Create(r, dir_.Join("out"), 1000);
    ASSERT_TRUE(job.ok()) << job.status();
    job_id_ = job->first.job_id();
  }
  std::string database() const { return dir_.Join("state/jobs.db"); }
  StateBackupOptions Options(int interval_s, int keep) const {
    StateBackupOptions o;
    o.database = database();
    o.dir = dir_.Join("copies");
    o.interval = seconds(interval_s);
    o.keep = keep;
    return o;
  }
  // Whether the copy opens as a database holding the job.
  bool HoldsTheJob(const std::string& copy) const {
    auto store = JobStore::Open(copy);
    return store.ok() && (*store)->Get(job_id_).ok();
  }

  testing::TempDir dir_;
  std::unique_ptr<JobStore> store_;
  std::string job_id_;
};

TEST_F(StateBackupsTest, CopiesAreTakenOnScheduleAndOnlyTheNewestAreKept) {
  // What an operator's folder may hold: an old copy, one a killed process
  // left half written, and a file of their own.
  const std::string old_copy = dir_.Join("copies/jobs-20200101T000000Z.db");
  ASSERT_TRUE(JobStore::Backup(database(), old_copy).ok());
  testing::WriteFileOrDie(dir_.Join("copies/jobs-20200102T000000Z.db.partial"), "half");
  testing::WriteFileOrDie(dir_.Join("copies/jobs-20200102T000000Z.db.partial-journal"), "its journal");
  testing::WriteFileOrDie(dir_.Join("copies/notes.txt"), "mine");

  auto backups = StateBackups::Start(Options(1, 2));
  ASSERT_TRUE(backups.ok()) << backups.status();
  EXPECT_FALSE(fs::exists(dir_.Join("copies/jobs-20200102T000000Z.db.partial")));
  EXPECT_FALSE(fs::exists(dir_.Join("copies/jobs-20200102T000000Z.db.partial-journal")));
  ASSERT_TRUE(testing::WaitUntil([&] { return (*backups)->copies_taken() >= 3; }, seconds(20)))
      << (*backups)->copies_taken() << " copies taken, " << (*backups)->failures() << " failed";
  CoordinatorMetrics metrics;
  metrics.Attach(backups->get());
  const int64_t last = (*backups)->last_copy_unix();
  const std::string scraped = SerializeMetrics({std::shared_ptr<prometheus::Collectable>(&metrics, [](auto*) {})});
  backups->reset();

  const std::vector<std::string> copies = StateBackups::List(dir_.Join("copies"));
  ASSERT_EQ(copies.size(), 2u);
  EXPECT_GT(copies[0], old_copy) << "the oldest copy is removed first";
  for (const std::string& copy : copies) {
    // Each copy is one file (a rollback-journal database: header bytes 18
    // and 19 are 1; WAL mode would want a -wal and -shm beside it).
    const std::string header = testing::ReadFileOrDie(copy).substr(18, 2);
    EXPECT_EQ(header, std::string("\1\1", 2)) << copy;
  }
  for (const std::string& copy : copies) EXPECT_TRUE(HoldsTheJob(copy)) << copy;
  EXPECT_TRUE(fs::exists(dir_.Join("copies/notes.txt")));
  EXPECT_GT(last, 1700000000);
  EXPECT_NE(scraped.find("dfc_state_last_backup_timestamp_seconds " + std::to_string(last)), std::string::npos)
      << scraped;
  EXPECT_NE(scraped.find("dfc_state_backup_failures_total 0"), std::string::npos) << scraped;
}

TEST_F(StateBackupsTest, ACoordinatorRestartedWithinTheIntervalTakesNoNewCopy) {
  auto first = StateBackups::Start(Options(3600, 2));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(testing::WaitUntil([&] { return (*first)->copies_taken() == 1; }, seconds(10)));
  const int64_t taken_at = (*first)->last_copy_unix();
  first->reset();
  // A crash loop: three more starts within the hour take nothing, so the
  // copies from before it are not pushed out.
  for (int i = 0; i < 3; ++i) {
    auto again = StateBackups::Start(Options(3600, 2));
    ASSERT_TRUE(again.ok()) << again.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    EXPECT_EQ((*again)->copies_taken(), 0);
    EXPECT_EQ((*again)->last_copy_unix(), taken_at);
  }
  EXPECT_EQ(StateBackups::List(dir_.Join("copies")).size(), 1u);
}

TEST_F(StateBackupsTest, AFailedCopyIsCountedRemovesNothingAndIsTriedAgain) {
  auto backups = StateBackups::Start(Options(1, 1));
  ASSERT_TRUE(backups.ok()) << backups.status();
  ASSERT_TRUE(testing::WaitUntil([&] { return (*backups)->copies_taken() >= 1; }, seconds(10)));
  // The database is not where it was (a volume not mounted): copies fail.
  fs::rename(database(), database() + ".away");
  ASSERT_TRUE(testing::WaitUntil([&] { return (*backups)->failures() >= 2; }, seconds(10)));
  const int64_t taken = (*backups)->copies_taken();
  const std::vector<std::string> kept = StateBackups::List(dir_.Join("copies"));
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_TRUE(HoldsTheJob(kept[0]));
  fs::rename(database() + ".away", database());
  EXPECT_TRUE(testing::WaitUntil([&] { return (*backups)->copies_taken() > taken; }, seconds(10)));
}

TEST_F(StateBackupsTest, AFolderThatCannotHoldCopiesIsNamedAtStart) {
  StateBackupOptions missing = Options(60, 2);
  missing.dir = dir_.Join("nowhere");
  auto a = StateBackups::Start(missing);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "--backup-dir: '" + missing.dir + "' does not exist");
  StateBackupOptions file = Options(60, 2);
  file.dir = dir_.Join("copies/notes.txt");
  testing::WriteFileOrDie(file.dir, "mine");
  auto b = StateBackups::Start(file);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().message(), "--backup-dir: '" + file.dir + "' is not a directory");
  auto c = StateBackups::Start(Options(60, 0));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "--backup-keep must be at least 1");
}

// Two coordinators given one folder (two clusters' backups on one share):
// the second is refused, so neither prunes the other's copies; a state
// restored from a copy keeps the id its copies' folder is marked with.
TEST_F(StateBackupsTest, AFolderHoldingAnotherStatesCopiesIsRefused) {
  auto id = store_->StateId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), 32u);
  StateBackupOptions mine = Options(3600, 2);
  mine.state_id = *id;
  auto first = StateBackups::Start(mine);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(testing::WaitUntil([&] { return (*first)->copies_taken() == 1; }, seconds(10)));
  first->reset();

  fs::create_directories(dir_.Join("other"));
  auto other_store = JobStore::Open(dir_.Join("other/jobs.db"));
  ASSERT_TRUE(other_store.ok()) << other_store.status();
  auto other_id = (*other_store)->StateId();
  ASSERT_TRUE(other_id.ok()) << other_id.status();
  ASSERT_NE(*other_id, *id);
  StateBackupOptions theirs = Options(1, 1);
  theirs.database = dir_.Join("other/jobs.db");
  theirs.state_id = *other_id;
  auto refused = StateBackups::Start(theirs);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("--backup-dir: '" + dir_.Join("copies") +
                                            "' holds the copies of another state (.dfc-state-id says " + *id),
            std::string::npos)
      << refused.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const std::vector<std::string> copies = StateBackups::List(dir_.Join("copies"));
  ASSERT_EQ(copies.size(), 1u) << "the other state took or removed copies";

  // A state restored from one of the copies is the same state.
  store_.reset();
  fs::create_directories(dir_.Join("new"));
  auto restored = JobStore::Restore(copies[0], dir_.Join("new/jobs.db"), dir_.Join("new/aside"));
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto reopened = JobStore::Open(dir_.Join("new/jobs.db"));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->StateId().value_or(""), *id);
  mine.database = dir_.Join("new/jobs.db");
  EXPECT_TRUE(StateBackups::Start(mine).ok());
}

// --restore-from given another program's SQLite database: refused, naming
// it, and the state is as it was (nothing moved aside).
TEST_F(StateBackupsTest, ARestoreFromADatabaseThatIsNotDfcsChangesNothing) {
  const std::string other = dir_.Join("other.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE notes(t TEXT); INSERT INTO notes VALUES('mine')", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  store_.reset();
  auto restored = JobStore::Restore(other, database(), dir_.Join("state/aside"));
  ASSERT_FALSE(restored.ok());
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(restored.status().message().find("--restore-from: cannot restore '" + other + "': '" + other +
                                             "' is not a DFC state database (no such table: jobs); nothing was changed"),
            std::string::npos)
      << restored.status();
  EXPECT_FALSE(fs::exists(dir_.Join("state/aside")));
  EXPECT_FALSE(fs::exists(database() + ".restoring"));
  EXPECT_TRUE(HoldsTheJob(database()));
  // A copy of its own state is restored, and the one it replaced kept.
  const std::string copy = dir_.Join("copy.db");
  ASSERT_TRUE(JobStore::Backup(database(), copy).ok());
  restored = JobStore::Restore(copy, database(), dir_.Join("state/aside"));
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->first, 1);
  EXPECT_TRUE(restored->second);
  EXPECT_TRUE(HoldsTheJob(database()));
  EXPECT_TRUE(HoldsTheJob(dir_.Join("state/aside/jobs.db")));
}

}  // namespace
}  // namespace dfc
