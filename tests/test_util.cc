#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

namespace dfc::testing {
namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/dfc-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string SourceDir() { return DFC_SOURCE_DIR; }
std::string SharedDir() {
  if (const char* dir = std::getenv("DFC_SHARED_DIR"); dir != nullptr && *dir != '\0') return dir;
  return fs::path(DFC_SOURCE_DIR).parent_path().string() + "/shared";
}
std::string DfcBinary() { return DFC_BINARY; }

CommandResult RunCommand(const std::string& command_line) {
  TempDir tmp;
  const std::string out = tmp.Join("out"), err = tmp.Join("err");
  const std::string full = "(" + command_line + ") >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(full.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadFileOrDie(out);
  r.err = ReadFileOrDie(err);
  return r;
}

std::vector<PredictLine> ParsePredictions(const std::string& out) {
  std::vector<PredictLine> lines;
  static const std::regex kLine(R"(^([^\t]+)\t([01]\.[0-9]{6})\t(-?[0-9]+\.[0-9]{6})$)");
  for (const std::string& l : SplitLines(out)) {
    std::smatch m;
    EXPECT_TRUE(std::regex_match(l, m, kLine)) << "bad line: " << l;
    if (m.empty()) continue;
    lines.push_back({m[1], std::stod(m[2]), std::stod(m[3])});
  }
  return lines;
}

std::string PngHeader(uint32_t width, uint32_t height) {
  std::string s("\x89PNG\r\n\x1a\n", 8);
  s += std::string("\0\0\0\x0dIHDR", 8);
  for (uint32_t v : {width, height}) {
    for (int shift : {24, 16, 8, 0}) s.push_back(static_cast<char>(v >> shift));
  }
  s += std::string("\x08\x02\0\0\0", 5);
  return s;
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

void WriteFileOrDie(const std::string& path, const std::string& contents) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f << contents;
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

TestData MakeTestData(TempDir& dir) {
  namespace fs = std::filesystem;
  TestData d;
  const std::string shared_weights = SharedDir() + "/weights/mesonet/MesoInception_DF.h5";
  if (fs::exists(shared_weights)) {
    const std::string s = SharedDir() + "/data/mesonet-samples";
    d = {true, shared_weights, s, {s + "/df/df00204.jpg", s + "/df/df01254.jpg", s + "/real/real00240.jpg",
                                   s + "/real/real00772.jpg"}};
    return d;
  }
  const std::string dfc = DfcBinary();
  EXPECT_EQ(RunCommand(dfc + " synth --out " + dir.Join("syn") + " --count 8").exit_code, 0);
  EXPECT_EQ(RunCommand(dfc + " shard --src " + dir.Join("syn") + " --out " + dir.Join("sh") +
                       " --validation-split 0.25").exit_code, 0);
  auto t = RunCommand(dfc + " train --model mesoinception4 --data " + dir.Join("sh") + " --out " + dir.Join("run") +
                      " --epochs 1 --batch-size 4");
  EXPECT_EQ(t.exit_code, 0) << t.err;
  d.weights = dir.Join("run/latest.ckpt");
  d.folder = dir.Join("syn");
  for (const char* cls : {"df", "real"}) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(d.folder + "/" + cls)) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    d.images.insert(d.images.end(), files.begin(), files.begin() + 2);
  }
  return d;
}

std::vector<std::string> ProcStrings(pid_t pid, const char* what) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/" + what, std::ios::binary);
  std::vector<std::string> out;
  for (std::string s; std::getline(f, s, '\0');) out.push_back(s);
  return out;
}

std::string ProcStatus(pid_t pid, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind(field + ":", 0) != 0) continue;
    const size_t v = line.find_first_not_of(" \t", field.size() + 1);
    return v == std::string::npos ? "" : line.substr(v);
  }
  return "";
}

std::optional<std::chrono::steady_clock::time_point> ProcessStartTime(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // Field 22 (starttime), counted after the command name's closing ')', which is field 2.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  const double ticks = std::strtod(field.c_str(), nullptr);
  // Ticks since boot (CLOCK_BOOTTIME), taken back from now on both clocks.
  timespec boot{};
  ::clock_gettime(CLOCK_BOOTTIME, &boot);
  const auto now = std::chrono::steady_clock::now();
  const double ago_s = static_cast<double>(boot.tv_sec) + static_cast<double>(boot.tv_nsec) / 1e9 -
                       ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
  return now - std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(ago_s));
}

std::vector<pid_t> ChildPids(pid_t pid, const std::string& exe) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream f(task.path() / "children");
    for (pid_t c = 0; f >> c;) {
      if (exe.empty() || std::filesystem::read_symlink("/proc/" + std::to_string(c) + "/exe", ec).filename() == exe) {
        out.push_back(c);
      }
    }
  }
  return out;
}

void ReplaceFileOrDie(const std::string& path, const std::string& contents) {
  WriteFileOrDie(path + ".new", contents);
  std::filesystem::rename(path + ".new", path);
}

bool WaitUntil(const std::function<bool()>& done, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

Pki::Pki() {
  for (const char* ca : {"ca1", "ca2"}) {
    Run(std::string("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ") + ca +
        ".key -out " + ca + ".pem -days 2 -subj /CN=dfc-" + ca + " 2>/dev/null");
  }
  Run("cat ca1.pem ca2.pem > both.pem");
  Issue("server1", "ca1", "subjectAltName=IP:127.0.0.1");
  Issue("server2", "ca2", "subjectAltName=IP:127.0.0.1");
  Issue("client1", "ca1", "extendedKeyUsage=clientAuth");
  Issue("client2", "ca2", "extendedKeyUsage=clientAuth");
  Issue("elsewhere", "ca1", "subjectAltName=DNS:elsewhere.example");
}

void Pki::Install(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to + ".new", std::filesystem::copy_options::overwrite_existing);
  std::filesystem::rename(to + ".new", to);
}

void Pki::Run(const std::string& command) {
  auto r = RunCommand("cd " + dir_.path() + " && " + command);
  ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.err;
}

void Pki::Issue(const std::string& name, const std::string& ca, const std::string& extension) {
  Run("printf '" + extension + "\\n' > " + name + ".ext && openssl req -newkey ec -pkeyopt " +
      "ec_paramgen_curve:prime256v1 -nodes -keyout " + name + ".key -out " + name + ".csr -subj /CN=" + name +
      " 2>/dev/null && openssl x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca + ".key " +
      "-CAcreateserial -out " + name + ".pem -days 2 -extfile " + name + ".ext 2>/dev/null");
}

}  // namespace dfc::testing
