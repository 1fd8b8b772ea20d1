// common/atomic_file on real file systems: what a reader sees, what a failed
// write leaves, and which errors are permanent (a read-only file system, in a
// private mount namespace) or transient (a full one).
#include "common/atomic_file.h"

#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "common/exit_codes.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

TEST(AtomicFileTest, ReplacesTheWholeFileAndLeavesNoTemporary) {
  testing::TempDir dir;
  const std::string path = dir.Join("f");
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "second, longer").ok());
  auto read = ReadFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "second, longer");
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) entries += e.exists();
  EXPECT_EQ(entries, 1) << "a temporary file was left beside it";

  auto missing = ReadFile(dir.Join("nope"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto big = ReadFile(path, 4);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(big.status().message().find("over the limit of 4"), std::string::npos) << big.status();
  auto into_nowhere = WriteFileAtomically(dir.Join("no/such/dir/f"), "x");
  EXPECT_EQ(into_nowhere.code(), absl::StatusCode::kNotFound) << into_nowhere;
}

// Runs `body` in a child process with `dir` mounted as a small tmpfs (its own
// mount namespace, entered as root or through a user namespace) and returns
// the absl::StatusCode it exits with; -1 where namespaces are not allowed.
int InPrivateTmpfs(const std::string& dir, const std::string& options, unsigned long flags,
                   absl::Status (*body)(const std::string& dir)) {
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::unshare(CLONE_NEWNS) != 0) {
      if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) ::_exit(100);
      std::ofstream("/proc/self/setgroups") << "deny";
      std::ofstream("/proc/self/uid_map") << "0 " << uid << " 1";
      std::ofstream("/proc/self/gid_map") << "0 " << gid << " 1";
    }
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(101);
    if (::mount("dfc-test", dir.c_str(), "tmpfs", flags, options.c_str()) != 0) ::_exit(102);
    ::_exit(static_cast<int>(body(dir).code()));
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -2;
  const int code = WEXITSTATUS(status);
  return code >= 100 ? -1 : code;
}

TEST(AtomicFileTest, AReadOnlyFileSystemIsPermanentAndAFullOneIsNot) {
  testing::TempDir dir;
  const int read_only = InPrivateTmpfs(dir.path(), "size=1m", MS_RDONLY, [](const std::string& d) {
    return WriteFileAtomically(d + "/latest.ckpt", "weights");
  });
  if (read_only == -1) GTEST_SKIP() << "this machine allows no private mount namespace (unshare)";
  ASSERT_EQ(read_only, static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(IsPermanentError(absl::FailedPreconditionError("")));

  const int full = InPrivateTmpfs(dir.path(), "size=64k", 0, [](const std::string& d) {
    return WriteFileAtomically(d + "/latest.ckpt", std::string(1 << 20, 'w'));
  });
  ASSERT_EQ(full, static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_FALSE(IsPermanentError(absl::ResourceExhaustedError("")));
  const int appended = InPrivateTmpfs(dir.path(), "size=64k", 0, [](const std::string& d) {
    absl::Status st;
    for (int i = 0; i < 100 && st.ok(); ++i) st = AppendLine(d + "/metrics.jsonl", std::string(4096, 'm'));
    return st;
  });
  EXPECT_EQ(appended, static_cast<int>(absl::StatusCode::kResourceExhausted));
}

// The magic sniff that tells weights formats apart reads only the first
// bytes, and a short, missing or unreadable file is simply not a match.
TEST(AtomicFileTest, FileStartsWithComparesOnlyTheFirstBytes) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("w"), std::string("DFCWTS01") + std::string(1 << 20, '\0'));
  testing::WriteFileOrDie(dir.Join("short"), "DFCW");
  EXPECT_TRUE(FileStartsWith(dir.Join("w"), "DFCWTS01"));
  EXPECT_TRUE(FileStartsWith(dir.Join("w"), std::string_view("DFCWTS01\0", 9)));
  EXPECT_FALSE(FileStartsWith(dir.Join("w"), "DFCWTS02"));
  EXPECT_FALSE(FileStartsWith(dir.Join("short"), "DFCWTS01"));
  EXPECT_FALSE(FileStartsWith(dir.Join("missing"), "DFCWTS01"));
  EXPECT_FALSE(FileStartsWith(dir.path(), "DFCWTS01"));  // a directory
}

// A line longer than the bound keeps its first `max` bytes and says it was
// cut; the next line is read whole; a last line without '\n' still counts.
TEST(AtomicFileTest, ReadBoundedLineKeepsAtMostMaxBytesAndGoesOn) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("lines"), "abc\n" + std::string(5000, 'x') + "\n\nlast");
  testing::WriteFileOrDie(dir.Join("empty"), "");
  auto file = OpenToRead(dir.Join("lines"));
  ASSERT_TRUE(file.ok()) << file.status();
  std::FILE* in = file->get();
  std::string line;
  bool cut = true;
  ASSERT_TRUE(ReadBoundedLine(in, 8, &line, &cut));
  EXPECT_EQ(line, "abc");
  EXPECT_FALSE(cut);
  ASSERT_TRUE(ReadBoundedLine(in, 8, &line, &cut));
  EXPECT_EQ(line, "xxxxxxxx");
  EXPECT_TRUE(cut);
  ASSERT_TRUE(ReadBoundedLine(in, 8, &line, &cut));
  EXPECT_EQ(line, "");
  EXPECT_FALSE(cut);
  ASSERT_TRUE(ReadBoundedLine(in, 8, &line, &cut));
  EXPECT_EQ(line, "last");
  EXPECT_FALSE(ReadBoundedLine(in, 8, &line, &cut));
  EXPECT_EQ(line, "");
  auto empty = OpenToRead(dir.Join("empty"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_FALSE(ReadBoundedLine(empty->get(), 8, &line));
}

// A FIFO (or a device) where a file should be is refused at once, naming it;
// opening a FIFO for reading used to wait for a writer for ever.
TEST(AtomicFileTest, ReadersRefuseAFifoInsteadOfWaitingForAWriter) {
  testing::TempDir dir;
  ASSERT_EQ(::mkfifo(dir.Join("fifo").c_str(), 0644), 0);
  auto read = ReadFile(dir.Join("fifo"));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(), "'" + dir.Join("fifo") + "' is a FIFO, not a regular file");
  EXPECT_FALSE(FileStartsWith(dir.Join("fifo"), "DFCWTS01"));
  auto opened = OpenToRead(dir.Join("fifo"));
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find("is a FIFO"), std::string::npos) << opened.status();
  auto device = ReadFile("/dev/zero");
  ASSERT_FALSE(device.ok());
  EXPECT_NE(device.status().message().find("is a device"), std::string::npos) << device.status();
  EXPECT_NE(ReadFile(dir.path()).status().message().find("is a directory"), std::string::npos);
  EXPECT_EQ(OpenToRead(dir.Join("missing")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(RegularFileSize(dir.Join("fifo")).status().message().find("is a FIFO"), std::string::npos);
  testing::WriteFileOrDie(dir.Join("five"), "12345");
  EXPECT_EQ(RegularFileSize(dir.Join("five")).value_or(-1), 5);
}

}  // namespace
}  // namespace dfc
