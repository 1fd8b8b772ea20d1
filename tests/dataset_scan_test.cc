#include "data_shards/dataset_scan.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace dfc {
namespace {

std::vector<std::string> Names(const std::vector<SourceImage>& v) {
  std::vector<std::string> out;
  for (const auto& s : v) out.push_back(s.relative_path);
  return out;
}

TEST(DatasetScanTest, ClassesSortedAndKerasSplitTakesFirstFraction) {
  testing::TempDir dir;
  // Names chosen so that byte order differs from "natural" order.
  for (const char* f : {"b/a10.jpg", "b/a2.jpg", "b/a1.jpg", "b/a3.png", "b/a4.JPG", "a/x.jpg", "a/y.jpg", "a/z.jpeg",
                        "a/w.jpg", "a/v.jpg", "a/notes.txt"}) {
    testing::WriteFileOrDie(dir.Join(f), "x");
  }
  ScanOptions opt;
  opt.validation_split = 0.4;
  auto ds = ScanDataset(dir.path(), opt);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->classes, (std::vector<std::string>{"a", "b"}));
  // Keras: per class, files sorted, validation = [0, int(0.4 * 5)) = first 2.
  EXPECT_EQ(Names(ds->validation), (std::vector<std::string>{"a/v.jpg", "a/w.jpg", "b/a1.jpg", "b/a10.jpg"}));
  EXPECT_EQ(Names(ds->train),
            (std::vector<std::string>{"a/x.jpg", "a/y.jpg", "a/z.jpeg", "b/a2.jpg", "b/a3.png", "b/a4.JPG"}));
  EXPECT_EQ(ds->train[0].label, 0);
  EXPECT_EQ(ds->train[3].label, 1);

  opt.validation_from_end = true;
  auto end = ScanDataset(dir.path(), opt);
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(Names(end->validation), (std::vector<std::string>{"a/y.jpg", "a/z.jpeg", "b/a3.png", "b/a4.JPG"}));
}

TEST(DatasetScanTest, SplitRoundsDownLikeKeras) {
  std::vector<SourceImage> all;
  for (int i = 0; i < 7; ++i) all.push_back({"p", std::to_string(i), 0});
  std::vector<SourceImage> train, val;
  SplitLikeKeras(all, 1, 0.2, false, &train, &val);  // int(1.4) = 1
  EXPECT_EQ(val.size(), 1u);
  EXPECT_EQ(train.size(), 6u);
  EXPECT_EQ(val[0].relative_path, "0");
}

TEST(DatasetScanTest, MesoNetLayoutWithColonFolderName) {
  testing::TempDir dir;
  for (const char* f : {"train:test/df/1.jpg", "train:test/df/2.jpg", "train:test/real/1.jpg", "validation/df/9.jpg",
                        "validation/real/8.jpg", "validation/real/7.jpg"}) {
    testing::WriteFileOrDie(dir.Join(f), "x");
  }
  auto ds = ScanDataset(dir.path(), {});
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->classes, (std::vector<std::string>{"df", "real"}));
  EXPECT_EQ(ds->train.size(), 3u);  // all of train:test: the validation folder is the validation split
  EXPECT_EQ(Names(ds->validation),
            (std::vector<std::string>{"validation/df/9.jpg", "validation/real/7.jpg", "validation/real/8.jpg"}));
  EXPECT_EQ(ds->train[0].relative_path, "train:test/df/1.jpg");

  ScanOptions both;
  both.validation_split = 0.2;
  auto conflict = ScanDataset(dir.path(), both);
  ASSERT_FALSE(conflict.ok());
  EXPECT_NE(conflict.status().message().find("validation/"), std::string::npos);
}

TEST(DatasetScanTest, ErrorsNameWhatIsWrong) {
  auto missing = ScanDataset("/nonexistent/dfc-data", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/dfc-data"), std::string::npos);

  testing::TempDir one_class;
  testing::WriteFileOrDie(one_class.Join("only/1.jpg"), "x");
  auto r = ScanDataset(one_class.path(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("two class folders"), std::string::npos);

  testing::TempDir mismatch;
  for (const char* f : {"train/a/1.jpg", "train/b/1.jpg", "validation/a/1.jpg", "validation/c/1.jpg"}) {
    testing::WriteFileOrDie(mismatch.Join(f), "x");
  }
  auto m = ScanDataset(mismatch.path(), {});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("[a, c]"), std::string::npos) << m.status();
}

// Linked folders are followed once; a folder reached twice is refused, naming
// both paths, instead of listing its images again (a loop df/up -> .. made 4
// images 164, real ones among them labelled df, on both sides of the split).
TEST(DatasetScanTest, LinkedFoldersAreListedOnceAndAFolderReachedTwiceIsRefused) {
  testing::TempDir elsewhere, dir;
  testing::WriteFileOrDie(elsewhere.Join("more/3.jpg"), "x");
  for (const char* f : {"df/1.jpg", "df/sub/2.jpg", "real/1.jpg"}) testing::WriteFileOrDie(dir.Join(f), "x");
  std::filesystem::create_symlink(elsewhere.Join("more"), dir.Join("df/more"));
  std::filesystem::create_symlink("self", dir.Join("self"));  // ELOOP: neither a class nor an image
  std::filesystem::create_symlink("self.jpg", dir.Join("df/self.jpg"));
  ScanOptions opt;
  opt.validation_split = 0;
  auto ds = ScanDataset(dir.path(), opt);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(Names(ds->train), (std::vector<std::string>{"df/1.jpg", "df/more/3.jpg", "df/sub/2.jpg", "real/1.jpg"}));

  std::filesystem::create_symlink("..", dir.Join("df/sub/up"));
  auto loop = ScanDataset(dir.path(), opt);
  ASSERT_FALSE(loop.ok());
  EXPECT_EQ(loop.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string df_and_up = "'" + dir.Join("df") + "' and '" + dir.Join("df/sub/up") + "' are the same folder";
  EXPECT_NE(loop.status().message().find(df_and_up), std::string::npos) << loop.status();
  std::vector<std::string> classes;
  EXPECT_FALSE(ListClassFolders(dir.path(), &classes).ok());  // what dfc evaluate lists
  std::filesystem::remove(dir.Join("df/sub/up"));

  std::filesystem::create_symlink(dir.Join("real"), dir.Join("df/real-too"));
  auto twice = ScanDataset(dir.path(), opt);
  ASSERT_FALSE(twice.ok());
  const std::string link_and_real = "'" + dir.Join("df/real-too") + "' and '" + dir.Join("real") + "' are the same";
  EXPECT_NE(twice.status().message().find(link_and_real), std::string::npos) << twice.status();
  std::filesystem::remove(dir.Join("df/real-too"));

  // validation/ linked to the training folder would validate on training images.
  testing::TempDir split;
  for (const char* f : {"train/a/1.jpg", "train/b/1.jpg"}) testing::WriteFileOrDie(split.Join(f), "x");
  std::filesystem::create_symlink("train", split.Join("validation"));
  auto both = ScanDataset(split.path(), {});
  ASSERT_FALSE(both.ok());
  const std::string train_and_val = "'" + split.Join("train") + "' and '" + split.Join("validation") + "' are the same";
  EXPECT_NE(both.status().message().find(train_and_val), std::string::npos) << both.status();
}

}  // namespace
}  // namespace dfc
