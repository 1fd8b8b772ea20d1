// The evaluation commands: `evaluate` (stream images to dfc-server replicas,
// summarise the predictions), `import` (register weights) and `models`.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/client_rpc.h"
#include "clients/commands.h"
#include "common/atomic_file.h"
#include "common/metrics.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "common/training_config.h"
#include "common/utf8.h"
#include "data_shards/dataset_scan.h"
#include "dfc/v1/dfc.grpc.pb.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

struct EvaluateArgs {
  std::string job;
  std::string checkpoint = "latest";
  std::string model;
  std::vector<std::string> paths;
  std::string out_csv;
  int concurrency = 1;
  double validation_split = -1;
  bool validation_from_end = false;
  int timeout_s = 86400;
  // A replica that answers nothing for this long while images are
  // outstanding is given up (frozen, a hung GPU): the stream is cancelled and
  // its images go to another replica.
  int stall_timeout_s = 120;
  // Unanswered images per stream. A stream takes its next image from the
  // shared queue only when an answer frees a place, so a slow replica holds
  // at most this many (and a fast one gets the rest), and a replica that dies
  // leaves at most this many per stream to send again. Twice the server's
  // default per-stream limit (64), so a stream's next images are on their
  // way while the server works on the ones it has.
  int max_in_flight = 128;
};

// One image to evaluate and, once answered, its outcome.
struct Item {
  Item(std::string p, std::optional<int32_t> l) : path(std::move(p)), label(l) {}
  std::string path;
  std::optional<int32_t> label;
  bool done = false;
  float p_real = 0, logit = 0;
  std::string error;
};

// Files as given; folders of class folders labelled as training labels them
// (sorted names: the first is fake = 0, the second real = 1), optionally only
// their Keras validation split; a folder without subfolders: its images, unlabelled.
absl::Status GatherItems(const EvaluateArgs& a, std::vector<Item>* items, std::vector<std::string>* classes) {
  for (const std::string& p : a.paths) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) {
      if (a.validation_split >= 0) {
        return absl::InvalidArgumentError(absl::StrCat("--validation-split needs dataset folders; '", p, "' is a file"));
      }
      items->push_back({p, std::nullopt});
      continue;
    }
    if (!fs::is_directory(p, ec)) return absl::NotFoundError(absl::StrCat("'", p, "': no such file or folder"));
    bool has_subdirs = false;
    std::vector<std::string> files;
    // The error_code forms throughout: an entry that cannot be stat'ed (a
    // link to itself: ELOOP) is neither, where the throwing forms ended dfc.
    for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code type_ec;
      if (it->is_directory(type_ec)) {
        has_subdirs = true;
      } else if (it->is_regular_file(type_ec) && HasImageExtension(it->path().filename().string())) {
        files.push_back(it->path().string());
      }
    }
    if (ec) return absl::NotFoundError(absl::StrCat("cannot list '", p, "': ", ec.message()));
    if (!has_subdirs) {
      std::sort(files.begin(), files.end());
      if (files.empty()) return absl::NotFoundError(absl::StrCat("'", p, "' holds no images"));
      for (auto& f : files) items->push_back({std::move(f), std::nullopt});
      continue;
    }
    std::vector<SourceImage> images;
    std::vector<std::string> found;
    if (a.validation_split >= 0) {
      ScanOptions o;
      o.validation_split = a.validation_split;
      o.validation_from_end = a.validation_from_end;
      auto ds = ScanDataset(p, o);
      if (!ds.ok()) return ds.status();
      images = std::move(ds->validation);
      found = ds->classes;
    } else {
      auto listed = ListClassFolders(p, &found);
      if (!listed.ok()) return listed.status();
      images = std::move(*listed);
    }
    if (found.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("'", p, "' has ", found.size(),
                                                     " class folders; a detector needs two (fake, real)"));
    }
    if (!classes->empty() && *classes != found) {
      return absl::InvalidArgumentError(absl::StrCat("'", p, "' has classes ", found[0], ", ", found[1],
                                                     " but an earlier folder has ", (*classes)[0], ", ", (*classes)[1]));
    }
    *classes = found;
    for (auto& img : images) items->push_back({std::move(img.path), img.label});
  }
  if (items->empty()) return absl::InvalidArgumentError("no images to evaluate");
  return absl::OkStatus();
}

// The images no stream has sent yet, and those to send again because the
// replica that had them died.
class WorkQueue {
 public:
  explicit WorkQueue(size_t n) : n_(n) {}
  bool Take(size_t* i) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!retry_.empty()) {
      *i = retry_.front();
      retry_.pop_front();
      return true;
    }
    if (next_ >= n_) return false;
    *i = next_++;
    return true;
  }
  bool Empty() {
    std::lock_guard<std::mutex> lock(mu_);
    return retry_.empty() && next_ >= n_;
  }
  void Return(const std::vector<size_t>& items) {
    std::lock_guard<std::mutex> lock(mu_);
    retry_.insert(retry_.end(), items.begin(), items.end());
  }

 private:
  std::mutex mu_;
  const size_t n_;
  size_t next_ = 0;
  std::deque<size_t> retry_;
};

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Evaluate streams, one after another while a replica fails: sends items
// taken from the queue and records results. A stream that ends UNAVAILABLE
// (its replica died or went away) or stalls (no answer for --stall-timeout
// with images outstanding: the replica is frozen or hung and its connection
// still open) gives its unanswered items back and opens a new stream, which
// round-robin places on another replica; each image is answered (and
// counted) once. A stream refused RESOURCE_EXHAUSTED (the replica is at its
// limit of open streams or threads: busy, evaluating nothing of ours) gives
// its items back too and waits for a place, trying the replicas in turn with
// a growing pause, for at most --stall-timeout, unless the queue is empty
// (the other streams have the images).
class StreamRunner {
 public:
  static constexpr int kMaxReplicaFailures = 10;
  static constexpr int64_t kMaxBusyPauseMs = 2000;

  // Stream s starts on replica s mod N of `stubs` and moves to the next one
  // when its replica fails.
  StreamRunner(const std::vector<std::unique_ptr<v1::EvaluationService::Stub>>* stubs, size_t first, ClientArgs& c,
               const EvaluateArgs& a, std::vector<Item>* items, WorkQueue* queue, std::atomic<size_t>* done,
               std::atomic<int>* retried, std::atomic<bool>* said_busy)
      : stubs_(stubs), replica_(first), c_(c), a_(a), items_(items), queue_(queue), done_(done), retried_(retried),
        said_busy_(said_busy) {}

  // The last stream's status.
  grpc::Status Run(v1::ModelInfo* info) {
    int64_t busy_since_ms = -1;
    int64_t busy_pause_ms = 100;
    std::minstd_rand jitter(static_cast<uint32_t>(SteadyMs() + static_cast<int64_t>(replica_) * 7919));
    for (int failures = 0;;) {
      std::vector<size_t> unanswered;
      grpc::Status st = RunStream(info, &unanswered);
      if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        queue_->Return(unanswered);  // never evaluated: not counted as sent again
        if (queue_->Empty()) return st;
        const int64_t now = SteadyMs();
        if (busy_since_ms < 0) busy_since_ms = now;
        const int64_t left = int64_t{a_.stall_timeout_s} * 1000 - (now - busy_since_ms);
        if (left <= 0) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              absl::StrCat("the evaluation servers stayed busy for ", a_.stall_timeout_s,
                                           " s (--stall-timeout): ", st.error_message(), "; try again later"));
        }
        if (!said_busy_->exchange(true)) {
          std::fprintf(stderr, "dfc: a replica is busy (%s); waiting for a place, for at most %d s\n",
                       ForTerminal(st.error_message()).c_str(), a_.stall_timeout_s);
        }
        ++replica_;
        // Half the pause, plus up to the other half at random: clients
        // refused together do not all come back together.
        const auto half = static_cast<uint32_t>(busy_pause_ms / 2);
        const int64_t pause = half + jitter() % (half + 1);
        std::this_thread::sleep_for(std::chrono::milliseconds(std::min(pause, left)));
        busy_pause_ms = std::min(busy_pause_ms * 2, kMaxBusyPauseMs);
        continue;
      }
      busy_since_ms = -1;
      busy_pause_ms = 100;
      const bool retry = st.error_code() == grpc::StatusCode::UNAVAILABLE && failures < kMaxReplicaFailures;
      if (retry) {
        ++failures;
        ++replica_;  // the next replica (with one round-robin channel: its next pick)
        if (!unanswered.empty()) {
          *retried_ += static_cast<int>(unanswered.size());
          queue_->Return(unanswered);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100 * failures));
        continue;
      }
      for (size_t i : unanswered) {
        Item& item = (*items_)[i];
        item.error = absl::StrCat("no result: the stream ended: ", st.ok() ? "early" : st.error_message());
        item.done = true;
        ++*done_;
      }
      return st;
    }
  }

 private:
  grpc::Status RunStream(v1::ModelInfo* info, std::vector<size_t>* unanswered) {
    auto ctx = MakeContext(c_.security, std::chrono::seconds(a_.timeout_s));
    auto stream = (*stubs_)[replica_ % stubs_->size()]->Evaluate(ctx.get());
    v1::EvaluateRequest first;
    if (!a_.model.empty()) {
      first.mutable_model()->set_name(a_.model);
    } else {
      first.mutable_model()->mutable_job()->set_job_id(a_.job);
      first.mutable_model()->mutable_job()->set_checkpoint(a_.checkpoint);
    }
    // What the writer, the reader and the watchdog share, guarded by mu;
    // `changed` is signalled on every answer and when the reader ends.
    std::mutex mu;
    std::condition_variable changed;
    std::vector<size_t> sent;
    size_t answered = 0;
    bool reader_done = false;
    // Answers, the model's description and the replica's "still loading"
    // are its signs of life.
    int64_t last_answer_ms = SteadyMs();
    bool stalled = false;
    auto outstanding = [&] { return sent.size() - answered; };  // with mu held
    std::thread watchdog([&] {
      {
        std::unique_lock<std::mutex> lock(mu);
        while (!changed.wait_for(lock, std::chrono::milliseconds(200), [&] { return reader_done; })) {
          if (outstanding() > 0 && SteadyMs() - last_answer_ms > int64_t{a_.stall_timeout_s} * 1000) {
            std::fprintf(stderr,
                         "dfc: a replica answered nothing for %d s with %zu image(s) outstanding (frozen or hung?); "
                         "sending them to another replica\n",
                         a_.stall_timeout_s, outstanding());
            stalled = true;
            break;
          }
        }
        if (!stalled) return;
      }
      ctx->TryCancel();
    });
    std::thread reader([&] {
      v1::EvaluateResponse resp;
      while (stream->Read(&resp)) {
        {
          std::lock_guard<std::mutex> lock(mu);
          last_answer_ms = SteadyMs();
          if (!resp.has_model()) ++answered;
        }
        changed.notify_all();
        if (resp.has_model()) {
          // MODEL_LOADING: the replica is loading the model (a sign of life
          // only); then the loaded model's description.
          if (resp.model().state() != v1::MODEL_LOADING) *info = resp.model();
          continue;
        }
        const v1::EvaluateResult& r = resp.result();
        size_t index = 0;
        if (!absl::SimpleAtoi(r.id(), &index) || index >= items_->size()) continue;  // not ours
        Item& item = (*items_)[index];
        if (item.done) continue;  // answered once already
        item.p_real = r.p_real();
        item.logit = r.logit();
        item.error = r.error();
        item.done = true;
        ++*done_;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        reader_done = true;
      }
      changed.notify_all();
    });
    // Room in the window, or false once the stream has ended (failed, cancelled).
    auto wait_for_window = [&] {
      std::unique_lock<std::mutex> lock(mu);
      changed.wait(lock, [&] { return reader_done || outstanding() < static_cast<size_t>(a_.max_in_flight); });
      return !reader_done;
    };
    bool ok = stream->Write(first);
    size_t i = 0;
    while (ok && wait_for_window() && queue_->Take(&i)) {
      Item& item = (*items_)[i];
      auto bytes = ReadFile(item.path, kMaxMessageBytes - 4096);
      if (!bytes.ok()) {
        item.error = std::string(bytes.status().message());
        item.done = true;
        ++*done_;
        continue;
      }
      v1::EvaluateRequest req;
      req.set_id(absl::StrCat(i));
      *req.mutable_image() = std::move(*bytes);
      if (item.label) req.set_label(*item.label);
      {
        std::lock_guard<std::mutex> lock(mu);
        sent.push_back(i);
      }
      ok = stream->Write(req);
    }
    stream->WritesDone();
    reader.join();
    watchdog.join();  // ends with the reader
    grpc::Status st = stream->Finish();
    if (stalled) {
      st = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("the replica answered nothing for ", a_.stall_timeout_s, " s"));
    }
    for (size_t k : sent) {
      if (!(*items_)[k].done) unanswered->push_back(k);
    }
    return st;
  }

  const std::vector<std::unique_ptr<v1::EvaluationService::Stub>>* stubs_;
  size_t replica_;
  ClientArgs& c_;
  const EvaluateArgs& a_;
  std::vector<Item>* items_;
  WorkQueue* queue_;
  std::atomic<size_t>* done_;
  std::atomic<int>* retried_;
  std::atomic<bool>* said_busy_;  // the busy line is printed once per command
};

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"') out += '"';
    out += ch;
  }
  return out + "\"";
}

double Ratio(int64_t a, int64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : std::nan(""); }

// The summary of an evaluation: CSV (--out), then counts, accuracy, AUC,
// per-class precision and recall and the confusion matrix (or JSON).
int Summarise(ClientArgs& c, const EvaluateArgs& a, const std::vector<Item>& items,
              const std::vector<std::string>& classes, const v1::ModelInfo& info, double seconds, int retried) {
  std::vector<float> scores;
  std::vector<int32_t> labels;
  int64_t errors = 0;
  for (const Item& item : items) {
    if (!item.error.empty()) {
      ++errors;
      std::fprintf(stderr, "dfc: %s: %s\n", ForTerminal(item.path).c_str(), ForTerminal(item.error).c_str());
      continue;
    }
    if (item.label) {
      scores.push_back(item.p_real);
      labels.push_back(*item.label);
    }
  }
  if (!a.out_csv.empty()) {
    std::string csv = "path,label,p_real,logit,error\n";
    for (const Item& item : items) {
      absl::StrAppend(&csv, CsvField(item.path), ",", item.label ? classes[*item.label] : "", ",",
                      item.error.empty() ? absl::StrFormat("%.6f", item.p_real) : "", ",",
                      item.error.empty() ? absl::StrFormat("%.6f", item.logit) : "", ",", CsvField(item.error), "\n");
    }
    if (absl::Status st = WriteFileAtomically(a.out_csv, csv); !st.ok()) return ReportError(st);
  }
  const Confusion m = CountConfusion(scores, labels, 0.5f);
  const double auc = BinaryAuc(scores, labels);
  const double accuracy = labels.empty() ? std::nan("") : m.accuracy();
  // Per class: 0 = fake (predicted when P(real) <= 0.5), 1 = real.
  const double precision[2] = {Ratio(m.tn, m.tn + m.fn), Ratio(m.tp, m.tp + m.fp)};
  const double recall[2] = {Ratio(m.tn, m.tn + m.fp), Ratio(m.tp, m.tp + m.fn)};
  const int64_t support[2] = {m.tn + m.fp, m.tp + m.fn};
  if (c.json) {
    nlohmann::json j;
    j["model"] = {{"name", info.name()}, {"arch", info.arch()}, {"epoch", info.epoch()}, {"format", info.format()}};
    j["count"] = items.size();
    j["retried"] = retried;
    j["errors"] = errors;
    j["labelled"] = labels.size();
    j["accuracy"] = accuracy;
    j["auc"] = auc;
    j["threshold"] = 0.5;
    for (int k = 0; k < 2; ++k) {
      j["classes"].push_back({{"name", classes[k]}, {"label", k}, {"precision", precision[k]},
                              {"recall", recall[k]}, {"support", support[k]}});
    }
    j["confusion"] = {{m.tn, m.fp}, {m.fn, m.tp}};
    j["seconds"] = seconds;
    j["images_per_second"] = static_cast<double>(items.size()) / seconds;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("model %s (%s, %s, epoch %lld)\n", ForTerminal(info.name()).c_str(), info.arch().c_str(), info.format().c_str(),
                static_cast<long long>(info.epoch()));
    std::printf("count %zu  errors %lld  labelled %zu  %.1f s  %.1f img/s\n", items.size(),
                static_cast<long long>(errors), labels.size(), seconds, static_cast<double>(items.size()) / seconds);
    if (!labels.empty()) {
      std::printf("accuracy %.4f  AUC %.4f  (threshold 0.5 on P(real))\n", accuracy, auc);
      std::printf("%-12s %9s %9s %9s\n", "class", "precision", "recall", "support");
      for (int k = 0; k < 2; ++k) {
        std::printf("%-12s %9.4f %9.4f %9lld\n", absl::StrCat(classes[k], " (", k, ")").c_str(), precision[k],
                    recall[k], static_cast<long long>(support[k]));
      }
      std::printf("confusion (rows: true, columns: predicted)\n%-12s %9s %9s\n", "", classes[0].c_str(),
                  classes[1].c_str());
      std::printf("%-12s %9lld %9lld\n%-12s %9lld %9lld\n", classes[0].c_str(), static_cast<long long>(m.tn),
                  static_cast<long long>(m.fp), classes[1].c_str(), static_cast<long long>(m.fn),
                  static_cast<long long>(m.tp));
    }
  }
  std::fflush(stdout);
  return errors == 0 ? kExitOk : kExitPartial;
}


int RunEvaluate(ClientArgs& c, const EvaluateArgs& a) {
  if (a.job.empty() == a.model.empty()) {
    return ReportError(absl::InvalidArgumentError("evaluate: give either --job or --model"));
  }
  std::vector<Item> items;
  std::vector<std::string> classes;
  if (absl::Status st = GatherItems(a, &items, &classes); !st.ok()) return ReportError(st);
  if (classes.empty()) classes = {"fake", "real"};
  auto channels = OpenServerChannels(c);
  if (!channels.ok()) return ReportError(channels.status());
  std::vector<std::unique_ptr<v1::EvaluationService::Stub>> stubs;
  for (const auto& channel : *channels) stubs.push_back(v1::EvaluationService::NewStub(channel));

  const auto start = std::chrono::steady_clock::now();
  WorkQueue queue(items.size());
  std::atomic<size_t> done{0};
  std::atomic<int> retried{0};
  std::atomic<bool> said_busy{false};
  const int streams = std::max(1, std::min<int>(a.concurrency, static_cast<int>(items.size())));
  std::vector<grpc::Status> status(streams);
  std::vector<v1::ModelInfo> infos(streams);
  std::vector<std::thread> threads;
  std::atomic<int> running{streams};
  // With one round-robin channel (a gRPC target), connect first and open the
  // streams a moment apart: round-robin picks among the replicas connected
  // so far, and the others' connections come up meanwhile.
  if (channels->size() == 1) {
    channels->front()->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  }
  for (int s = 0; s < streams; ++s) {
    if (s > 0 && channels->size() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    threads.emplace_back([&, s] {
      StreamRunner runner(&stubs, static_cast<size_t>(s), c, a, &items, &queue, &done, &retried, &said_busy);
      status[s] = runner.Run(&infos[s]);
      --running;
    });
  }
  {
    ProgressBar bar("evaluate", static_cast<int64_t>(items.size()));
    while (running.load() > 0) {
      bar.Update(static_cast<int64_t>(done.load()));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    bar.Finish();
  }
  for (auto& t : threads) t.join();
  if (retried.load() > 0) {
    std::fprintf(stderr, "dfc: a server replica went away; %d image(s) were sent again to another replica\n",
                 retried.load());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // A stream-level failure (unknown model, bad token, unreachable) is the command's error.
  // (no stream got as far as the model).
  if (std::all_of(infos.begin(), infos.end(), [](const v1::ModelInfo& i) { return i.arch().empty(); })) {
    for (const grpc::Status& st : status) {
      if (!st.ok()) return ReportRpcError(st);
    }
  }
  for (Item& item : items) {
    if (!item.done) item.error = "not sent: every stream ended before it";
  }
  v1::ModelInfo info;
  for (const auto& i : infos) {
    if (!i.arch().empty()) info = i;
  }

  return Summarise(c, a, items, classes, info, seconds, retried.load());
}

struct ImportArgs {
  std::string name, arch, weights;
  bool replace = false;
};

int RunImport(ClientArgs& c, const ImportArgs& a) {
  {
    v1::ImportModelRequest named;
    named.mutable_header()->set_name(a.name);
    named.mutable_header()->set_arch(a.arch);
    if (absl::Status st = CheckUtf8Strings(named); !st.ok()) return ReportError(st);
  }
  auto weights_error = [](const absl::Status& st) {
    return ReportError(absl::Status(st.code(), absl::StrCat("--weights: ", st.message())));
  };
  auto file = OpenToRead(a.weights);
  if (!file.ok()) return weights_error(file.status());
  auto size = RegularFileSize(a.weights);
  if (!size.ok()) return weights_error(size.status());
  std::FILE* f = file->get();
  // The digest first (a second read of the file): the server checks what it
  // received against it and records it, for users to compare with sha256sum.
  std::vector<char> buf(1 << 20);
  Sha256 digest;
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), f)) > 0;) digest.Update(buf.data(), n);
  std::rewind(f);
  auto channel = OpenServerChannel(c);
  if (!channel.ok()) return ReportError(channel.status());
  auto stub = v1::EvaluationService::NewStub(*channel);
  // A generous deadline: a ResNet-50 .h5 is ~100 MB.
  auto ctx = MakeContext(c.security, std::chrono::seconds(600));
  v1::ModelInfo info;
  auto writer = stub->ImportModel(ctx.get(), &info);
  v1::ImportModelRequest req;
  auto* h = req.mutable_header();
  h->set_name(a.name);
  h->set_arch(a.arch);
  h->set_replace(a.replace);
  h->set_size_bytes(*size);
  h->set_sha256(digest.HexDigest());
  bool ok = writer->Write(req);
  while (ok) {
    const size_t n = std::fread(buf.data(), 1, buf.size(), f);
    if (n == 0) break;
    req.set_chunk(buf.data(), n);
    ok = writer->Write(req);
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (!st.ok()) return ReportRpcError(st);
  if (c.json) std::printf("%s\n", ToJson(info).c_str());
  else std::printf("imported %s: %s, %s, %lld bytes, sha256 %s\n", info.name().c_str(), info.arch().c_str(),
                   info.format().c_str(), static_cast<long long>(info.size_bytes()), info.sha256().c_str());
  return kExitOk;
}

int RunModels(ClientArgs& c) {
  auto channel = OpenServerChannel(c);
  if (!channel.ok()) return ReportError(channel.status());
  auto stub = v1::EvaluationService::NewStub(*channel);
  auto ctx = MakeContext(c.security);
  v1::ListModelsResponse resp;
  grpc::Status st = stub->ListModels(ctx.get(), v1::ListModelsRequest(), &resp);
  if (!st.ok()) return ReportRpcError(st);
  if (c.json) {
    std::printf("%s\n", ToJson(resp).c_str());
    return kExitOk;
  }
  std::printf("%-24s %-17s %-10s %12s  %-12s  %s\n", "NAME", "ARCH", "FORMAT", "BYTES", "SHA-256", "ON THIS REPLICA");
  for (const auto& m : resp.models()) {
    std::string state = m.state() == v1::MODEL_LOADED    ? "loaded"
                        : m.state() == v1::MODEL_LOADING ? "loading"
                        : m.state() == v1::MODEL_FAILED  ? absl::StrCat("failed: ", m.load_error())
                                                         : "not loaded";
    std::printf("%-24s %-17s %-10s %12lld  %-12s  %s\n", ForTerminal(m.name()).c_str(), m.arch().c_str(), m.format().c_str(),
                static_cast<long long>(m.size_bytes()), m.sha256().substr(0, 12).c_str(), ForTerminal(state).c_str());
  }
  std::printf("(replica %s: %lld stream(s), %lld image(s) served)\n", resp.replica().c_str(),
              static_cast<long long>(resp.streams_served()), static_cast<long long>(resp.images_served()));
  return kExitOk;
}

}  // namespace

void AddEvaluateCommands(CLI::App& app, RunFn* run, std::shared_ptr<ClientArgs> c) {
  auto e = std::make_shared<EvaluateArgs>();
  CLI::App* eval = app.add_subcommand(
      "evaluate", "Stream images to the evaluation servers and summarise the predictions (accuracy, AUC, confusion)");
  auto* job = eval->add_option("--job", e->job, "Evaluate this job's checkpoint");
  eval->add_option("--checkpoint", e->checkpoint, "latest, best or an epoch number")->needs(job);
  eval->add_option("--model", e->model, "Evaluate an imported model")->excludes(job);
  eval->add_option("paths", e->paths, "Image files or class folders (labels from folder names)")->required();
  eval->add_option("--out", e->out_csv, "Write every prediction as CSV: path,label,p_real,logit,error");
  eval->add_option("--concurrency", e->concurrency, "Streams to open (spread over the server replicas)")
      ->check(CLI::Range(1, 256));
  eval->add_option("--validation-split", e->validation_split,
                   "Only the Keras validation split of each class folder (as `dfc shard` held it out)")
      ->check(CLI::Range(0.0, 1.0));
  eval->add_flag("--validation-from-end", e->validation_from_end, "The split is the end of each class");
  eval->add_option("--timeout", e->timeout_s, "Give up after this many seconds")->check(CLI::Range(1, 604800));
  eval->add_option("--stall-timeout", e->stall_timeout_s,
                   "Give a replica up when it answers nothing for this many seconds with images outstanding "
                   "(frozen, a hung GPU), its images going to another replica; and give up when every replica stays busy "
                   "(at its limit of open streams) for this long")
      ->check(CLI::Range(1, 86400));
  eval->add_option("--max-in-flight", e->max_in_flight,
                   "Unanswered images per stream: a slow replica holds at most this many, the rest go to whichever "
                   "answers, and a replica that dies leaves at most this many per stream to send again")
      ->check(CLI::Range(1, 100000));
  eval->add_flag("--json", c->json, "Print the summary as JSON");
  AddServerOption(eval, c.get());
  eval->callback([run, c, e] { *run = [c, e] { return RunEvaluate(*c, *e); }; });

  auto i = std::make_shared<ImportArgs>();
  CLI::App* imp = app.add_subcommand("import", "Register Keras .h5 weights or a DFC checkpoint as a named model");
  imp->add_option("--name", i->name, "Model name")->required();
  imp->add_option("--model", i->arch, "Architecture")->required()->check(CLI::IsMember(KnownModels()));
  imp->add_option("--weights", i->weights, "Weights file")->required();
  imp->add_flag("--replace", i->replace, "Overwrite a model of that name");
  imp->add_flag("--json", c->json, "Print the model as JSON");
  AddServerOption(imp, c.get());
  imp->callback([run, c, i] { *run = [c, i] { return RunImport(*c, *i); }; });

  CLI::App* models = app.add_subcommand("models", "List imported models");
  models->add_flag("--json", c->json, "Machine-readable output");
  AddServerOption(models, c.get());
  models->callback([run, c] { *run = [c] { return RunModels(*c); }; });
}

}  // namespace dfc
