#include "data_shards/shard_format.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/checksum.h"
#include "common/dir_lock.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

void PutU32(std::string* out, uint32_t v) {
  char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
               static_cast<char>(v >> 24)};
  out->append(b, 4);
}

uint32_t GetU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{u[0]} | (uint32_t{u[1]} << 8) | (uint32_t{u[2]} << 16) | (uint32_t{u[3]} << 24);
}

const char* FormatName(RecordFormat f) { return f == RecordFormat::kRgb8 ? "rgb8" : "encoded"; }

absl::Status PreadAll(int fd, char* buf, size_t n, uint64_t offset, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, buf + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return absl::InternalError(absl::StrCat("cannot read ", what, ": ", std::strerror(errno)));
    if (r == 0) return absl::DataLossError(absl::StrCat(what, " is truncated at offset ", offset + done));
    done += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

// Prepared content of one source image, made on a worker thread.
struct Prepared {
  bool ok = false;
  std::string reason;
  std::string record;  // encoded record
  std::string source_bytes;
};

Prepared PrepareOne(const SourceImage& img, const ShardWriterOptions& opt) {
  Prepared p;
  auto bytes = ReadFile(img.path, opt.limits.max_bytes);
  if (!bytes.ok()) {
    p.reason = std::string(bytes.status().message());
    return p;
  }
  auto decoded = DecodeImage(*bytes, opt.limits);
  if (!decoded.ok()) {
    p.reason = std::string(decoded.status().message());
    p.source_bytes = std::move(*bytes);
    return p;
  }
  Record r;
  r.label = img.label;
  r.format = opt.format;
  r.name = img.relative_path;
  if (opt.format == RecordFormat::kRgb8) {
    RgbImage resized = (decoded->width == opt.image_size && decoded->height == opt.image_size)
                           ? std::move(*decoded)
                           : ResizeNearestExact(*decoded, opt.image_size);
    r.width = resized.width;
    r.height = resized.height;
    r.payload.assign(resized.pixels.begin(), resized.pixels.end());
  } else {
    r.width = decoded->width;
    r.height = decoded->height;
    r.payload = *bytes;
  }
  p.record = EncodeRecord(r);
  p.source_bytes = std::move(*bytes);
  p.ok = true;
  return p;
}

}  // namespace

int64_t Manifest::Count(const std::string& split) const {
  auto it = counts.find(split);
  if (it == counts.end()) return 0;
  int64_t n = 0;
  for (int64_t c : it->second) n += c;
  return n;
}

std::string ManifestToJson(const Manifest& m) {
  // Names from the dataset's file system need not be UTF-8; JSON must be.
  std::vector<std::string> classes;
  for (const std::string& c : m.classes) classes.push_back(ValidUtf8(c));
  nlohmann::ordered_json j;
  j["format"] = "dfc-shards";
  j["version"] = m.version;
  j["classes"] = classes;
  j["image_size"] = m.image_size;
  j["record_format"] = FormatName(m.record_format);
  j["source"] = {{"path", ValidUtf8(m.source_path)},
                 {"content_hash", m.source_hash},
                 {"train", ValidUtf8(m.train_source)},
                 {"validation", ValidUtf8(m.validation_source)}};
  nlohmann::ordered_json counts = nlohmann::ordered_json::object();
  for (const auto& [split, per_class] : m.counts) counts[split] = per_class;
  j["counts"] = counts;
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const ShardInfo& s : m.shards) {
    shards.push_back({{"file", s.file},
                      {"split", s.split},
                      {"records", s.records},
                      {"bytes", s.bytes},
                      {"crc32c", s.crc32c},
                      {"per_class", s.per_class}});
  }
  j["shards"] = shards;
  nlohmann::ordered_json skipped = nlohmann::ordered_json::array();
  for (const auto& [path, reason] : m.skipped) skipped.push_back({{"path", ValidUtf8(path)}, {"reason", ValidUtf8(reason)}});
  j["skipped"] = skipped;
  return j.dump(2);
}

namespace {

// A manifest number that is not a JSON integer in range of its field. (The
// library's own get<int>() converts a float such as 2e19 with a cast whose
// result is undefined.)
struct BadManifestField : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
T Int(const nlohmann::json& v, const char* what) {
  using Limits = std::numeric_limits<T>;
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() <= static_cast<uint64_t>(Limits::max())) return static_cast<T>(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i >= static_cast<int64_t>(Limits::min()) &&
        (i < 0 || static_cast<uint64_t>(i) <= static_cast<uint64_t>(Limits::max()))) {
      return static_cast<T>(i);
    }
  }
  throw BadManifestField(absl::StrCat("manifest: ", what, " must be an integer from ", Limits::min(), " to ",
                                      Limits::max(), ", not ", v.dump()));
}

// A count: an integer >= 0.
int64_t Count(const nlohmann::json& v, const char* what) {
  const auto n = Int<int64_t>(v, what);
  if (n < 0) throw BadManifestField(absl::StrCat("manifest: ", what, " is negative (", n, ")"));
  return n;
}

// A list of counts.
std::vector<int64_t> Counts(const nlohmann::json& v, const char* what) {
  if (!v.is_array()) throw BadManifestField(absl::StrCat("manifest: ", what, " must be a list of counts"));
  std::vector<int64_t> out;
  for (const auto& e : v) out.push_back(Count(e, what));
  return out;
}

// A record's label indexes the manifest's classes.
absl::Status CheckLabel(int32_t label, const Manifest& m) {
  if (label < 0 || static_cast<size_t>(label) >= m.classes.size()) {
    return absl::DataLossError(
        absl::StrCat("record has label ", label, " but the manifest has ", m.classes.size(), " classes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Manifest> ManifestFromJson(const std::string& text) {
  Manifest m;
  try {
    auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != "dfc-shards") {
      return absl::InvalidArgumentError("manifest: 'format' is not dfc-shards");
    }
    m.version = Int<int>(j.at("version"), "version");
    if (m.version != 1) return absl::InvalidArgumentError(absl::StrCat("manifest: unsupported version ", m.version));
    m.classes = j.at("classes").get<std::vector<std::string>>();
    m.image_size = Int<int>(j.at("image_size"), "image_size");
    const std::string fmt = j.at("record_format").get<std::string>();
    if (fmt == "encoded") m.record_format = RecordFormat::kEncoded;
    else if (fmt == "rgb8") m.record_format = RecordFormat::kRgb8;
    else return absl::InvalidArgumentError(absl::StrCat("manifest: unknown record_format '", fmt, "'"));
    const auto& src = j.at("source");
    m.source_path = src.value("path", "");
    m.source_hash = src.value("content_hash", "");
    m.train_source = src.value("train", "");
    m.validation_source = src.value("validation", "");
    for (const auto& [split, per_class] : j.at("counts").items()) {
      m.counts[split] = Counts(per_class, "counts");
    }
    for (const auto& s : j.at("shards")) {
      ShardInfo info;
      info.file = s.at("file").get<std::string>();
      if (info.file.empty() || info.file.find('/') != std::string::npos || info.file == "..") {
        return absl::InvalidArgumentError(absl::StrCat("manifest: bad shard file name '", info.file, "'"));
      }
      info.split = s.at("split").get<std::string>();
      info.records = Count(s.at("records"), "a shard's records");
      info.bytes = Count(s.at("bytes"), "a shard's bytes");
      info.crc32c = Int<uint32_t>(s.at("crc32c"), "a shard's crc32c");
      info.per_class = Counts(s.at("per_class"), "a shard's per_class");
      m.shards.push_back(std::move(info));
    }
    for (const auto& s : j.value("skipped", nlohmann::json::array())) {
      m.skipped.emplace_back(s.at("path").get<std::string>(), s.at("reason").get<std::string>());
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("manifest is not valid: ", e.what()));
  } catch (const BadManifestField& e) {
    return absl::InvalidArgumentError(e.what());
  }
  if (m.image_size <= 0 || m.image_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("manifest: image_size ", m.image_size, " out of range"));
  }
  return m;
}

absl::StatusOr<Manifest> ReadManifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestFile).string();
  auto text = ReadFile(path, 256u << 20);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat("'", dir, "' is not a shard directory: no ", kManifestFile,
                                              " (make one with `dfc shard`)"));
    }
    return text.status();
  }
  return ManifestFromJson(*text);
}

std::string EncodeRecord(const Record& r) {
  std::string body;
  body.reserve(20 + r.name.size() + r.payload.size());
  PutU32(&body, static_cast<uint32_t>(r.label));
  PutU32(&body, static_cast<uint32_t>(r.format));
  PutU32(&body, static_cast<uint32_t>(r.width));
  PutU32(&body, static_cast<uint32_t>(r.height));
  PutU32(&body, static_cast<uint32_t>(r.name.size()));
  body += r.name;
  body += r.payload;
  std::string out;
  out.reserve(kRecordHeaderBytes + body.size());
  PutU32(&out, kRecordMagic);
  PutU32(&out, static_cast<uint32_t>(body.size()));
  PutU32(&out, Crc32c(body));
  out += body;
  return out;
}

absl::StatusOr<Record> DecodeRecordBody(const char* body, size_t size) {
  if (size < 20) return absl::DataLossError("record body shorter than its fixed fields");
  Record r;
  r.label = static_cast<int32_t>(GetU32(body));
  uint32_t fmt = GetU32(body + 4);
  if (fmt > 1) return absl::DataLossError(absl::StrCat("record has unknown format ", fmt));
  r.format = static_cast<RecordFormat>(fmt);
  r.width = static_cast<int32_t>(GetU32(body + 8));
  r.height = static_cast<int32_t>(GetU32(body + 12));
  uint32_t name_len = GetU32(body + 16);
  if (name_len > size - 20) return absl::DataLossError("record name runs past its body");
  r.name.assign(body + 20, name_len);
  r.payload.assign(body + 20 + name_len, size - 20 - name_len);
  if (r.format == RecordFormat::kRgb8) {
    if (r.width <= 0 || r.height <= 0 || r.width > (1 << 30) || r.height > (1 << 30)) {
      return absl::DataLossError(absl::StrCat("rgb8 record has a bad size ", r.width, "x", r.height));
    }
    if (r.payload.size() != static_cast<size_t>(r.width) * static_cast<size_t>(r.height) * 3) {
      return absl::DataLossError("rgb8 record size does not match its width and height");
    }
  }
  return r;
}

absl::StatusOr<Manifest> WriteShards(const ScannedDataset& dataset, const std::string& source_root,
                                     const ShardWriterOptions& opt) {
  if (opt.image_size < 8 || opt.image_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("--image-size must be in [8, 4096], got ", opt.image_size));
  }
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create '", opt.out_dir, "': ", ec.message()));
  // One writer per directory: two runs on one --out both "succeeded", their
  // records interleaved in the same shard files under one run's manifest.
  // Taken before the manifest is looked for, so a run that comes after
  // another has ended finds its manifest. Removed at the end: one that opened
  // the file before then takes an unlinked file's lock, and finds the manifest.
  const std::string lock_path = (fs::path(opt.out_dir) / kShardLockFile).string();
  auto lock = TryLockFile(lock_path, LockMode::kExclusive, absl::StrCat("dfc shard (", ThisProcess(), ")"));
  if (absl::IsFailedPrecondition(lock.status())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--out: '", opt.out_dir, "' is being written by ", lock.status().message(), "; two runs would interleave "
        "their records in one set of shard files: wait for it to end, or write elsewhere"));
  }
  if (absl::IsPermissionDenied(lock.status())) return lock.status();
  if (!lock.ok()) std::fprintf(stderr, "dfc: %s; going on without it\n", std::string(lock.status().message()).c_str());
  struct Unlock {
    int fd;
    std::string path;
    ~Unlock() {
      if (fd < 0) return;
      ::unlink(path.c_str());
      ::close(fd);
    }
  } unlock{lock.ok() ? *lock : -1, lock_path};
  if (fs::exists(fs::path(opt.out_dir) / kManifestFile, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("'", opt.out_dir, "' already holds shards (", kManifestFile,
                                                 " exists); choose an empty directory"));
  }
  Manifest m;
  m.classes = dataset.classes;
  m.image_size = opt.image_size;
  m.record_format = opt.format;
  m.source_path = fs::absolute(source_root).lexically_normal().string();
  m.train_source = dataset.train_source;
  m.validation_source = dataset.validation_source;
  Fnv1a64 hash;
  const int64_t total = static_cast<int64_t>(dataset.train.size() + dataset.validation.size());
  int64_t done = 0;
  const int threads = std::max(1, opt.threads);

  // Named variables, not a structured binding: the lambdas below capture
  // them, which C++17 allows only for variables (clang refuses the binding).
  for (const auto& entry : {std::pair<std::string, const std::vector<SourceImage>*>{"train", &dataset.train},
                            {"validation", &dataset.validation}}) {
    const std::string& split = entry.first;
    const std::vector<SourceImage>* images = entry.second;
    m.counts[split] = std::vector<int64_t>(m.classes.size(), 0);
    int shard_index = 0;
    int fd = -1;
    ShardInfo cur;
    uint32_t file_crc = 0;
    auto close_shard = [&]() -> absl::Status {
      if (fd < 0) return absl::OkStatus();
      bool ok = ::fsync(fd) == 0;
      ::close(fd);
      fd = -1;
      if (!ok) return absl::InternalError(absl::StrCat("cannot sync shard ", cur.file));
      cur.crc32c = file_crc;
      m.shards.push_back(cur);
      return absl::OkStatus();
    };
    auto open_shard = [&]() -> absl::Status {
      cur = ShardInfo();
      cur.file = absl::StrFormat("%s-%05d.dfcs", split, shard_index++);
      cur.split = split;
      cur.per_class.assign(m.classes.size(), 0);
      const std::string path = (fs::path(opt.out_dir) / cur.file).string();
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
      if (::write(fd, kShardMagic, kShardHeaderBytes) != static_cast<ssize_t>(kShardHeaderBytes)) {
        return absl::InternalError(absl::StrCat("cannot write ", path));
      }
      file_crc = Crc32c(kShardMagic, kShardHeaderBytes);
      cur.bytes = kShardHeaderBytes;
      return absl::OkStatus();
    };

    constexpr size_t kChunk = 256;
    for (size_t begin = 0; begin < images->size(); begin += kChunk) {
      const size_t end = std::min(images->size(), begin + kChunk);
      std::vector<Prepared> prepared(end - begin);
      std::atomic<size_t> next{begin};
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&] {
          for (size_t i = next++; i < end; i = next++) prepared[i - begin] = PrepareOne((*images)[i], opt);
        });
      }
      for (auto& th : pool) th.join();
      for (size_t i = begin; i < end; ++i) {
        const SourceImage& img = (*images)[i];
        Prepared& p = prepared[i - begin];
        hash.Update(img.relative_path);
        hash.Update(std::to_string(img.label));
        hash.Update(p.source_bytes);
        if (!p.ok) {
          m.skipped.emplace_back(img.relative_path, p.reason);
        } else {
          const bool full = fd >= 0 && ((opt.max_records_per_shard > 0 && cur.records >= opt.max_records_per_shard) ||
                                        (opt.max_bytes_per_shard > 0 &&
                                         cur.bytes + static_cast<int64_t>(p.record.size()) > opt.max_bytes_per_shard));
          if (full) DFC_RETURN_IF_ERROR(close_shard());
          if (fd < 0) DFC_RETURN_IF_ERROR(open_shard());
          const char* data = p.record.data();
          size_t left = p.record.size();
          while (left > 0) {
            ssize_t w = ::write(fd, data, left);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return absl::InternalError(absl::StrCat("cannot write shard ", cur.file, ": ", std::strerror(errno)));
            data += w;
            left -= static_cast<size_t>(w);
          }
          file_crc = Crc32c(p.record, file_crc);
          cur.bytes += static_cast<int64_t>(p.record.size());
          cur.records++;
          cur.per_class[img.label]++;
          m.counts[split][img.label]++;
        }
        ++done;
        if (opt.progress) opt.progress(done, total);
      }
    }
    DFC_RETURN_IF_ERROR(close_shard());
  }
  m.source_hash = hash.HexDigest();
  DFC_RETURN_IF_ERROR(WriteFileAtomically((fs::path(opt.out_dir) / kManifestFile).string(), ManifestToJson(m)));
  return m;
}

absl::StatusOr<std::unique_ptr<ShardSet>> ShardSet::Open(const std::string& dir) {
  DFC_ASSIGN_OR_RETURN(Manifest m, ReadManifest(dir));
  std::unique_ptr<ShardSet> set(new ShardSet(dir, std::move(m)));
  const Manifest& man = set->manifest_;
  for (uint32_t s = 0; s < man.shards.size(); ++s) {
    const ShardInfo& info = man.shards[s];
    const std::string path = (fs::path(dir) / info.file).string();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return absl::NotFoundError(absl::StrCat("shard '", path, "' listed in the manifest cannot be opened: ",
                                              std::strerror(errno)));
    }
    set->fds_.push_back(fd);
    std::vector<RecordRef> refs;
    // The manifest's count is a claim until the records are found.
    refs.reserve(static_cast<size_t>(std::min<int64_t>(info.records, 1 << 20)));
    char magic[kShardHeaderBytes];
    DFC_RETURN_IF_ERROR(PreadAll(fd, magic, kShardHeaderBytes, 0, path));
    if (std::memcmp(magic, kShardMagic, kShardHeaderBytes) != 0) {
      return absl::DataLossError(absl::StrCat("'", path, "' is not a DFC shard (bad magic)"));
    }
    uint64_t off = kShardHeaderBytes;
    for (int64_t r = 0; r < info.records; ++r) {
      char hdr[kRecordHeaderBytes + 4];
      DFC_RETURN_IF_ERROR(PreadAll(fd, hdr, sizeof(hdr), off, path));
      if (GetU32(hdr) != kRecordMagic) {
        return absl::DataLossError(absl::StrCat("shard ", info.file, " offset ", off,
                                                ": bad record magic (run `dfc shard verify`)"));
      }
      const uint32_t len = GetU32(hdr + 4);
      if (len > kMaxRecordBytes) {
        return absl::DataLossError(absl::StrCat("shard ", info.file, " offset ", off, ": record length ", len,
                                                " is over the limit"));
      }
      // The index's labels are used before any record is read (the notebook
      // recipe splits by them), so they are checked here; Read()'s checksum
      // then covers the same bytes.
      const auto label = static_cast<int32_t>(GetU32(hdr + kRecordHeaderBytes));
      if (absl::Status st = CheckLabel(label, man); !st.ok()) {
        return absl::DataLossError(absl::StrCat("shard ", info.file, " offset ", off, ": ", st.message()));
      }
      refs.push_back({s, off, label});
      off += kRecordHeaderBytes + len;
    }
    set->index_.push_back(std::move(refs));
  }
  return set;
}

ShardSet::~ShardSet() {
  for (int fd : fds_) ::close(fd);
}

std::vector<RecordRef> ShardSet::Records(const std::string& split) const {
  std::vector<RecordRef> out;
  for (size_t s = 0; s < manifest_.shards.size(); ++s) {
    if (manifest_.shards[s].split == split) out.insert(out.end(), index_[s].begin(), index_[s].end());
  }
  return out;
}

absl::StatusOr<Record> ShardSet::Read(const RecordRef& ref) const {
  if (ref.shard >= fds_.size()) return absl::OutOfRangeError(absl::StrCat("no shard ", ref.shard));
  const std::string& file = manifest_.shards[ref.shard].file;
  char hdr[kRecordHeaderBytes];
  DFC_RETURN_IF_ERROR(PreadAll(fds_[ref.shard], hdr, sizeof(hdr), ref.offset, file));
  const uint32_t len = GetU32(hdr + 4);
  if (GetU32(hdr) != kRecordMagic || len > kMaxRecordBytes) {
    return absl::DataLossError(absl::StrCat("shard ", file, " offset ", ref.offset, ": bad record header"));
  }
  std::string body(len, '\0');
  DFC_RETURN_IF_ERROR(PreadAll(fds_[ref.shard], body.data(), len, ref.offset + kRecordHeaderBytes, file));
  if (Crc32c(body) != GetU32(hdr + 8)) {
    return absl::DataLossError(absl::StrCat("shard ", file, " offset ", ref.offset, ": record checksum mismatch"));
  }
  auto rec = DecodeRecordBody(body.data(), body.size());
  if (!rec.ok()) {
    return absl::DataLossError(absl::StrCat("shard ", file, " offset ", ref.offset, ": ", rec.status().message()));
  }
  return rec;
}

absl::StatusOr<VerifyReport> VerifyShards(const std::string& dir) {
  DFC_ASSIGN_OR_RETURN(Manifest m, ReadManifest(dir));
  VerifyReport report;
  auto fail = [&](const std::string& shard, uint64_t off, std::string reason) {
    report.ok = false;
    report.bad_shard = shard;
    report.bad_offset = off;
    report.reason = std::move(reason);
  };
  for (const ShardInfo& info : m.shards) {
    const std::string path = (fs::path(dir) / info.file).string();
    auto data = ReadFile(path, size_t{1} << 34);
    if (!data.ok()) {
      fail(info.file, 0, std::string(data.status().message()));
      return report;
    }
    report.shards_checked++;
    const std::string& d = *data;
    if (d.size() < kShardHeaderBytes || std::memcmp(d.data(), kShardMagic, kShardHeaderBytes) != 0) {
      fail(info.file, 0, "bad shard magic");
      return report;
    }
    uint64_t off = kShardHeaderBytes;
    int64_t n = 0;
    while (off < d.size()) {
      if (d.size() - off < kRecordHeaderBytes) {
        fail(info.file, off, "truncated record header");
        return report;
      }
      if (GetU32(d.data() + off) != kRecordMagic) {
        fail(info.file, off, "bad record magic");
        return report;
      }
      const uint32_t len = GetU32(d.data() + off + 4);
      if (len > d.size() - off - kRecordHeaderBytes) {
        fail(info.file, off, absl::StrCat("record length ", len, " runs past the end of the shard"));
        return report;
      }
      const char* body = d.data() + off + kRecordHeaderBytes;
      if (Crc32c(static_cast<const void*>(body), len) != GetU32(d.data() + off + 8)) {
        fail(info.file, off, "record checksum mismatch");
        return report;
      }
      auto rec = DecodeRecordBody(body, len);
      if (absl::Status st = rec.ok() ? CheckLabel(rec->label, m) : rec.status(); !st.ok()) {
        fail(info.file, off, std::string(st.message()));
        return report;
      }
      report.records_checked++;
      n++;
      off += kRecordHeaderBytes + len;
    }
    if (n != info.records) {
      fail(info.file, off, absl::StrCat("shard holds ", n, " records, manifest says ", info.records));
      return report;
    }
    if (Crc32c(d) != info.crc32c) {
      fail(info.file, 0, "shard checksum does not match the manifest");
      return report;
    }
  }
  return report;
}

}  // namespace dfc
