#include "data_shards/dataset_scan.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dfc {
namespace fs = std::filesystem;

bool HasImageExtension(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* ext : {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff"}) {
    const size_t n = std::char_traits<char>::length(ext);
    if (lower.size() >= n && lower.compare(lower.size() - n, n, ext) == 0) return true;
  }
  return false;
}

namespace {

absl::StatusOr<std::vector<std::string>> SortedSubdirs(const fs::path& dir) {
  std::error_code ec;
  std::vector<std::string> out;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;  // a dangling link, or one to itself, is no folder
    if (it->is_directory(type_ec)) out.push_back(it->path().filename().string());
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list '", dir.string(), "': ", ec.message()));
  std::sort(out.begin(), out.end());
  return out;
}

// The folders a scan has listed, by identity (device, inode), with the path
// that first reached each.
using SeenFolders = std::map<std::pair<dev_t, ino_t>, fs::path>;

// Records `dir` as listed. Symbolic links to folders are followed (a class
// folder may live elsewhere), so a folder can be reached twice: through a
// loop (df/up -> ..) or two links to one folder (real -> df). Listing it
// again would count its images twice, under whichever class each path
// names, and they would land on both sides of the validation split.
absl::Status Visit(const fs::path& dir, SeenFolders* seen) {
  struct stat sb;
  if (::stat(dir.c_str(), &sb) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot read '", dir.string(), "': ", std::strerror(errno)));
  }
  const auto [it, fresh] = seen->emplace(std::make_pair(sb.st_dev, sb.st_ino), dir);
  if (!fresh) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", it->second.string(), "' and '", dir.string(),
        "' are the same folder (a symbolic link loop, or two links to one folder): its images would be listed "
        "twice; remove the link"));
  }
  return absl::OkStatus();
}

// Keras walks os.walk sorted by directory path, files sorted by name.
absl::Status ListImagesRecursive(const fs::path& class_dir, SeenFolders* seen, std::vector<fs::path>* out) {
  std::vector<fs::path> files;
  std::vector<fs::path> pending{class_dir};  // depth first, subfolders in name order
  while (!pending.empty()) {
    const fs::path dir = std::move(pending.back());
    pending.pop_back();
    if (absl::Status st = Visit(dir, seen); !st.ok()) return st;
    std::error_code ec;
    std::vector<fs::path> subdirs;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code type_ec;  // a dangling link is neither
      if (it->is_directory(type_ec)) {
        subdirs.push_back(it->path());
      } else if (it->is_regular_file(type_ec) && HasImageExtension(it->path().filename().string())) {
        files.push_back(it->path());
      }
    }
    if (ec) return absl::NotFoundError(absl::StrCat("cannot list '", dir.string(), "': ", ec.message()));
    std::sort(subdirs.rbegin(), subdirs.rend());
    for (fs::path& d : subdirs) pending.push_back(std::move(d));
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    const std::string da = a.parent_path().string(), db = b.parent_path().string();
    if (da != db) return da < db;
    return a.filename().string() < b.filename().string();
  });
  out->insert(out->end(), files.begin(), files.end());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SourceImage>> ListClassTree(const std::string& root, std::vector<std::string>* classes,
                                                       SeenFolders* seen) {
  const fs::path base(root);
  std::error_code ec;
  if (!fs::is_directory(base, ec)) {
    return absl::NotFoundError(absl::StrCat("dataset folder '", root, "' does not exist"));
  }
  if (absl::Status st = Visit(base, seen); !st.ok()) return st;
  auto found = SortedSubdirs(base);
  if (!found.ok()) return found.status();
  if (classes->empty()) {
    *classes = *found;
  } else if (*found != *classes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "class folders of '", root, "' are [", absl::StrJoin(*found, ", "),
        "] but the dataset's classes are [", absl::StrJoin(*classes, ", "), "]"));
  }
  if (classes->size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", root, "' needs at least two class folders (found ", classes->size(), ")"));
  }
  std::vector<SourceImage> images;
  for (size_t c = 0; c < classes->size(); ++c) {
    std::vector<fs::path> files;
    const fs::path class_dir = base / (*classes)[c];
    if (absl::Status st = ListImagesRecursive(class_dir, seen, &files); !st.ok()) return st;
    for (const fs::path& f : files) {
      images.push_back({f.string(), f.lexically_relative(base).string(), static_cast<int>(c)});
    }
  }
  return images;
}

}  // namespace


absl::StatusOr<std::vector<SourceImage>> ListClassFolders(const std::string& root,
                                                          std::vector<std::string>* classes) {
  SeenFolders seen;
  return ListClassTree(root, classes, &seen);
}

std::vector<bool> KerasValidationMask(const std::vector<int32_t>& labels, int num_classes, double fraction,
                                      bool from_end) {
  std::vector<size_t> count(static_cast<size_t>(num_classes), 0), seen(static_cast<size_t>(num_classes), 0);
  for (int32_t l : labels) count[static_cast<size_t>(l)]++;
  std::vector<bool> mask(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    const size_t c = static_cast<size_t>(labels[i]);
    // Keras: start, stop = int(split[0] * n), int(split[1] * n) with
    // validation = (0, F) and training = (F, 1).
    const size_t n = count[c], num_val = static_cast<size_t>(fraction * static_cast<double>(n));
    const size_t k = seen[c]++;
    mask[i] = from_end ? k >= n - num_val : k < num_val;
  }
  return mask;
}

void SplitLikeKeras(const std::vector<SourceImage>& all, int num_classes, double fraction, bool from_end,
                    std::vector<SourceImage>* train, std::vector<SourceImage>* validation) {
  std::vector<int32_t> labels;
  for (const SourceImage& img : all) labels.push_back(img.label);
  const std::vector<bool> is_val = KerasValidationMask(labels, num_classes, fraction, from_end);
  for (int c = 0; c < num_classes; ++c) {  // class by class, as Keras lists them
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i].label == c) (is_val[i] ? validation : train)->push_back(all[i]);
    }
  }
}

absl::StatusOr<ScannedDataset> ScanDataset(const std::string& root, const ScanOptions& options) {
  const fs::path base(root);
  std::error_code ec;
  if (!fs::is_directory(base, ec)) {
    return absl::NotFoundError(absl::StrCat("dataset folder '", root, "' does not exist"));
  }
  if (options.validation_split >= 1.0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--validation-split must be in [0, 1), got ", options.validation_split));
  }
  ScannedDataset ds;
  fs::path train_dir = base;
  for (const char* name : {"train:test", "train"}) {
    if (fs::is_directory(base / name, ec)) {
      train_dir = base / name;
      break;
    }
  }
  const bool has_validation_dir = train_dir != base && fs::is_directory(base / "validation", ec);
  SeenFolders seen;  // shared by both splits: no folder may feed both
  auto all = ListClassTree(train_dir.string(), &ds.classes, &seen);
  if (!all.ok()) return all.status();

  double fraction = options.validation_split;
  if (fraction < 0) fraction = has_validation_dir ? 0.0 : 0.2;
  ds.train_source = train_dir.lexically_relative(base).string();
  if (has_validation_dir) {
    if (fraction > 0) {
      return absl::InvalidArgumentError(
          "--validation-split given but the dataset has a validation/ folder; use one or the other");
    }
    ds.train = std::move(*all);
    auto val = ListClassTree((base / "validation").string(), &ds.classes, &seen);
    if (!val.ok()) return val.status();
    ds.validation = std::move(*val);
    // Paths relative to the dataset root, so both splits read the same way.
    for (SourceImage& img : ds.validation) img.relative_path = "validation/" + img.relative_path;
    ds.validation_source = "validation";
  } else {
    SplitLikeKeras(*all, static_cast<int>(ds.classes.size()), fraction,
                   options.validation_from_end, &ds.train, &ds.validation);
    ds.validation_source = absl::StrCat("validation_split=", fraction, " of ", ds.train_source);
  }
  if (train_dir != base) {
    for (SourceImage& img : ds.train) img.relative_path = ds.train_source + "/" + img.relative_path;
  }
  if (ds.train.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no training images found under '", root, "'"));
  }
  return ds;
}

}  // namespace dfc
