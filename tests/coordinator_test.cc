// The coordinator's state machine and scheduler as one class, driven through
// its own API (RegisterWorker, Heartbeat, Submit, Tick) with a fake clock and
// an in-memory store (SQLite ":memory:"): no processes and no waiting. The
// durable store is exercised by cluster_test's coordinator restarts, and here
// by the notebook-phase test, which reopens its SQLite file.
#include <algorithm>
#include <filesystem>
#include <functional>
#include <thread>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "coordinator/coordinator.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A real shard directory (submit checks its manifest).
    ASSERT_EQ(testing::RunCommand(testing::DfcBinary() + " synth --out " + dir_.Join("syn") + " --count 8").exit_code, 0);
    ASSERT_EQ(testing::RunCommand(testing::DfcBinary() + " shard --src " + dir_.Join("syn") + " --out " +
                                  dir_.Join("sh") + " --validation-split 0.25")
                  .exit_code,
              0);
  }
  std::unique_ptr<Coordinator> Make(int max_bypass = 8, bool in_memory = true,
                                    const std::function<void(CoordinatorOptions&)>& more = {}) {
    CoordinatorOptions o;
    o.state_dir = dir_.Join("state");
    o.now_ms = [this] { return now_; };
    o.max_bypass = max_bypass;
    o.in_memory_store = in_memory;
    if (more) more(o);
    auto c = Coordinator::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }
  // Registers a worker (asking for `previous_id` back, when given); returns its id.
  std::string Worker(Coordinator& c, int slots, const std::string& previous_id = "") {
    v1::RegisterWorkerRequest r;
    r.set_address("127.0.0.1");
    r.set_cpu_slots(slots);
    r.set_previous_worker_id(previous_id);
    auto resp = c.RegisterWorker(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp->worker_id();
  }
  std::string Submit(Coordinator& c, int world, bool wait = false, int max_restarts = 0,
                     const std::string& recipe = "", int epochs = 1) {
    v1::SubmitJobRequest r;
    r.mutable_config()->set_recipe(recipe);
    r.mutable_config()->set_model(v1::MESOINCEPTION4);
    r.mutable_config()->set_data(dir_.Join("sh"));
    r.mutable_config()->set_epochs(epochs);
    r.mutable_config()->set_batch_size(8);
    r.set_world_size(world);
    r.set_wait_for_capacity(wait);
    r.set_max_restarts(max_restarts);
    auto resp = c.Submit(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    now_ += 1;  // distinct submit times: FIFO is by time
    return resp.ok() ? resp->job_id() : "";
  }
  // One heartbeat of `worker` reporting `running` ranks (job, attempt, rank).
  v1::HeartbeatResponse Beat(Coordinator& c, const std::string& worker,
                             const std::vector<std::tuple<std::string, int, int>>& running = {}) {
    v1::HeartbeatRequest r;
    r.set_worker_id(worker);
    for (const auto& [job, attempt, rank] : running) {
      v1::RankStatus* s = r.add_ranks();
      s->set_job_id(job);
      s->set_attempt(attempt);
      s->set_rank(rank);
      s->set_running(true);
      s->set_store_port(rank == 0 ? 12345 : 0);
    }
    auto resp = c.Heartbeat(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return *resp;
  }
  v1::JobState State(Coordinator& c, const std::string& job) { return c.GetJob(job)->state(); }
  // The heartbeat of `worker` shut down (SIGTERM), giving its ranks `grace_ms`.
  static v1::HeartbeatRequest Leaving(const std::string& worker, int64_t grace_ms, bool ranks_stopped = false) {
    v1::HeartbeatRequest r;
    r.set_worker_id(worker);
    r.set_leaving(true);
    r.set_stop_grace_ms(grace_ms);
    r.set_ranks_stopped(ranks_stopped);
    return r;
  }
  // `ms` pass in steps of 500 ms, each a heartbeat of every one of `workers`, then a tick.
  void Pass(Coordinator& c, int ms, const std::vector<std::string>& workers) {
    for (int t = 0; t < ms; t += 500) {
      now_ += 500;
      for (const std::string& w : workers) Beat(c, w);
      c.Tick();
    }
  }
  // `worker` reports that `job`'s rank 0 of `attempt` exited with `exit_code`
  // (and its error line); returns the coordinator's answer.
  v1::HeartbeatResponse ExitRank(Coordinator& c, const std::string& worker, const std::string& job, int attempt,
                                 int exit_code, const std::string& error = "") {
    v1::HeartbeatRequest r;
    r.set_worker_id(worker);
    v1::RankStatus* s = r.add_ranks();
    s->set_job_id(job);
    s->set_attempt(attempt);
    s->set_rank(0);
    s->set_exited(true);
    s->set_exit_code(exit_code);
    s->set_error(error);
    auto resp = c.Heartbeat(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : v1::HeartbeatResponse();
  }
  // The same with code 1.
  void FailRank(Coordinator& c, const std::string& worker, const std::string& job, int attempt,
                const std::string& error) {
    ExitRank(c, worker, job, attempt, 1, error);
  }

  testing::TempDir dir_;
  int64_t now_ = 1000000;
};

TEST_F(CoordinatorTest, AJobThatCanNeverFitIsRefusedOrWaitsWithoutBlocking) {
  auto c = Make();
  const std::string w = Worker(*c, 2);
  v1::SubmitJobRequest big;
  big.mutable_config()->set_model(v1::MESOINCEPTION4);
  big.mutable_config()->set_data(dir_.Join("sh"));
  big.mutable_config()->set_epochs(1);
  big.mutable_config()->set_batch_size(8);
  big.set_world_size(3);
  auto refused = c->Submit(big);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("world_size 3 exceeds the 2 slot(s)"), std::string::npos)
      << refused.status();
  const std::string waiting = Submit(*c, 3, /*wait=*/true);
  const std::string small = Submit(*c, 1);
  Beat(*c, w);
  EXPECT_EQ(State(*c, waiting), v1::QUEUED);
  EXPECT_EQ(State(*c, small), v1::SCHEDULED) << "a job that can never fit blocked a small one";
  // It says so rather than waiting silently.
  const v1::Job j = *c->GetJob(waiting);
  EXPECT_TRUE(j.waiting().can_never_fit());
  EXPECT_NE(j.waiting().reason().find("needs 3 slots; the live workers have 2 in all"), std::string::npos)
      << j.waiting().reason();
}

// A QUEUED job says where it stands and why, in words; the reasons follow the cluster.
TEST_F(CoordinatorTest, AQueuedJobSaysItsPositionAndWhyItWaits) {
  auto c = Make();
  const std::string none = Submit(*c, 1);
  EXPECT_EQ(c->GetJob(none)->waiting().reason(), "needs 1 slot(s); no live workers");
  const std::string w = Worker(*c, 2);
  Beat(*c, w);
  ASSERT_EQ(State(*c, none), v1::SCHEDULED);
  EXPECT_FALSE(c->GetJob(none)->has_waiting());
  const std::string two = Submit(*c, 2);  // 1 slot left
  const std::string one = Submit(*c, 1);  // fits the free slot: backfilled
  Beat(*c, w);
  ASSERT_EQ(State(*c, one), v1::SCHEDULED);
  const v1::Job head = *c->GetJob(two);
  EXPECT_EQ(head.waiting().position(), 1);
  EXPECT_EQ(head.waiting().reason(), "needs 2 slots on live workers; 0 free");
  const std::string third = Submit(*c, 2);
  const v1::Job behind = *c->GetJob(third);
  EXPECT_EQ(behind.waiting().position(), 2);
  EXPECT_EQ(behind.waiting().reason(), "needs 2 slots on live workers; 0 free; 1 job(s) ahead");
  // Summaries carry it too.
  auto list = c->ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(list.ok());
  int with_waiting = 0;
  for (const auto& j : list->jobs()) with_waiting += j.has_waiting();
  EXPECT_EQ(with_waiting, 2);
}

TEST_F(CoordinatorTest, SmallJobsBackfillPastAHeadThatDoesNotFitButOnlyMaxBypassOfThem) {
  auto c = Make(/*max_bypass=*/2);
  const std::string w1 = Worker(*c, 1), w2 = Worker(*c, 1), w3 = Worker(*c, 1);
  const std::string busy = Submit(*c, 2);  // holds two of the three slots
  ASSERT_EQ(State(*c, busy), v1::SCHEDULED);
  const std::string head = Submit(*c, 3);   // fits the cluster, not the free slot
  const std::string s1 = Submit(*c, 1);     // backfills (1 of 2)
  EXPECT_EQ(State(*c, head), v1::QUEUED);
  EXPECT_EQ(State(*c, s1), v1::SCHEDULED);
  // s1 ends: its slot is free again; s2 backfills (2 of 2); s3 must wait.
  const std::string s2 = Submit(*c, 1);
  const std::string s3 = Submit(*c, 1);
  ASSERT_TRUE(c->Cancel(s1).ok());
  c->Tick();
  EXPECT_EQ(State(*c, s2), v1::SCHEDULED);
  ASSERT_TRUE(c->Cancel(s2).ok());
  c->Tick();
  EXPECT_EQ(State(*c, s3), v1::QUEUED) << "the head was bypassed more than max_bypass times";
  EXPECT_EQ(State(*c, head), v1::QUEUED);
  // The long job ends: the head gets the whole cluster before s3.
  ASSERT_TRUE(c->Cancel(busy).ok());
  c->Tick();
  EXPECT_EQ(State(*c, head), v1::SCHEDULED);
  EXPECT_EQ(State(*c, s3), v1::QUEUED);
}

TEST_F(CoordinatorTest, AScheduledJobWhoseRankZeroNeverStartsGoesBackToTheQueue) {
  auto c = Make();
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1);
  ASSERT_EQ(State(*c, job), v1::SCHEDULED);
  // The worker keeps heartbeating but never reports the rank running.
  for (int i = 0; i < 130; ++i) {
    now_ += 500;
    Beat(*c, w);
    c->Tick();
  }
  const v1::Job j = *c->GetJob(job);
  ASSERT_GE(j.failures_size(), 1);
  EXPECT_NE(j.failures(0).reason().find("rank 0 did not start within 60 s"), std::string::npos) << j.DebugString();
  EXPECT_EQ(j.restarts(), 0) << "a placement that never started is not a restart";
}

// A worker dies while the state database cannot be written: here another
// program holds its write lock (an operator's sqlite3 shell inside a
// transaction); a full disk is the same to the coordinator. The attempt's
// failure is not written, so nothing changes, and a submission is refused
// naming the lock. The coordinator used to drop the job from its active
// set anyway, and it read RUNNING for ever; the failure is now written at
// the first tick after the lock is gone, and the job restarts.
TEST_F(CoordinatorTest, AFailureThatCannotBeWrittenIsWrittenAtALaterTick) {
  auto c = Make(8, /*in_memory=*/false);
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1, false, /*max_restarts=*/1);
  Beat(*c, w, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.Join("state/jobs.db").c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  // The worker is silent past its timeout (3 s): the last tick fails its
  // attempt, and that write waits out the store's busy timeout (5 s) and fails.
  for (int i = 0; i < 7; ++i) {
    now_ += 500;
    c->Tick();
  }
  const v1::ListWorkersResponse workers = c->ListWorkers();
  ASSERT_EQ(workers.workers_size(), 1);
  EXPECT_EQ(workers.workers(0).state(), "gone") << "the worker was not given up";
  EXPECT_EQ(State(*c, job), v1::RUNNING) << "nothing changes unless it is written";
  v1::SubmitJobRequest r;
  r.mutable_config()->set_model(v1::MESOINCEPTION4);
  r.mutable_config()->set_data(dir_.Join("sh"));
  r.mutable_config()->set_epochs(1);
  r.mutable_config()->set_batch_size(8);
  r.set_world_size(1);
  r.set_wait_for_capacity(true);
  auto refused = c->Submit(r);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_NE(refused.status().message().find("the job was not submitted: the state database '" +
                                            dir_.Join("state/jobs.db") + "' is locked by another program"),
            std::string::npos)
      << refused.status();
  // The worker registers again while its rank's attempt still runs there on
  // record: it gets a new id, so that attempt still fails over (below).
  EXPECT_NE(Worker(*c, 1, w), w);
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  c->Tick();
  const v1::Job j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::QUEUED) << j.DebugString();
  EXPECT_EQ(j.restarts(), 1);
  ASSERT_EQ(j.failures_size(), 1) << j.DebugString();
  EXPECT_NE(j.failures(0).reason().find("worker " + w + " stopped responding"), std::string::npos);
}

// While another program holds jobs.db's write lock, a placement cannot be
// written: no rank is sent to the worker and the job stays QUEUED, so no
// rank runs for a job the database does not show placed. Once the lock is
// gone, the next heartbeat places it, once.
TEST_F(CoordinatorTest, APlacementThatCannotBeWrittenStartsNoRankAndIsMadeLater) {
  auto c = Make(8, /*in_memory=*/false);
  const std::string job = Submit(*c, 1, /*wait=*/true);  // no worker yet: it waits
  ASSERT_EQ(State(*c, job), v1::QUEUED);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.Join("state/jobs.db").c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  const std::string w = Worker(*c, 1);  // a place for it: the placement's write waits out the busy timeout, fails
  const v1::HeartbeatResponse locked = Beat(*c, w);
  EXPECT_EQ(locked.start_size(), 0) << "a rank was sent for a placement that was not written: "
                                    << locked.DebugString();
  EXPECT_EQ(State(*c, job), v1::QUEUED);
  EXPECT_EQ(c->GetJob(job)->placements_size(), 0);
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  const v1::HeartbeatResponse placed = Beat(*c, w);
  ASSERT_EQ(placed.start_size(), 1) << placed.DebugString();
  EXPECT_EQ(placed.start(0).job_id(), job);
  EXPECT_EQ(placed.start(0).attempt(), 1);
  const v1::Job j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::SCHEDULED);
  EXPECT_EQ(j.attempt(), 1);
  EXPECT_EQ(j.placements_size(), 1) << j.DebugString();
}

// A job whose rank 0 did not start within the schedule timeout goes back to
// the queue; while that cannot be written, it stays SCHEDULED with its slot
// and its rank is not stopped, and the requeue is made at the first tick
// after the lock is gone (then it is placed again, as attempt 2).
TEST_F(CoordinatorTest, ARequeueThatCannotBeWrittenIsMadeAtALaterTick) {
  auto c = Make(8, /*in_memory=*/false);
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1);
  ASSERT_EQ(Beat(*c, w).start_size(), 1);
  for (int i = 0; i < 122; ++i) {  // 61 s of heartbeats that never report the rank running
    now_ += 500;
    Beat(*c, w);
  }
  ASSERT_EQ(State(*c, job), v1::SCHEDULED);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.Join("state/jobs.db").c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  c->Tick();
  EXPECT_EQ(State(*c, job), v1::SCHEDULED) << "nothing changes unless it is written";
  EXPECT_EQ(c->GetJob(job)->failures_size(), 0);
  const v1::HeartbeatResponse locked = Beat(*c, w);
  EXPECT_EQ(locked.stop_size(), 0) << "the rank was stopped for a requeue that was not written: "
                                   << locked.DebugString();
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  c->Tick();
  const v1::Job j = *c->GetJob(job);
  ASSERT_EQ(j.failures_size(), 1) << j.DebugString();
  EXPECT_NE(j.failures(0).reason().find("rank 0 did not start within 60 s of scheduling"), std::string::npos)
      << j.failures(0).reason();
  // Its slot is held until the worker says whether the rank runs there
  // after all; it does not, and the job is placed again at once.
  EXPECT_EQ(j.state(), v1::QUEUED);
  const v1::HeartbeatResponse after = Beat(*c, w);
  ASSERT_EQ(after.stop_size(), 1) << after.DebugString();
  EXPECT_EQ(after.stop(0).attempt(), 1);
  ASSERT_EQ(after.start_size(), 1) << after.DebugString();
  EXPECT_EQ(after.start(0).attempt(), 2);
  EXPECT_EQ(State(*c, job), v1::SCHEDULED);
}

// Only a job that ended is deleted. With outputs its run directory goes too,
// unless a job not yet ended starts from weights in it. The record and its
// epochs leave the SQLite file (a reopened coordinator has none of it), a
// watcher hears that the job is gone, and every worker is told to forget it.
TEST_F(CoordinatorTest, OnlyAnEndedJobIsDeletedWithItsEpochsAndItsOutputsWhenNothingReadsThem) {
  auto c = Make(8, /*in_memory=*/false);
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1, false, 0, "", /*epochs=*/2);
  Beat(*c, w, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  v1::ReportMetricsRequest m;
  m.set_job_id(job);
  m.set_attempt(1);
  m.mutable_epoch()->set_epoch(1);
  ASSERT_TRUE(c->ReportMetrics(m).ok());
  auto epoch_rows = [&] {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(dir_.Join("state/jobs.db").c_str(), &db), SQLITE_OK);
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM epochs WHERE job_id = ?", -1, &q, nullptr);
    sqlite3_bind_text(q, 1, job.c_str(), -1, SQLITE_TRANSIENT);
    const int n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int(q, 0) : -1;
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
  };
  ASSERT_EQ(epoch_rows(), 1);

  auto refused = c->Delete(job, true);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("job " + job + " is RUNNING: only a job that ended can be deleted (dfc "
                                            "cancel " + job + " first)"),
            std::string::npos)
      << refused.status();
  ASSERT_TRUE(c->Cancel(job).ok());
  const std::string outputs = c->GetJob(job)->output_dir();
  ASSERT_TRUE(std::filesystem::is_directory(outputs)) << outputs;  // claimed at placement
  testing::WriteFileOrDie(outputs + "/best.ckpt", "weights");

  // A job that starts from those weights keeps them.
  v1::SubmitJobRequest from;
  from.mutable_config()->set_model(v1::MESOINCEPTION4);
  from.mutable_config()->set_data(dir_.Join("sh"));
  from.mutable_config()->set_epochs(1);
  from.mutable_config()->set_batch_size(8);
  from.mutable_config()->set_init(outputs + "/best.ckpt");
  from.set_world_size(1);
  auto next = c->Submit(from);
  ASSERT_TRUE(next.ok()) << next.status();
  auto kept = c->Delete(job, true);
  EXPECT_EQ(kept.status().code(), absl::StatusCode::kFailedPrecondition) << kept.status();
  EXPECT_NE(kept.status().message().find("job " + next->job_id() + " ("), std::string::npos) << kept.status();
  EXPECT_NE(kept.status().message().find(") reads '" + outputs + "/best.ckpt' from job " + job +
                                         "'s outputs: nothing was deleted"),
            std::string::npos)
      << kept.status();
  EXPECT_TRUE(std::filesystem::exists(outputs + "/best.ckpt"));
  EXPECT_TRUE(c->GetJob(job).ok());
  ASSERT_TRUE(c->Cancel(next->job_id()).ok());

  // A watcher of the job hears that it is gone (it was handed an empty job).
  int64_t version = 0;
  ASSERT_TRUE(c->WaitForChange(job, &version, std::chrono::milliseconds(0)).ok());
  absl::StatusOr<v1::Job> watched;
  std::thread watcher([&] { watched = c->WaitForChange(job, &version, std::chrono::milliseconds(2000)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto deleted = c->Delete(job, true);
  watcher.join();
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, outputs);
  EXPECT_EQ(watched.status().code(), absl::StatusCode::kNotFound) << (watched.ok() ? watched->DebugString() : "");
  EXPECT_FALSE(std::filesystem::exists(outputs));
  EXPECT_EQ(c->GetJob(job).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Delete(job, false).status().code(), absl::StatusCode::kNotFound);
  auto list = c->ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->jobs_size(), 1);
  EXPECT_EQ(list->jobs(0).job_id(), next->job_id());
  const v1::HeartbeatResponse beat = Beat(*c, w);
  ASSERT_EQ(beat.forget_jobs_size(), 1) << beat.DebugString();
  EXPECT_EQ(beat.forget_jobs(0), job);
  EXPECT_EQ(Beat(*c, w).forget_jobs_size(), 0) << "told once";
  EXPECT_EQ(epoch_rows(), 0);

  c.reset();  // a restarted coordinator has none of it
  c = Make(8, /*in_memory=*/false);
  EXPECT_EQ(c->GetJob(job).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->ListJobs(v1::ListJobsRequest())->jobs_size(), 1);
}

// A worker away when a job was deleted (down, or not yet registered), and a
// coordinator restarted since, which forgets what it was to tell workers:
// the deletion is recorded, so the worker's next registration is answered
// with the deleted job among the folders it holds, and only that one.
TEST_F(CoordinatorTest, AWorkerAwayWhenAJobWasDeletedIsToldWhenItRegisters) {
  auto c = Make(8, /*in_memory=*/false);
  Worker(*c, 1);
  const std::string gone = Submit(*c, 1);
  const std::string kept = Submit(*c, 1);
  ASSERT_TRUE(c->Cancel(gone).ok());
  ASSERT_TRUE(c->Delete(gone, false).ok());
  c.reset();
  c = Make(8, /*in_memory=*/false);
  auto status = c->GetJob(gone);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound);
  const std::string was_deleted = "job_id: job '" + gone + "' was deleted at 1970-01-01 00:16:40 UTC";
  EXPECT_EQ(status.status().message(), was_deleted) << "the fixture's clock reads 1,000 s";
  EXPECT_EQ(c->Cancel(gone).status().message(), was_deleted);
  EXPECT_EQ(c->Delete(gone, false).status().message(), was_deleted);
  int64_t version = 0;
  EXPECT_EQ(c->WaitForChange(gone, &version, std::chrono::milliseconds(0)).status().message(), was_deleted);
  EXPECT_EQ(c->GetJob("job-000000000000").status().message(), "job_id: no job 'job-000000000000'");
  v1::RegisterWorkerRequest r;
  r.set_address("127.0.0.1");
  r.set_cpu_slots(1);
  for (const std::string& held : {gone, kept, std::string("job-000000000000"), std::string(".."),
                                  std::string("../") + gone}) {
    r.add_held_jobs(held);
  }
  auto registered = c->RegisterWorker(r);
  ASSERT_TRUE(registered.ok()) << registered.status();
  ASSERT_EQ(registered->forget_jobs_size(), 1) << registered->DebugString();
  EXPECT_EQ(registered->forget_jobs(0), gone);
}

// An --output-root written with a trailing '/' (its jobs' records read
// ROOT//JOB): `dfc delete --outputs` still takes the run directory for its own.
TEST_F(CoordinatorTest, OutputsAreDeletedUnderAnOutputRootWrittenWithATrailingSlash) {
  auto c = Make(8, /*in_memory=*/true, [this](CoordinatorOptions& o) { o.output_root = dir_.Join("out") + "/"; });
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1);
  ASSERT_EQ(State(*c, job), v1::SCHEDULED);
  ASSERT_TRUE(c->Cancel(job).ok());
  const std::string outputs = c->GetJob(job)->output_dir();
  ASSERT_TRUE(std::filesystem::is_directory(outputs)) << outputs;  // claimed at placement
  auto deleted = c->Delete(job, true);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(std::filesystem::exists(outputs));
  EXPECT_EQ(c->GetJob(job).status().code(), absl::StatusCode::kNotFound);
}

// --keep-ended-days: a job that ended longer ago than that is deleted by a
// tick (a restarted coordinator has none of it); a younger one, and one that
// has not ended however old, are kept.
TEST_F(CoordinatorTest, JobsThatEndedLongerAgoThanTheRetentionAreDeleted) {
  auto retention = [](CoordinatorOptions& o) { o.keep_ended = std::chrono::hours(24); };
  auto c = Make(8, /*in_memory=*/false, retention);
  const std::string old_job = Submit(*c, 1, /*wait=*/true);  // no worker: it waits
  ASSERT_TRUE(c->Cancel(old_job).ok());
  const std::string waiting = Submit(*c, 1, /*wait=*/true);
  now_ += 12 * 3600 * 1000;
  const std::string young = Submit(*c, 1, /*wait=*/true);
  ASSERT_TRUE(c->Cancel(young).ok());
  now_ += 12 * 3600 * 1000 - 1000;  // old_job ended 24 h less 1 s ago
  c->Tick();
  EXPECT_TRUE(c->GetJob(old_job).ok()) << "deleted before its time";
  now_ += 61000;  // 24 h and a minute: the next sweep deletes it
  c->Tick();
  EXPECT_EQ(c->GetJob(old_job).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(State(*c, waiting), v1::QUEUED);
  EXPECT_EQ(State(*c, young), v1::CANCELLED);
  c.reset();
  c = Make(8, /*in_memory=*/false, retention);
  EXPECT_EQ(c->GetJob(old_job).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->ListJobs(v1::ListJobsRequest())->jobs_size(), 2);
}

// The coordinator stopped for 20 s (SIGSTOP, a frozen VM) heard nobody in
// that time, through no fault of the workers': on waking, a running job keeps
// running and a placed one is not sent back to the queue. A worker that then
// really stays silent still times out, also while the coordinator is starved
// (ticks late every time), and its job fails over as before.
TEST_F(CoordinatorTest, APausedCoordinatorHoldsItsOwnSilenceAgainstNobody) {
  auto c = Make();
  const std::string w0 = Worker(*c, 1), w1 = Worker(*c, 1);
  const std::string running = Submit(*c, 1);
  Beat(*c, w0, {{running, 1, 0}});
  ASSERT_EQ(State(*c, running), v1::RUNNING);
  const std::string placed = Submit(*c, 1);
  c->Tick();
  ASSERT_EQ(State(*c, placed), v1::SCHEDULED);
  const std::string placed_on = c->GetJob(placed)->workers(0);

  now_ += 20000;  // the coordinator's pause: longer than the worker timeout
  c->Tick();
  EXPECT_EQ(State(*c, running), v1::RUNNING) << c->GetJob(running)->reason();
  EXPECT_EQ(State(*c, placed), v1::SCHEDULED);
  EXPECT_EQ(c->ListWorkers().workers_size(), 2);
  now_ += 61000;  // longer than the schedule timeout too
  c->Tick();
  EXPECT_EQ(State(*c, placed), v1::SCHEDULED) << "requeued for the coordinator's own pause";
  EXPECT_EQ(c->GetJob(placed)->failures_size(), 0);

  // Then w0 goes silent while w1 beats and the coordinator ticks every 600
  // ms, later than its heartbeat interval each time: w0 still times out.
  int ticks = 0;
  while (State(*c, running) == v1::RUNNING && ticks < 20) {
    now_ += 600;
    Beat(*c, w1, {{placed, 1, 0}});
    c->Tick();
    ++ticks;
  }
  RecordProperty("starved_ticks_to_expire", ticks);
  EXPECT_LT(ticks, 20) << "a silent worker never timed out while the coordinator was starved";
  // w0's silence so far counts 1 s and 1 ms (one heartbeat interval of each
  // pause is not credited; a submission took 1 ms); of each 600 ms tick, the
  // 500 of a heartbeat interval count: past the 3 s timeout on tick 4.
  EXPECT_EQ(ticks, 4);
  const v1::Job failed = *c->GetJob(running);
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_NE(failed.reason().find("worker " + w0 + " stopped responding"), std::string::npos) << failed.reason();
  EXPECT_EQ(State(*c, placed), v1::RUNNING);
  EXPECT_EQ(placed_on, w1);
}

TEST_F(CoordinatorTest, AStopNamesTheAttemptAndSparesTheNewOne) {
  auto c = Make();
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1, false, /*max_restarts=*/1);
  Beat(*c, w, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  // The rank fails transiently; the job restarts as attempt 2 on the same worker.
  const v1::HeartbeatResponse failed = ExitRank(*c, w, job, 1, 1, "Gloo timeout");
  EXPECT_EQ(c->GetJob(job)->reason().find("restarting (1 of 1) after: rank 0: Gloo timeout"), 0u)
      << c->GetJob(job)->reason();
  ASSERT_EQ(failed.stop_size(), 1);
  EXPECT_EQ(failed.stop(0).attempt(), 1);
  now_ += 5000;  // past the restart back-off
  auto next = Beat(*c, w);
  ASSERT_EQ(next.start_size(), 1);
  EXPECT_EQ(next.start(0).attempt(), 2);
  for (const auto& stop : next.stop()) EXPECT_LT(stop.attempt(), 2) << "a stop reaches the new attempt";
  // A stale report from attempt 1 does not stop attempt 2 either.
  auto stale = Beat(*c, w, {{job, 1, 0}, {job, 2, 0}});
  ASSERT_EQ(stale.stop_size(), 1);
  EXPECT_EQ(stale.stop(0).attempt(), 1);
  EXPECT_EQ(State(*c, job), v1::RUNNING);
  // Success clears the reason; the failure stays in the history.
  ExitRank(*c, w, job, 2, 0);
  // The timeline tells the story in order.
  const v1::Job timeline = *c->GetJob(job);
  std::vector<std::string> kinds;
  for (const auto& e : timeline.events()) kinds.push_back(e.kind());
  EXPECT_EQ(kinds, (std::vector<std::string>{"submitted", "scheduled", "rank_started", "running", "rank_exited",
                                             "restart", "scheduled", "rank_started", "running", "rank_exited",
                                             "succeeded"}));
  const auto& events = timeline.events();
  ASSERT_EQ(events.size(), 11);
  EXPECT_NE(events[4].message().find("exited with code 1: Gloo timeout"), std::string::npos) << events[4].message();
  EXPECT_EQ(events[4].attempt(), 1);
  EXPECT_EQ(events[6].attempt(), 2);
  const v1::Job j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::SUCCEEDED);
  EXPECT_EQ(j.reason(), "");
  ASSERT_EQ(j.failures_size(), 1);
  EXPECT_EQ(j.failures(0).reason(), "rank 0: Gloo timeout");
}

// A rank told to stop (its job cancelled, its attempt failed) first saves
// its step, for up to its worker's stop grace; its GPU and CPUs are taken
// until it exits. Its slot was given to the next queued job at once: on a
// GPU worker that rank found no free GPU and trained on the CPU. The slot
// is now held until the worker reports the rank gone; the queued job says
// why it waits, and `dfc workers` counts the stopping rank.
TEST_F(CoordinatorTest, ARankThatWasToldToStopHoldsItsSlotUntilItsWorkerReportsItGone) {
  auto c = Make();
  const std::string w = Worker(*c, 1);
  const std::string a = Submit(*c, 1);
  Beat(*c, w, {{a, 1, 0}});
  ASSERT_EQ(State(*c, a), v1::RUNNING);
  const std::string b = Submit(*c, 1);
  ASSERT_TRUE(c->Cancel(a).ok());
  EXPECT_EQ(State(*c, b), v1::QUEUED) << "placed while the cancelled rank still runs";
  EXPECT_EQ(c->GetJob(b)->waiting().reason(),
            "needs 1 slot on live workers; 0 free (1 held by ranks of ended attempts that are still stopping: they "
            "save their step first)");
  ASSERT_EQ(c->ListWorkers().workers_size(), 1);
  EXPECT_EQ(c->ListWorkers().workers(0).stopping_ranks(), 1);
  EXPECT_EQ(c->ListWorkers().workers(0).free_slots(), 0);
  // The worker is told to stop it, and reports it running while it saves.
  for (int i = 0; i < 3; ++i) {
    now_ += 500;
    const v1::HeartbeatResponse saving = Beat(*c, w, {{a, 1, 0}});
    EXPECT_EQ(saving.start_size(), 0) << "a rank was started beside the stopping one";
    ASSERT_EQ(saving.stop_size(), 1);
    EXPECT_EQ(saving.stop(0).job_id(), a);
    EXPECT_EQ(State(*c, b), v1::QUEUED);
  }
  // Gone: the next job takes the slot at once.
  const v1::HeartbeatResponse gone = ExitRank(*c, w, a, 1, 0);
  ASSERT_EQ(gone.start_size(), 1);
  EXPECT_EQ(gone.start(0).job_id(), b);
  EXPECT_EQ(c->ListWorkers().workers(0).stopping_ranks(), 0);

  // A failed attempt's other ranks hold theirs the same way: a world-2 job
  // on two workers whose rank 0 fails leaves its rank 1 stopping on the
  // second, and a one-rank job goes to the first.
  ExitRank(*c, w, b, 1, 0);
  const std::string w2 = Worker(*c, 1);
  const std::string pair = Submit(*c, 2);
  const v1::Job placed = *c->GetJob(pair);
  ASSERT_EQ(placed.workers_size(), 2);
  const std::string zero = placed.workers(0), one = placed.workers(1);
  ASSERT_NE(zero, one);
  ASSERT_EQ(Beat(*c, zero).start_size(), 1);
  Beat(*c, zero, {{pair, 1, 0}});
  ASSERT_EQ(Beat(*c, one).start_size(), 1);
  Beat(*c, one, {{pair, 1, 1}});
  ASSERT_EQ(State(*c, pair), v1::RUNNING);
  const std::string next = Submit(*c, 1);
  const v1::HeartbeatResponse failed = ExitRank(*c, zero, pair, 1, 1, "out of memory");
  ASSERT_EQ(State(*c, pair), v1::FAILED);
  ASSERT_EQ(failed.start_size(), 1);
  EXPECT_EQ(failed.start(0).job_id(), next);
  EXPECT_EQ(c->GetJob(next)->workers(0), zero) << "placed beside the failed attempt's stopping rank";
  EXPECT_EQ(Beat(*c, one, {{pair, 1, 1}}).start_size(), 0);

  // A worker that registers with a rank of no placed attempt (one a
  // coordinator before a restart placed, since ended) holds its slot too.
  c.reset();
  auto fresh = Make();
  v1::RegisterWorkerRequest r;
  r.set_address("127.0.0.1");
  r.set_cpu_slots(1);
  v1::RankStatus* old = r.add_ranks();
  old->set_job_id("job-ended-meanwhile");
  old->set_attempt(1);
  old->set_running(true);
  auto registered = fresh->RegisterWorker(r);
  ASSERT_TRUE(registered.ok()) << registered.status();
  const std::string queued = Submit(*fresh, 1);
  EXPECT_EQ(State(*fresh, queued), v1::QUEUED) << "placed beside a rank its worker still runs";
  const v1::HeartbeatResponse stale = Beat(*fresh, registered->worker_id(), {{"job-ended-meanwhile", 1, 0}});
  EXPECT_EQ(stale.start_size(), 0);
  ASSERT_EQ(stale.stop_size(), 1);
  EXPECT_EQ(Beat(*fresh, registered->worker_id()).start_size(), 1);
}

// A fault that lasts (a full disk, a peer machine rebooting) fails each
// attempt as soon as it starts. Each restart waits twice as long as the one
// before, from 3 heartbeat intervals (1.5 s) up to max_restart_backoff (5 s
// here), so restarts are not all used up within seconds; the wait is in the
// queue's reason and in the restart's event.
TEST_F(CoordinatorTest, EachRestartWaitsTwiceAsLongAsTheOneBeforeUpToTheLimit) {
  auto c = Make(8, true, [](CoordinatorOptions& o) { o.max_restart_backoff = std::chrono::milliseconds(5000); });
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1, false, /*max_restarts=*/4);
  Beat(*c, w, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  const std::vector<int64_t> waits = {1500, 3000, 5000, 5000};
  const std::vector<std::string> said = {"1.5 s", "3.0 s", "5.0 s", "5.0 s"};
  for (int attempt = 1; attempt <= 4; ++attempt) {
    FailRank(*c, w, job, attempt, "No space left on device");
    ASSERT_EQ(State(*c, job), v1::QUEUED) << c->GetJob(job)->reason();
    const v1::Job queued = *c->GetJob(job);
    const std::string& event = queued.events(queued.events_size() - 1).message();
    EXPECT_NE(event.find("restart " + std::to_string(attempt) + " of 4, placed again in " + said[attempt - 1]),
              std::string::npos)
        << event;
    now_ += waits[attempt - 1] - 100;
    auto early = Beat(*c, w);
    EXPECT_EQ(early.start_size(), 0) << "attempt " << attempt + 1 << " placed before its back-off ended";
    EXPECT_NE(c->GetJob(job)->waiting().reason().find("restarting: placed again in 1 s"), std::string::npos)
        << c->GetJob(job)->waiting().reason();
    now_ += 100;
    auto placed = Beat(*c, w);
    ASSERT_EQ(placed.start_size(), 1) << "attempt " << attempt + 1 << " not placed when its back-off ended";
    EXPECT_EQ(placed.start(0).attempt(), attempt + 1);
    Beat(*c, w, {{job, attempt + 1, 0}});
    ASSERT_EQ(State(*c, job), v1::RUNNING);
  }
  FailRank(*c, w, job, 5, "No space left on device");
  EXPECT_EQ(State(*c, job), v1::FAILED);
  EXPECT_NE(c->GetJob(job)->reason().find("and 4 more failed attempt(s)"), std::string::npos)
      << c->GetJob(job)->reason();
}

// A job whose run directory cannot be claimed (the output root full, or
// not writable: here a file stands where the directory goes) is not placed:
// its ranks would not find the claim. It waits saying why, and is placed
// once the claim succeeds.
TEST_F(CoordinatorTest, AJobWhoseRunDirectoryCannotBeClaimedWaitsSayingWhy) {
  auto c = Make();
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1);
  // Submit may have placed it already; take a job that is still queued.
  const std::string queued = Submit(*c, 1);
  ASSERT_EQ(State(*c, queued), v1::QUEUED);
  const std::string out = c->GetJob(queued)->output_dir();
  std::error_code ec;
  std::filesystem::remove_all(out, ec);
  testing::WriteFileOrDie(out, "not a directory");
  Beat(*c, w, {{job, 1, 0}});
  FailRank(*c, w, job, 1, "done");  // frees the slot (no restarts: FAILED)
  ASSERT_EQ(State(*c, job), v1::FAILED);
  for (int i = 0; i < 3; ++i) {
    now_ += 2000;
    EXPECT_EQ(Beat(*c, w).start_size(), 0) << "placed without its claim";
  }
  EXPECT_EQ(State(*c, queued), v1::QUEUED);
  const std::string reason = c->GetJob(queued)->waiting().reason();
  EXPECT_NE(reason.find("cannot claim its run directory for attempt 1: "), std::string::npos) << reason;
  EXPECT_NE(reason.find("(tried again every 1.5 s)"), std::string::npos) << reason;
  std::filesystem::remove(out);
  now_ += 2000;
  auto placed = Beat(*c, w);
  ASSERT_EQ(placed.start_size(), 1);
  EXPECT_EQ(placed.start(0).job_id(), queued);
  EXPECT_EQ(testing::ReadFileOrDie(out + "/attempt"), "1\n");
}

// The wall clock can step (NTP correcting it, a VM restored from a
// snapshot, an operator's `date -s`); timeouts are measured on a clock that
// does not. Here the wall clock steps back an hour, then forward two, while
// a worker that died just before the first step must still be given up
// after the worker timeout, one that beats must never be, and the times
// jobs record are the wall clock's. (cluster_test steps a real
// coordinator's clock with libfaketime.)
TEST_F(CoordinatorTest, AStepOfTheWallClockNeitherKeepsADeadWorkerNorKillsALiveOne) {
  int64_t wall = 1'800'000'000'000;
  auto c = Make(8, true, [&wall](CoordinatorOptions& o) {
    o.elapsed_ms = o.now_ms;  // the fixture's fake clock: timeouts
    o.now_ms = [&wall] { return wall; };
  });
  c->Tick();
  const std::string dead = Worker(*c, 1), live = Worker(*c, 1);
  const std::string job = Submit(*c, 1);
  c->Tick();
  const std::string on = c->GetJob(job)->workers(0);
  const std::string other = on == dead ? live : dead;
  Beat(*c, on, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  // `on` dies here; the wall clock steps back an hour.
  wall -= 3'600'000;
  int ticks = 0;
  while (State(*c, job) == v1::RUNNING && ticks < 100) {
    now_ += 100;
    wall += 100;
    Beat(*c, other);
    c->Tick();
    ++ticks;
  }
  EXPECT_EQ(State(*c, job), v1::FAILED) << "a dead worker was kept after the wall clock stepped back";
  EXPECT_EQ(ticks, 31) << "given up after " << ticks * 100 << " ms; the worker timeout is 3000";
  EXPECT_NE(c->GetJob(job)->reason().find("stopped responding"), std::string::npos) << c->GetJob(job)->reason();
  EXPECT_EQ(c->GetJob(job)->finished_unix_ms(), wall) << "recorded times are the wall clock's";
  // Forward two hours: the worker that beats stays live.
  wall += 7'200'000;
  for (int i = 0; i < 10; ++i) {
    now_ += 500;
    wall += 500;
    Beat(*c, other);
    c->Tick();
  }
  const v1::ListWorkersResponse workers = c->ListWorkers();
  ASSERT_EQ(workers.workers_size(), 2);
  for (const auto& w : workers.workers()) {
    EXPECT_EQ(w.state(), w.worker_id() == other ? "live" : "gone") << w.worker_id();
    if (w.worker_id() == other) {
      EXPECT_LE(w.seconds_since_heartbeat(), 0.5);
    }
  }
}

// What the ranks report and write comes from processes that read users'
// files, so the coordinator bounds it: an epoch outside the job's 1..epochs
// is refused naming the limit, and reconciling from metrics.jsonl skips such
// epochs and lines longer than any real one (a line of 8 MiB here) instead
// of holding them; the epochs that are real still arrive.
TEST_F(CoordinatorTest, ReportedAndWrittenEpochsAreBoundedByTheJob) {
  auto c = Make();
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1, false, 0, "", /*epochs=*/3);
  Beat(*c, w, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  auto report = [&](int epoch) {
    v1::ReportMetricsRequest r;
    r.set_job_id(job);
    r.set_attempt(1);
    r.mutable_epoch()->set_epoch(epoch);
    r.mutable_epoch()->set_val_accuracy(0.5 + 0.01 * epoch);
    return c->ReportMetrics(r);
  };
  for (int bad : {0, -1, 4, 2147483647}) {
    const absl::Status st = report(bad);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find(absl::StrCat("epoch.epoch ", bad, ": the job has epochs 1..3")), std::string::npos)
        << st;
  }
  EXPECT_EQ(c->GetJob(job)->epochs_size(), 0);
  const std::string out = c->GetJob(job)->output_dir();
  std::filesystem::create_directories(out);
  testing::WriteFileOrDie(out + "/metrics.jsonl", "{\"epoch\":1,\"val_accuracy\":0.51}\n"
                                                  "{\"epoch\":2,\"note\":\"" + std::string(8 << 20, 'x') + "\"}\n"
                                                  "{\"epoch\":2,\"val_accuracy\":0.52}\n"
                                                  "{\"epoch\":99999,\"val_accuracy\":1}\n"
                                                  "{\"epoch\":1000000000000,\"val_accuracy\":1}\n"
                                                  "not json\n");
  ASSERT_TRUE(report(3).ok());  // skips ahead: reconciled from the file
  const v1::Job j = *c->GetJob(job);
  ASSERT_EQ(j.epochs_size(), 3) << j.ShortDebugString().substr(0, 2000);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j.epochs(i).epoch(), i + 1);
    EXPECT_DOUBLE_EQ(j.epochs(i).val_accuracy(), 0.51 + 0.01 * i);
  }
}

// --recipe notebook reports two phases, each counting its epochs from 1: the
// selection's and the retraining's are kept apart (one did not replace the
// other), refused when the phase is unknown, reconciled from their own
// metrics files, and kept in the SQLite file across a coordinator restart.
// A restart resumes from the selection's checkpoint too.
TEST_F(CoordinatorTest, NotebookPhasesAreKeptApartAndTheSelectionIsAResumePoint) {
  std::string job, out;
  {
    auto c = Make(8, /*in_memory=*/false);
    const std::string w = Worker(*c, 1);
    job = Submit(*c, 1, false, /*max_restarts=*/1, "notebook", /*epochs=*/4);
    Beat(*c, w, {{job, 1, 0}});
    ASSERT_EQ(State(*c, job), v1::RUNNING);
    out = c->GetJob(job)->output_dir();
    auto report = [&](const std::string& phase, int epoch, double val_accuracy) {
      v1::ReportMetricsRequest r;
      r.set_job_id(job);
      r.set_attempt(1);
      r.mutable_epoch()->set_phase(phase);
      r.mutable_epoch()->set_epoch(epoch);
      r.mutable_epoch()->set_val_accuracy(val_accuracy);
      return c->ReportMetrics(r);
    };
    ASSERT_TRUE(report("selection", 1, 0.61).ok());
    ASSERT_TRUE(report("selection", 2, 0.62).ok());
    ASSERT_TRUE(report("", 1, 0.71).ok());
    const absl::Status bad = report("warmup", 1, 0.5);
    EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(bad.message().find("epoch.phase: no phase 'warmup'"), std::string::npos) << bad;
    // Selection epoch 3 reached the run directory, not the coordinator.
    std::filesystem::create_directories(out + "/selection");
    testing::WriteFileOrDie(out + "/selection/metrics.jsonl", "{\"epoch\":1,\"val_accuracy\":0.61}\n"
                                                              "{\"epoch\":2,\"val_accuracy\":0.62}\n"
                                                              "{\"epoch\":3,\"val_accuracy\":0.63}\n");
    ASSERT_TRUE(report("selection", 4, 0.64).ok());
    const v1::Job j = *c->GetJob(job);
    ASSERT_EQ(j.selection_epochs_size(), 4) << j.DebugString();
    ASSERT_EQ(j.epochs_size(), 1) << j.DebugString();
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(j.selection_epochs(i).epoch(), i + 1);
      EXPECT_EQ(j.selection_epochs(i).phase(), "selection");
      EXPECT_DOUBLE_EQ(j.selection_epochs(i).val_accuracy(), 0.61 + 0.01 * i);
    }
    EXPECT_DOUBLE_EQ(j.epochs(0).val_accuracy(), 0.71);
    // ListJobs summaries count both and carry neither list.
    auto listed = c->ListJobs(v1::ListJobsRequest());
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_EQ(listed->jobs_size(), 1);
    EXPECT_EQ(listed->jobs(0).selection_epochs_done(), 4);
    EXPECT_EQ(listed->jobs(0).epochs_done(), 1);
    EXPECT_EQ(listed->jobs(0).selection_epochs_size(), 0);
    EXPECT_EQ(listed->jobs(0).epochs_size(), 0);
    // The rank fails while selecting: the next attempt resumes from the
    // selection's checkpoint (the run's own latest.ckpt does not exist yet).
    testing::WriteFileOrDie(out + "/selection/latest.ckpt", "stand-in");
    FailRank(*c, w, job, 1, "worker lost");
    now_ += 5000;  // past the restart back-off
    auto next = Beat(*c, w);
    ASSERT_EQ(next.start_size(), 1);
    EXPECT_EQ(next.start(0).attempt(), 2);
    EXPECT_TRUE(next.start(0).resume());
  }
  auto reopened = Make(8, /*in_memory=*/false);
  const v1::Job j = *reopened->GetJob(job);
  EXPECT_EQ(j.selection_epochs_size(), 4) << j.DebugString();
  EXPECT_EQ(j.epochs_size(), 1) << j.DebugString();
}

// A worker that was given up (stopped, or cut off, past its timeout) and
// registers again gets its id back: the jobs on record as run there, and
// their rank logs, are its own again, and it is listed once, live.
TEST_F(CoordinatorTest, AWorkerBackFromTheGoneGetsItsIdBackAndItsRankLogsWithIt) {
  auto c = Make();
  const std::string w = Worker(*c, 1);
  const std::string job = Submit(*c, 1);
  Beat(*c, w, {{job, 1, 0}});
  ExitRank(*c, w, job, 1, 0);
  ASSERT_EQ(State(*c, job), v1::SUCCEEDED);
  for (int i = 0; i < 7; ++i) {
    now_ += 500;
    c->Tick();
  }
  ASSERT_EQ(c->ListWorkers().workers(0).state(), "gone");
  v1::GetRankLogRequest log;
  log.set_job_id(job);
  auto gone = c->GetRankLog(log, std::chrono::milliseconds(1));
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition) << gone.status();
  EXPECT_NE(gone.status().message().find("worker " + w + " that ran rank 0 of attempt 1 is gone"), std::string::npos)
      << gone.status();
  ASSERT_TRUE(Beat(*c, w).reregister());
  EXPECT_EQ(Worker(*c, 1, w), w);
  const v1::ListWorkersResponse listed = c->ListWorkers();
  ASSERT_EQ(listed.workers_size(), 1) << listed.DebugString();
  EXPECT_EQ(listed.workers(0).state(), "live");
  auto asked = c->GetRankLog(log, std::chrono::milliseconds(1));
  EXPECT_EQ(asked.status().code(), absl::StatusCode::kDeadlineExceeded) << asked.status();
  const v1::HeartbeatResponse beat = Beat(*c, w);
  ASSERT_EQ(beat.logs_size(), 1) << beat.DebugString();
  EXPECT_EQ(beat.logs(0).job_id(), job);
}

// A worker shut down with SIGTERM (a drain, an upgrade, a scale-down) says so
// before it stops its ranks: the job goes back to the queue instead of
// failing (max_restarts 0) on its ranks' broken collectives, its other ranks
// are stopped, and it is placed again on the workers left once the leaving
// worker's stop grace is over (its ranks save their step meanwhile).
TEST_F(CoordinatorTest, AWorkerThatLeavesPutsItsJobsBackInTheQueueWithoutARestart) {
  auto c = Make();
  const std::string w1 = Worker(*c, 1), w2 = Worker(*c, 1), w3 = Worker(*c, 1);
  const std::string job = Submit(*c, 2);
  const v1::Job placed = *c->GetJob(job);
  ASSERT_EQ(placed.workers_size(), 2);
  const std::string leaving = placed.workers(0), staying = placed.workers(1);
  Beat(*c, leaving, {{job, 1, 0}});
  Beat(*c, staying, {{job, 1, 1}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  v1::HeartbeatRequest bye = Leaving(leaving, 4000);
  v1::RankStatus* s = bye.add_ranks();
  s->set_job_id(job);
  s->set_attempt(1);
  s->set_rank(0);
  s->set_running(true);
  auto answer = c->Heartbeat(bye);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->start_size(), 0) << "a leaving worker was given ranks";
  v1::Job j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::QUEUED) << j.DebugString();
  EXPECT_EQ(j.restarts(), 0);
  ASSERT_EQ(j.failures_size(), 1);
  EXPECT_NE(j.failures(0).reason().find("worker " + leaving + " shut down (SIGTERM"), std::string::npos)
      << j.DebugString();
  EXPECT_EQ(j.events(j.events_size() - 1).kind(), "requeued");
  // The rank left on the other worker is stopped, exactly its attempt.
  const auto stay = Beat(*c, staying, {{job, 1, 1}});
  ASSERT_GE(stay.stop_size(), 1) << stay.DebugString();
  for (const v1::StopRanks& stop : stay.stop()) {
    EXPECT_EQ(stop.job_id(), job);
    EXPECT_EQ(stop.attempt(), 1);
  }
  const v1::ListWorkersResponse listed = c->ListWorkers();
  bool listed_left = false;
  for (const v1::WorkerSummary& w : listed.workers()) {
    if (w.worker_id() == leaving) listed_left = w.state() == "left";
  }
  EXPECT_TRUE(listed_left) << listed.DebugString();
  v1::GetRankLogRequest log;
  log.set_job_id(job);
  auto unreachable = c->GetRankLog(log, std::chrono::milliseconds(1));
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kFailedPrecondition) << unreachable.status();
  EXPECT_NE(unreachable.status().message().find("worker " + leaving + " that ran rank 0 of attempt 1 was shut down"),
            std::string::npos)
      << unreachable.status();
  EXPECT_TRUE(Beat(*c, leaving).reregister());
  // Placed again on the two workers left, as attempt 2: not before the stop
  // grace and the retry delay (1.5 s) are over.
  std::vector<std::string> left;
  for (const std::string& w : {w1, w2, w3}) {
    if (w != leaving) left.push_back(w);
  }
  Pass(*c, 5000, left);
  j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::QUEUED) << j.DebugString();
  Pass(*c, 1000, left);
  j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::SCHEDULED) << j.DebugString();
  EXPECT_EQ(j.attempt(), 2);
  for (const std::string& w : j.workers()) EXPECT_NE(w, leaving);
}

// A leaving worker speaks again once its ranks have all exited (they saved
// their step: HeartbeatRequest.ranks_stopped): the jobs it held back for its
// stop grace are placed after the retry delay alone, not 20 s later. The word
// of another worker ends no hold. A worker whose leave did not get through
// (the coordinator did not answer) and that says both at once has its jobs
// requeued without the grace.
TEST_F(CoordinatorTest, AWorkerWhoseRanksHaveStoppedHoldsItsJobsNoLongerThanTheRetryDelay) {
  auto c = Make();
  const std::vector<std::string> workers = {Worker(*c, 1), Worker(*c, 1), Worker(*c, 1), Worker(*c, 1)};
  const std::string job = Submit(*c, 1);
  const std::string leaving = c->GetJob(job)->workers(0);
  std::vector<std::string> left;
  for (const std::string& w : workers) {
    if (w != leaving) left.push_back(w);
  }
  Beat(*c, leaving, {{job, 1, 0}});
  ASSERT_EQ(State(*c, job), v1::RUNNING);
  ASSERT_TRUE(c->Heartbeat(Leaving(leaving, 20000)).ok());
  ASSERT_EQ(State(*c, job), v1::QUEUED);
  Pass(*c, 500, left);
  ASSERT_TRUE(c->Heartbeat(Leaving("w-nobody", 20000, /*ranks_stopped=*/true)).ok());
  Pass(*c, 1500, left);
  EXPECT_EQ(State(*c, job), v1::QUEUED) << "another worker's word ended the hold";
  auto answer = c->Heartbeat(Leaving(leaving, 20000, /*ranks_stopped=*/true));
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_FALSE(answer->reregister()) << "a worker that left was asked to register again";
  v1::Job j = *c->GetJob(job);
  EXPECT_EQ(j.state(), v1::SCHEDULED) << j.DebugString();
  EXPECT_EQ(j.attempt(), 2);

  // Its leave never got through: it is still registered when it says both.
  const std::string second = Submit(*c, 1);
  const std::string on = c->GetJob(second)->workers(0);
  Beat(*c, on, {{second, 1, 0}});
  ASSERT_EQ(State(*c, second), v1::RUNNING);
  ASSERT_TRUE(c->Heartbeat(Leaving(on, 20000, /*ranks_stopped=*/true)).ok());
  EXPECT_EQ(State(*c, second), v1::QUEUED);
  left.erase(std::find(left.begin(), left.end(), on));
  Pass(*c, 1500, left);
  j = *c->GetJob(second);
  EXPECT_EQ(j.state(), v1::SCHEDULED) << "waited out a grace its ranks no longer needed: " << j.DebugString();
  EXPECT_EQ(j.restarts(), 0);
}

// A coordinator restart while a job runs: its ranks train on, their workers
// register again (as new worker ids) naming them, and the job keeps its
// attempt and its ranks instead of restarting from its checkpoint. Until
// every rank is back the job holds its slots on the workers that are, and
// nothing is sent to its ranks.
class ReattachTest : public CoordinatorTest {
 protected:
  // A job of `world` ranks RUNNING on `world` one-slot workers, and a
  // one-rank job QUEUED behind it; the coordinator is then gone.
  void RunAndLoseTheCoordinator(int world) {
    auto c = Make(8, /*in_memory=*/false);
    std::vector<std::string> workers;
    for (int i = 0; i < world; ++i) workers.push_back(Worker(*c, 1));
    job_ = Submit(*c, world);
    queued_ = Submit(*c, 1);
    const v1::Job placed = *c->GetJob(job_);
    ASSERT_EQ(placed.state(), v1::SCHEDULED);
    attempt_ = placed.attempt();
    for (int r = 0; r < world; ++r) Beat(*c, placed.workers(r), {{job_, attempt_, r}});
    ASSERT_EQ(State(*c, job_), v1::RUNNING);
    ASSERT_EQ(State(*c, queued_), v1::QUEUED);
  }
  std::unique_ptr<Coordinator> Restart() {
    return Make(8, /*in_memory=*/false, [](CoordinatorOptions& o) { o.reattach_timeout = std::chrono::seconds(10); });
  }
  // A worker registering with the rank `rank` of the job running (or exited with `exit_code`).
  std::string WorkerWithRank(Coordinator& c, int rank, int exit_code = -1, const std::string& previous_id = "") {
    v1::RegisterWorkerRequest r;
    r.set_previous_worker_id(previous_id);
    r.set_address("127.0.0.1");
    r.set_cpu_slots(1);
    v1::RankStatus* s = r.add_ranks();
    s->set_job_id(job_);
    s->set_attempt(attempt_);
    s->set_rank(rank);
    s->set_running(exit_code < 0);
    s->set_exited(exit_code >= 0);
    s->set_exit_code(std::max(exit_code, 0));
    auto resp = c.RegisterWorker(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->worker_id() : "";
  }
  static bool Stops(const v1::HeartbeatResponse& resp, const std::string& job) {
    for (const v1::StopRanks& s : resp.stop()) {
      if (s.job_id() == job) return true;
    }
    return false;
  }
  static std::string Kinds(const v1::Job& j) {
    std::string kinds;
    for (const v1::TimelineEvent& e : j.events()) kinds += e.kind() + " ";
    return kinds;
  }
  std::string job_, queued_;
  int attempt_ = 0;
};

TEST_F(ReattachTest, AJobWhoseRanksAllReportBackRunsOnWithoutARestart) {
  RunAndLoseTheCoordinator(2);
  auto c = Restart();
  EXPECT_EQ(State(*c, job_), v1::RUNNING);
  const std::string a = WorkerWithRank(*c, 1);
  // Rank 1's worker is back, rank 0's not yet: its slot is the job's, not
  // the queued job's, and the rank it runs is not told to stop.
  EXPECT_EQ(State(*c, queued_), v1::QUEUED);
  auto beat = Beat(*c, a, {{job_, attempt_, 1}});
  EXPECT_FALSE(Stops(beat, job_)) << beat.DebugString();
  EXPECT_EQ(beat.start_size(), 0) << beat.DebugString();
  for (int i = 0; i < 10; ++i) {
    now_ += 500;
    Beat(*c, a, {{job_, attempt_, 1}});
    c->Tick();
  }
  EXPECT_EQ(State(*c, job_), v1::RUNNING);
  const std::string b = WorkerWithRank(*c, 0);
  const v1::Job j = *c->GetJob(job_);
  EXPECT_EQ(j.state(), v1::RUNNING);
  EXPECT_EQ(j.attempt(), attempt_);
  EXPECT_EQ(j.restarts(), 0);
  ASSERT_EQ(j.workers_size(), 2);
  EXPECT_EQ(j.workers(0), b);
  EXPECT_EQ(j.workers(1), a);
  ASSERT_GE(j.placements_size(), 1);
  EXPECT_EQ(j.placements(j.placements_size() - 1).workers(0), b) << "dfc logs would ask the worker that is gone";
  EXPECT_EQ(j.events(j.events_size() - 1).kind(), "reattached") << Kinds(j);
  EXPECT_NE(j.events(j.events_size() - 1).message().find("rank 0 on " + b + ", rank 1 on " + a), std::string::npos)
      << j.DebugString();
  EXPECT_EQ(Kinds(j).find("requeued"), std::string::npos) << Kinds(j);
  // Long past the reattach timeout it still runs, and ends as its ranks do.
  for (int i = 0; i < 40; ++i) {
    now_ += 500;
    EXPECT_FALSE(Stops(Beat(*c, a, {{job_, attempt_, 1}}), job_));
    EXPECT_FALSE(Stops(Beat(*c, b, {{job_, attempt_, 0}}), job_));
    c->Tick();
  }
  EXPECT_EQ(State(*c, job_), v1::RUNNING);
  EXPECT_EQ(State(*c, queued_), v1::QUEUED) << "a slot of a running job was given away";
  for (const std::string& w : {a, b}) {
    v1::HeartbeatRequest r;
    r.set_worker_id(w);
    v1::RankStatus* s = r.add_ranks();
    s->set_job_id(job_);
    s->set_attempt(attempt_);
    s->set_rank(w == b ? 0 : 1);
    s->set_exited(true);
    ASSERT_TRUE(c->Heartbeat(r).ok());
  }
  EXPECT_EQ(State(*c, job_), v1::SUCCEEDED);
  Beat(*c, a);
  EXPECT_EQ(State(*c, queued_), v1::SCHEDULED);
}

// A worker that registers again after the restart gets its id back, so the
// placement on record reaches it: `dfc logs` of its rank is asked of it. Until
// it is back, the log is "not yet" (UNAVAILABLE: `logs --follow` waits); past
// the reattach timeout a worker never seen again is named as such.
TEST_F(ReattachTest, ARanksLogIsAskedOfItsWorkerOnceItRegistersAgain) {
  RunAndLoseTheCoordinator(2);
  auto c = Restart();
  const v1::Job placed = *c->GetJob(job_);
  ASSERT_EQ(placed.workers_size(), 2);
  v1::GetRankLogRequest log;
  log.set_job_id(job_);
  log.set_rank(0);
  auto early = c->GetRankLog(log, std::chrono::milliseconds(1));
  EXPECT_EQ(early.status().code(), absl::StatusCode::kUnavailable) << early.status();
  EXPECT_NE(early.status().message().find("worker " + placed.workers(0) + " that ran rank 0 of attempt " +
                                          std::to_string(attempt_) +
                                          " has not registered again since the coordinator restarted 0 s ago"),
            std::string::npos)
      << early.status();
  EXPECT_EQ(WorkerWithRank(*c, 0, -1, placed.workers(0)), placed.workers(0));
  // Its id is its own: a second worker naming it gets a new one.
  EXPECT_NE(Worker(*c, 1, placed.workers(0)), placed.workers(0));
  auto asked = c->GetRankLog(log, std::chrono::milliseconds(1));
  EXPECT_EQ(asked.status().code(), absl::StatusCode::kDeadlineExceeded) << asked.status();
  const v1::HeartbeatResponse beat = Beat(*c, placed.workers(0), {{job_, attempt_, 0}});
  ASSERT_EQ(beat.logs_size(), 1) << beat.DebugString();
  EXPECT_EQ(beat.logs(0).job_id(), job_);
  EXPECT_EQ(beat.logs(0).rank(), 0);
  EXPECT_EQ(beat.logs(0).attempt(), attempt_);
  now_ += 10500;
  log.set_rank(1);
  auto late = c->GetRankLog(log, std::chrono::milliseconds(1));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition) << late.status();
  EXPECT_NE(late.status().message().find("has not registered since the coordinator started 10 s ago"),
            std::string::npos)
      << late.status();
}

// Ranks that ended while the coordinator was away are reported with the
// registration: a job whose ranks all finished ends SUCCEEDED at once.
TEST_F(ReattachTest, AJobThatFinishedWhileTheCoordinatorWasAwaySucceeds) {
  RunAndLoseTheCoordinator(2);
  auto c = Restart();
  WorkerWithRank(*c, 0, /*exit_code=*/0);
  WorkerWithRank(*c, 1, /*exit_code=*/0);
  const v1::Job j = *c->GetJob(job_);
  EXPECT_EQ(j.state(), v1::SUCCEEDED) << Kinds(j);
  EXPECT_EQ(j.restarts(), 0);
  EXPECT_NE(Kinds(j).find("running reattaching rank_exited reattached rank_exited succeeded"), std::string::npos) << Kinds(j);
}

// A rank that is not reported back in time (its worker died with the
// coordinator away): the job goes back to the queue, not counted as a
// restart, and the rank that was reported back is stopped.
TEST_F(ReattachTest, AJobWithARankNotReportedBackInTimeGoesBackToTheQueue) {
  RunAndLoseTheCoordinator(2);
  auto c = Restart();
  const std::string a = WorkerWithRank(*c, 0);
  for (int i = 0; i < 19; ++i) {
    now_ += 500;
    EXPECT_FALSE(Stops(Beat(*c, a, {{job_, attempt_, 0}}), job_));
    c->Tick();
  }
  EXPECT_EQ(State(*c, job_), v1::RUNNING) << "requeued before the reattach timeout";
  for (int i = 0; i < 2; ++i) {
    now_ += 500;
    Beat(*c, a, {{job_, attempt_, 0}});
    c->Tick();
  }
  const v1::Job j = *c->GetJob(job_);
  EXPECT_EQ(j.state(), v1::QUEUED) << Kinds(j);
  EXPECT_EQ(j.restarts(), 0);
  EXPECT_EQ(j.workers_size(), 0);
  EXPECT_NE(j.events(j.events_size() - 1)
                .message()
                .find("rank(s) 1 of attempt " + std::to_string(attempt_) + " were not reported back by a worker within 10 s"),
            std::string::npos)
      << j.DebugString();
  EXPECT_TRUE(Stops(Beat(*c, a, {{job_, attempt_, 0}}), job_)) << "the rank that came back was left running";
}

// A rank of the job that failed while the coordinator was away fails the
// attempt as any failure does (a restart, counted), without waiting for the rest.
TEST_F(ReattachTest, ARankThatFailedWhileTheCoordinatorWasAwayRestartsTheJob) {
  RunAndLoseTheCoordinator(2);
  auto c = Restart();
  WorkerWithRank(*c, 1, /*exit_code=*/1);
  const v1::Job j = *c->GetJob(job_);
  EXPECT_EQ(j.state(), v1::FAILED) << Kinds(j) << " (max_restarts 0)";
  EXPECT_EQ(j.restarts(), 0);
  ASSERT_GE(j.failures_size(), 1);
  EXPECT_NE(j.reason().find("rank 1 exited with status 1"), std::string::npos) << j.DebugString();
}
}  // namespace
}  // namespace dfc
