#include "coordinator/job_store.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include <google/protobuf/util/message_differencer.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/random_token.h"
#include "common/run_dir.h"
#include "common/status_macros.h"
#include "common/training_config.h"

namespace dfc {
namespace {

// The connection's last error, with the database named where that is what
// the operator must act on: a full disk is RESOURCE_EXHAUSTED (as in
// atomic_file), a read-only one FAILED_PRECONDITION, a lock another program
// held past the busy timeout UNAVAILABLE.
absl::Status SqliteError(sqlite3* db, const std::string& detail = "") {
  const char* file = sqlite3_db_filename(db, "main");
  const std::string name = file != nullptr && *file ? absl::StrCat("the state database '", file, "'") : "the state database";
  const std::string sqlite = absl::StrCat("sqlite: ", detail.empty() ? sqlite3_errmsg(db) : detail);
  switch (sqlite3_errcode(db)) {
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(
          absl::StrCat(name, " cannot grow: its disk is full (", sqlite, "); free space there"));
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(absl::StrCat(name, " is read-only (", sqlite, ")"));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(absl::StrCat(name, " is locked by another program (", sqlite, ")"));
    default:
      return absl::InternalError(sqlite);
  }
}

// A prepared statement that finalises itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  absl::Status status() const {
    return rc_ == SQLITE_OK ? absl::OkStatus() : SqliteError(db_);
  }
  void Bind(int i, const std::string& s) { sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void BindText(int i, const std::string& s) { sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void BindNull(int i) { sqlite3_bind_null(stmt_, i); }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  int Step() { return sqlite3_step(stmt_); }
  std::string Blob(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    return std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  absl::Status Done() {
    int rc = Step();
    return rc == SQLITE_DONE ? absl::OkStatus() : SqliteError(db_);
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

std::string NewJobId() {
  static std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("job-%012x", rng() & 0xFFFFFFFFFFFFULL);
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open state database '", path, "': ", msg));
  }
  std::unique_ptr<JobStore> store(new JobStore(db));
  absl::MutexLock lock(&store->mu_);
  sqlite3_busy_timeout(db, 5000);
  // The first statement reads the file: one that is not a database, or a
  // damaged one, is named and left as it is (nothing below writes to it).
  if (absl::Status st = store->Exec("PRAGMA journal_mode=WAL"); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("state database '", path, "' cannot be used (it is left as it is; "
                                                "restore it from a backup or move it away): ", st.message()));
  }
  DFC_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  // The job is kept as its protobuf (the schema evolves with the proto); the
  // columns are what queries need.
  DFC_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS jobs ("
      " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
      " job_id TEXT UNIQUE NOT NULL,"
      " idempotency_key TEXT UNIQUE,"
      " job BLOB NOT NULL)"));
  DFC_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS epochs ("
      " job_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics BLOB NOT NULL,"
      " PRIMARY KEY (job_id, epoch))"));
  // --recipe notebook's epoch-count selection (EpochMetrics.phase "selection").
  DFC_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS selection_epochs ("
      " job_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics BLOB NOT NULL,"
      " PRIMARY KEY (job_id, epoch))"));
  // `models` held ModelInfo rows of weights in STATE/models (before the
  // catalogue named their path); `catalog` holds CatalogEntry rows.
  DFC_RETURN_IF_ERROR(store->Exec("CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, info BLOB NOT NULL)"));
  DFC_RETURN_IF_ERROR(store->Exec("CREATE TABLE IF NOT EXISTS catalog (name TEXT PRIMARY KEY, entry BLOB NOT NULL)"));
  // The ids of deleted jobs, and when: a worker that was away when a job
  // was deleted still learns that its folders can go.
  DFC_RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS deleted_jobs (job_id TEXT PRIMARY KEY, unix_ms INTEGER NOT NULL)"));
  // What this state is, across copies and restores (StateId). Written once:
  // a state that already has one opens without a write (a full or read-only
  // disk is reported by the writes that need it, not at start).
  DFC_RETURN_IF_ERROR(store->Exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"));
  bool has_id = false;
  {
    Stmt q(db, "SELECT 1 FROM meta WHERE key = 'state_id'");
    DFC_RETURN_IF_ERROR(q.status());
    has_id = q.Step() == SQLITE_ROW;
  }
  if (!has_id) {
    DFC_RETURN_IF_ERROR(store->Exec(
        absl::StrCat("INSERT INTO meta (key, value) VALUES ('state_id', '", RandomHexToken(16), "')")));
  }
  return store;
}

absl::StatusOr<std::string> JobStore::StateId() {
  absl::MutexLock lock(&mu_);
  Stmt q(db_, "SELECT value FROM meta WHERE key = 'state_id'");
  DFC_RETURN_IF_ERROR(q.status());
  if (q.Step() != SQLITE_ROW) return absl::InternalError("the state database has no state_id");
  return q.Blob(0);
}

absl::StatusOr<int64_t> JobStore::Backup(const std::string& path, const std::string& to, const std::string& flag) {
  sqlite3* src = nullptr;
  // No SQLITE_OPEN_CREATE: a wrong --state is named, not backed up empty.
  if (sqlite3_open_v2(path.c_str(), &src, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    const std::string msg = src ? sqlite3_errmsg(src) : "out of memory";
    sqlite3_close(src);
    return absl::NotFoundError(absl::StrCat("cannot open the state database '", path, "': ", msg));
  }
  sqlite3_busy_timeout(src, 5000);
  const std::string tmp = to + ".partial";
  std::remove(tmp.c_str());
  sqlite3* dst = nullptr;
  absl::Status st;
  if (sqlite3_open_v2(tmp.c_str(), &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
    st = absl::InvalidArgumentError(absl::StrCat(flag, ": cannot write '", tmp, "': ",
                                                 dst ? sqlite3_errmsg(dst) : "out of memory"));
  } else if (sqlite3_backup* b = sqlite3_backup_init(dst, "main", src, "main"); b == nullptr) {
    st = SqliteError(dst, "backup");
  } else {
    const int rc = sqlite3_backup_step(b, -1);  // every page, in one read transaction of the source
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE) {
      st = SqliteError(dst, absl::StrCat("backup of '", path, "' to '", tmp, "': ", sqlite3_errmsg(dst)));
    }
  }
  int64_t jobs = -1;
  if (st.ok()) {
    Stmt check(dst, "PRAGMA integrity_check");
    st = check.status();
    if (st.ok() && (check.Step() != SQLITE_ROW || check.Blob(0) != "ok")) {
      st = absl::DataLossError(absl::StrCat("the copy '", tmp, "' fails integrity_check"));
    }
  }
  if (st.ok()) {
    Stmt count(dst, "SELECT COUNT(*) FROM jobs");
    if (!count.status().ok()) {
      st = absl::InvalidArgumentError(
          absl::StrCat("'", path, "' is not a DFC state database (", sqlite3_errmsg(dst), ")"));
    } else if (count.Step() == SQLITE_ROW) {
      jobs = count.Int(0);
    }
  }
  if (st.ok()) {
    // The copy is one file: it opens with no -wal or -shm created
    // beside it. JobStore::Open puts a restored copy back into WAL mode.
    Stmt rollback_journal(dst, "PRAGMA journal_mode=DELETE");
    st = rollback_journal.status();
    if (st.ok() && (rollback_journal.Step() != SQLITE_ROW || rollback_journal.Blob(0) != "delete")) {
      st = SqliteError(dst, absl::StrCat("cannot take '", tmp, "' out of WAL mode"));
    }
  }
  sqlite3_close(dst);
  sqlite3_close(src);
  if (st.ok() && std::rename(tmp.c_str(), to.c_str()) != 0) {
    st = absl::InvalidArgumentError(absl::StrCat(flag, ": cannot rename '", tmp, "' to '", to, "': ",
                                                 std::strerror(errno)));
  }
  if (st.ok()) SyncParentDirectory(to);
  if (!st.ok()) {
    std::remove(tmp.c_str());
    return st;
  }
  return jobs;
}

absl::StatusOr<std::pair<int64_t, bool>> JobStore::Restore(const std::string& from, const std::string& path,
                                                            const std::string& aside) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(from, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("--restore-from: '", from, "' is not a file"));
  }
  const std::string incoming = path + ".restoring";
  auto jobs = Backup(from, incoming, "--restore-from");
  if (!jobs.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--restore-from: cannot restore '", from, "': ",
                                                   jobs.status().message(), "; nothing was changed"));
  }
  // The database in place, and its WAL (writes not yet in jobs.db), move
  // together: the folder they go to opens as the state it was.
  std::vector<std::pair<std::string, std::string>> moved;
  auto undo = [&](const std::string& why) {
    for (auto it = moved.rbegin(); it != moved.rend(); ++it) std::rename(it->second.c_str(), it->first.c_str());
    std::remove(incoming.c_str());
    return absl::InternalError(absl::StrCat(why, "; the state was left as it was"));
  };
  for (const char* suffix : {"", "-wal", "-shm"}) {
    const std::string file = path + suffix;
    if (!fs::exists(file, ec)) continue;
    if (moved.empty()) {
      fs::create_directories(aside, ec);
      if (ec) return undo(absl::StrCat("cannot create '", aside, "': ", ec.message()));
    }
    const std::string to = (fs::path(aside) / fs::path(file).filename()).string();
    if (std::rename(file.c_str(), to.c_str()) != 0) {
      return undo(absl::StrCat("cannot move '", file, "' to '", to, "': ", std::strerror(errno)));
    }
    moved.emplace_back(file, to);
  }
  if (std::rename(incoming.c_str(), path.c_str()) != 0) {
    return undo(absl::StrCat("cannot rename '", incoming, "' to '", path, "': ", std::strerror(errno)));
  }
  SyncParentDirectory(path);
  if (!moved.empty()) SyncParentDirectory(moved.front().second);
  return std::make_pair(*jobs, !moved.empty());
}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::Status JobStore::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = absl::StrCat(err ? err : "unknown error", " in: ", sql);
    sqlite3_free(err);
    return SqliteError(db_, msg);
  }
  return absl::OkStatus();
}

absl::Status JobStore::Written(absl::Status st) {
  const bool failing = !st.ok();
  if (failing != write_failing_.exchange(failing)) {
    if (failing) {
      std::fprintf(stderr, "dfc-coordinator: %s; what is not written waits (requests that need a write are refused) "
                   "until it can be written again\n", std::string(st.message()).c_str());
    } else {
      std::fprintf(stderr, "dfc-coordinator: the state database is written again\n");
    }
  }
  return st;
}

absl::StatusOr<std::pair<v1::Job, bool>> JobStore::Create(const v1::SubmitJobRequest& r, const std::string& output_root,
                                                          int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  if (!r.idempotency_key().empty()) {
    Stmt q(db_, "SELECT job_id FROM jobs WHERE idempotency_key = ?");
    DFC_RETURN_IF_ERROR(q.status());
    q.BindText(1, r.idempotency_key());
    if (q.Step() == SQLITE_ROW) {
      DFC_ASSIGN_OR_RETURN(v1::Job existing, GetLocked(q.Blob(0)));
      // The key names one request: the same key with another request is a
      // client bug (or a reused key), never silently the old job.
      v1::SubmitJobRequest before;
      *before.mutable_config() = existing.config();
      before.set_world_size(existing.world_size());
      before.set_max_restarts(existing.max_restarts());
      before.set_priority(existing.priority());
      before.set_idempotency_key(r.idempotency_key());
      std::string diff;
      google::protobuf::util::MessageDifferencer d;
      d.ReportDifferencesToString(&diff);
      if (!d.Compare(before, r)) {
        std::replace(diff.begin(), diff.end(), '\n', ';');
        return absl::AlreadyExistsError(absl::StrCat("idempotency_key: '", r.idempotency_key(), "' was used for job ",
                                                     existing.job_id(), " with a different request (", diff, ")"));
      }
      return std::make_pair(existing, true);
    }
  }
  v1::Job job;
  job.set_job_id(NewJobId());
  *job.mutable_config() = r.config();
  job.set_world_size(r.world_size());
  job.set_max_restarts(r.max_restarts());
  job.set_priority(r.priority());
  job.set_state(v1::QUEUED);
  job.set_created_unix_ms(now_ms);
  job.set_output_dir(output_root + "/" + job.job_id());
  Stmt ins(db_, "INSERT INTO jobs (job_id, idempotency_key, job) VALUES (?, ?, ?)");
  DFC_RETURN_IF_ERROR(ins.status());
  ins.BindText(1, job.job_id());
  if (r.idempotency_key().empty()) ins.BindNull(2);
  else ins.BindText(2, r.idempotency_key());
  ins.Bind(3, job.SerializeAsString());
  DFC_RETURN_IF_ERROR(Written(ins.Done()));
  return std::make_pair(job, false);
}

absl::StatusOr<v1::Job> JobStore::GetLocked(const std::string& job_id) {
  Stmt q(db_, "SELECT job FROM jobs WHERE job_id = ?");
  DFC_RETURN_IF_ERROR(q.status());
  q.BindText(1, job_id);
  if (q.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("job_id: no job '", job_id, "'"));
  v1::Job job;
  if (!job.ParseFromString(q.Blob(0))) return absl::DataLossError(absl::StrCat("job '", job_id, "' is unreadable"));
  // Stored before the configuration's enums: its names are converted (an
  // unknown one leaves UNSPECIFIED, which the validator names at the next run).
  if (!UpgradeStoredConfig(job.mutable_config())) {
    std::fprintf(stderr, "dfc-coordinator: job %s: a stored model/loss/schedule/precision name is unknown\n",
                 job_id.c_str());
  }
  for (const bool selection : {false, true}) {
    Stmt e(db_, selection ? "SELECT metrics FROM selection_epochs WHERE job_id = ? ORDER BY epoch"
                          : "SELECT metrics FROM epochs WHERE job_id = ? ORDER BY epoch");
    DFC_RETURN_IF_ERROR(e.status());
    e.BindText(1, job_id);
    while (e.Step() == SQLITE_ROW) {
      (selection ? job.add_selection_epochs() : job.add_epochs())->ParseFromString(e.Blob(0));
    }
  }
  return job;
}

absl::StatusOr<v1::Job> JobStore::Get(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  return GetLocked(job_id);
}

absl::StatusOr<std::vector<v1::Job>> JobStore::List() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  {
    Stmt q(db_, "SELECT job_id FROM jobs ORDER BY seq");
    DFC_RETURN_IF_ERROR(q.status());
    while (q.Step() == SQLITE_ROW) ids.push_back(q.Blob(0));
  }
  std::vector<v1::Job> out;
  for (const auto& id : ids) {
    DFC_ASSIGN_OR_RETURN(v1::Job j, GetLocked(id));
    out.push_back(std::move(j));
  }
  return out;
}

absl::Status JobStore::Update(const v1::Job& job) {
  absl::MutexLock lock(&mu_);
  v1::Job stored = job;
  stored.clear_epochs();  // kept in their own tables
  stored.clear_selection_epochs();
  Stmt u(db_, "UPDATE jobs SET job = ? WHERE job_id = ?");
  DFC_RETURN_IF_ERROR(u.status());
  u.Bind(1, stored.SerializeAsString());
  u.BindText(2, job.job_id());
  DFC_RETURN_IF_ERROR(Written(u.Done()));
  if (sqlite3_changes(db_) != 1) return absl::NotFoundError(absl::StrCat("job_id: no job '", job.job_id(), "'"));
  return absl::OkStatus();
}

absl::Status JobStore::Delete(const std::string& job_id, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  absl::Status st = Exec("BEGIN IMMEDIATE");
  for (const char* sql : {"DELETE FROM epochs WHERE job_id = ?", "DELETE FROM selection_epochs WHERE job_id = ?",
                          "DELETE FROM jobs WHERE job_id = ?"}) {
    if (!st.ok()) break;
    Stmt d(db_, sql);
    st = d.status();
    if (!st.ok()) break;
    d.BindText(1, job_id);
    st = d.Done();
  }
  if (st.ok()) {
    Stmt remember(db_, "INSERT OR REPLACE INTO deleted_jobs (job_id, unix_ms) VALUES (?, ?)");
    st = remember.status();
    if (st.ok()) {
      remember.BindText(1, job_id);
      remember.Bind(2, now_ms);
      st = remember.Done();
    }
  }
  if (st.ok()) st = Exec("COMMIT");
  if (!st.ok()) (void)Exec("ROLLBACK");  // none open (BEGIN failed) is an error nobody needs
  return Written(st);
}

absl::StatusOr<int64_t> JobStore::DeletedAt(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Stmt q(db_, "SELECT unix_ms FROM deleted_jobs WHERE job_id = ?");
  DFC_RETURN_IF_ERROR(q.status());
  q.BindText(1, job_id);
  const int rc = q.Step();
  if (rc == SQLITE_DONE) return int64_t{0};
  if (rc != SQLITE_ROW) return SqliteError(db_);
  return q.Int(0);
}

absl::Status JobStore::ForgetDeletedBefore(int64_t unix_ms) {
  absl::MutexLock lock(&mu_);
  Stmt d(db_, "DELETE FROM deleted_jobs WHERE unix_ms < ?");
  DFC_RETURN_IF_ERROR(d.status());
  d.Bind(1, unix_ms);
  return Written(d.Done());
}

absl::Status JobStore::PutEpoch(const std::string& job_id, const v1::EpochMetrics& m) {
  if (!m.phase().empty() && m.phase() != run_dir::kSelection) {
    return absl::InvalidArgumentError(absl::StrCat("epoch.phase: no phase '", m.phase(), "'"));
  }
  absl::MutexLock lock(&mu_);
  Stmt u(db_, m.phase().empty() ? "INSERT OR REPLACE INTO epochs (job_id, epoch, metrics) VALUES (?, ?, ?)"
                                : "INSERT OR REPLACE INTO selection_epochs (job_id, epoch, metrics) VALUES (?, ?, ?)");
  DFC_RETURN_IF_ERROR(u.status());
  u.BindText(1, job_id);
  u.Bind(2, static_cast<int64_t>(m.epoch()));
  u.Bind(3, m.SerializeAsString());
  return Written(u.Done());
}

absl::StatusOr<std::string> JobStore::PutModel(const v1::CatalogEntry& entry, bool replace) {
  absl::MutexLock lock(&mu_);
  std::string replaced;
  {
    Stmt q(db_, "SELECT entry FROM catalog WHERE name = ?");
    DFC_RETURN_IF_ERROR(q.status());
    q.BindText(1, entry.info().name());
    if (q.Step() == SQLITE_ROW) {
      if (!replace) {
        return absl::AlreadyExistsError(
            absl::StrCat("model '", entry.info().name(), "' exists (import with replace to overwrite)"));
      }
      v1::CatalogEntry old;
      if (old.ParseFromString(q.Blob(0))) replaced = old.weights_path();
    }
  }
  Stmt u(db_, "INSERT OR REPLACE INTO catalog (name, entry) VALUES (?, ?)");
  DFC_RETURN_IF_ERROR(u.status());
  u.BindText(1, entry.info().name());
  u.Bind(2, entry.SerializeAsString());
  DFC_RETURN_IF_ERROR(Written(u.Done()));
  return replaced;
}

absl::StatusOr<v1::CatalogEntry> JobStore::GetModel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  Stmt q(db_, "SELECT entry FROM catalog WHERE name = ?");
  DFC_RETURN_IF_ERROR(q.status());
  q.BindText(1, name);
  if (q.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("model: no imported model '", name, "'"));
  v1::CatalogEntry entry;
  if (!entry.ParseFromString(q.Blob(0))) return absl::DataLossError(absl::StrCat("model '", name, "' is unreadable"));
  return entry;
}

absl::StatusOr<std::vector<v1::CatalogEntry>> JobStore::ListModels() {
  absl::MutexLock lock(&mu_);
  Stmt q(db_, "SELECT entry FROM catalog ORDER BY name");
  DFC_RETURN_IF_ERROR(q.status());
  std::vector<v1::CatalogEntry> out;
  while (q.Step() == SQLITE_ROW) {
    out.emplace_back();
    if (!out.back().ParseFromString(q.Blob(0))) return absl::DataLossError("an imported model record is unreadable");
  }
  return out;
}

absl::Status JobStore::MigrateLegacyModels(const std::string& models_dir) {
  absl::MutexLock lock(&mu_);
  Stmt q(db_, "SELECT info FROM models WHERE name NOT IN (SELECT name FROM catalog)");
  DFC_RETURN_IF_ERROR(q.status());
  while (q.Step() == SQLITE_ROW) {
    v1::CatalogEntry entry;
    if (!entry.mutable_info()->ParseFromString(q.Blob(0))) return absl::DataLossError("an imported model record is unreadable");
    entry.set_weights_path(absl::StrCat(models_dir, "/", entry.info().name(), ".weights"));
    Stmt u(db_, "INSERT INTO catalog (name, entry) VALUES (?, ?)");
    DFC_RETURN_IF_ERROR(u.status());
    u.BindText(1, entry.info().name());
    u.Bind(2, entry.SerializeAsString());
    DFC_RETURN_IF_ERROR(u.Done());
  }
  return absl::OkStatus();
}

}  // namespace dfc
