#ifndef DFC_TESTS_TEST_UTIL_H_
#define DFC_TESTS_TEST_UTIL_H_

#include <sys/types.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dfc::testing {

// A fresh directory under $TMPDIR, removed with everything in it when the
// object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// ../shared beside the source tree, or $DFC_SHARED_DIR (real data and weights; read-only).
std::string SharedDir();
// The source tree root and the built `dfc` binary.
std::string SourceDir();
std::string DfcBinary();

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs a shell command line, capturing stdout and stderr.
CommandResult RunCommand(const std::string& command_line);

// Asks `done` every 20 ms until it says yes (true) or `limit` has passed (false).
bool WaitUntil(const std::function<bool()>& done, std::chrono::seconds limit);

std::vector<std::string> SplitLines(const std::string& text);

// One line of `dfc predict`: PATH<TAB>P(real)<TAB>logit (6 decimals).
struct PredictLine {
  std::string path;
  double p = 0, logit = 0;
};
// Parses `dfc predict` output; a line of any other shape fails the test.
std::vector<PredictLine> ParsePredictions(const std::string& out);
// How far one image's logit may move when the same model scores it in
// another batch: oneDNN's float32 convolutions sum in an order that depends
// on the batch, and CI has seen 1.1e-5 on a logit of -3.6 and of 45.6. Other
// weights move a logit by far more than 1e-4.
inline double LogitTolerance(double logit) { return 1e-4 * (std::abs(logit) > 1 ? std::abs(logit) : 1.0); }
// The same for P(real): the sigmoid's slope times its argument is at most
// 0.224, so a quarter of the smallest logit tolerance bounds it at any logit.
inline double ProbabilityTolerance() { return LogitTolerance(0) / 4; }

// A PNG whose header claims width x height (no pixel data).
std::string PngHeader(uint32_t width, uint32_t height);
void WriteFileOrDie(const std::string& path, const std::string& contents);
// Replaces `path` as the kubelet renews a Secret's files: written beside
// it, then renamed into place (readers see the old file or the new one).
void ReplaceFileOrDie(const std::string& path, const std::string& contents);
std::string ReadFileOrDie(const std::string& path);

// A live process's command line or environment ("cmdline", "environ": one
// string per argument or NAME=value).
std::vector<std::string> ProcStrings(pid_t pid, const char* what);
// The value of a /proc/PID/status field ("Seccomp" -> "2"); "" when absent.
std::string ProcStatus(pid_t pid, const std::string& field);
// The process's children, all its threads' (/proc/PID/task/*/children);
// with `exe`, only those running the program of that file name.
std::vector<pid_t> ChildPids(pid_t pid, const std::string& exe = "");
// When a live process started (/proc/PID/stat, to a clock tick: 10 ms), on
// the steady clock; none once it has gone.
std::optional<std::chrono::steady_clock::time_point> ProcessStartTime(pid_t pid);

// Certificates made by openssl (P-256 keys, valid 2 days) in a folder of
// their own: two CAs, and for each a server certificate for 127.0.0.1 and a
// client certificate (server1, client1 by ca1; server2, client2 by ca2);
// also "elsewhere", a ca1 server certificate for elsewhere.example, and
// both.pem, the two CAs in one bundle. Files are NAME.pem and NAME.key.
class Pki {
 public:
  Pki();
  std::string operator[](const std::string& file) const { return dir_.Join(file); }
  // Copies FROM over TO as the kubelet and cert-manager renew files:
  // written beside it, then renamed into place.
  static void Install(const std::string& from, const std::string& to);

 private:
  void Run(const std::string& command);
  void Issue(const std::string& name, const std::string& ca, const std::string& extension);
  TempDir dir_;
};

// What evaluation tests evaluate: the MesoNet authors' weights and the four
// shared samples when ../shared is there; otherwise (a clone without it) a
// MesoInception-4 trained for one epoch on 8 synthetic images, so that every
// path still runs. Either way: two fake images, then two real ones.
struct TestData {
  bool authors = false;
  std::string weights, folder;
  std::vector<std::string> images;
};
TestData MakeTestData(TempDir& dir);

}  // namespace dfc::testing

#endif  // DFC_TESTS_TEST_UTIL_H_
