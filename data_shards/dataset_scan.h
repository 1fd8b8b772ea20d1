#ifndef DFC_DATA_SHARDS_DATASET_SCAN_H_
#define DFC_DATA_SHARDS_DATASET_SCAN_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// One source image: absolute path, path relative to the dataset root (what
// manifests and errors show), and its class index.
struct SourceImage {
  std::string path;
  std::string relative_path;
  int label = 0;
};

// A class-folder dataset split into training and validation, Keras style.
struct ScannedDataset {
  std::vector<std::string> classes;  // sorted by name; index = label
  std::vector<SourceImage> train;
  std::vector<SourceImage> validation;
  // Where each split came from, for the manifest ("train:test", "validation",
  // or "validation_split=0.2 of ...").
  std::string train_source;
  std::string validation_source;
};

// Options for ScanDataset.
struct ScanOptions {
  // Fraction of each class held out as validation, as Keras's
  // ImageDataGenerator(validation_split=F): per class, files sorted by path,
  // the first int(F * n) are validation. Negative means "default": 0.2 when
  // the dataset has no validation folder, 0 when it has one.
  double validation_split = -1;
  // Take the held-out fraction from the end of each class instead of the
  // start (Keras takes the start).
  bool validation_from_end = false;
};

// Scans a dataset root. Accepted layouts:
//   ROOT/<class>/...                      (split by validation_split)
//   ROOT/{train:test|train}/<class>/...   [+ ROOT/validation/<class>/...]
// Class folders are sorted by name (Keras flow_from_directory); files are
// found recursively with Keras's extensions (png jpg jpeg bmp ppm tif tiff).
// Symbolic links to folders are followed, but a folder reached twice (a link
// loop, two links to one folder, validation/ linked to the training folder)
// is an INVALID_ARGUMENT naming both paths: its images would be counted
// twice, under two classes or on both sides of the split.
absl::StatusOr<ScannedDataset> ScanDataset(const std::string& root, const ScanOptions& options);

// Whether a file name has one of Keras's image extensions (png jpg jpeg bmp
// ppm tif tiff, any case).
bool HasImageExtension(const std::string& name);

// Lists one class-folder tree (ROOT/<class>/...), with the given class list
// or, when empty, the sorted folder names; folders reached twice as above.
absl::StatusOr<std::vector<SourceImage>> ListClassFolders(const std::string& root,
                                                          std::vector<std::string>* classes);

// Keras validation_split over items in class-then-name order: element i is
// validation when it falls in the held-out fraction of its class (the first
// int(F * n) of the class, or the last with `from_end`).
std::vector<bool> KerasValidationMask(const std::vector<int32_t>& labels, int num_classes, double fraction,
                                      bool from_end);

// Keras split of one class-sorted list: returns {train, validation}.
void SplitLikeKeras(const std::vector<SourceImage>& all, int num_classes, double fraction,
                    bool from_end, std::vector<SourceImage>* train,
                    std::vector<SourceImage>* validation);

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_DATASET_SCAN_H_
