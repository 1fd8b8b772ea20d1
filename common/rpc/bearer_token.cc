#include "common/rpc/bearer_token.h"

#include <atomic>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/atomic_file.h"
#include "common/rpc/rpc_util.h"

namespace dfc {
namespace {

constexpr size_t kMaxTokenFileBytes = 4096;

absl::StatusOr<std::vector<std::string>> ReadTokens(const std::string& path, const std::string& flag) {
  auto text = ReadFile(path, kMaxTokenFileBytes);
  if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", text.status().message()));
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty()) tokens.emplace_back(line);
  }
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": '", path, "' is empty"));
  return tokens;
}

}  // namespace

struct BearerToken::State {
  std::string path, flag;  // no path: fixed
  std::atomic<bool> said_shared{false};
  absl::Mutex mu;
  std::vector<std::string> tokens ABSL_GUARDED_BY(mu);
  std::string stamp ABSL_GUARDED_BY(mu);
  std::chrono::steady_clock::time_point next_look ABSL_GUARDED_BY(mu);
};

BearerToken::BearerToken(std::string token) {
  if (token.empty()) return;
  state_ = std::make_shared<State>();
  absl::MutexLock lock(&state_->mu);
  state_->tokens.push_back(std::move(token));
}

absl::StatusOr<BearerToken> BearerToken::FromFile(const std::string& path, const std::string& flag) {
  BearerToken t;
  t.state_ = std::make_shared<State>();
  t.state_->path = path;
  t.state_->flag = flag;
  absl::MutexLock lock(&t.state_->mu);
  t.state_->stamp = FileStamp(path);
  auto tokens = ReadTokens(path, flag);
  if (!tokens.ok()) return tokens.status();
  t.state_->tokens = *std::move(tokens);
  t.state_->next_look = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  return t;
}

std::vector<std::string> BearerToken::Tokens(State& s) {
  absl::MutexLock lock(&s.mu);
  const auto now = std::chrono::steady_clock::now();
  if (s.path.empty() || now < s.next_look) return s.tokens;
  s.next_look = now + std::chrono::seconds(1);
  std::string stamp = FileStamp(s.path);
  if (stamp == s.stamp) return s.tokens;
  s.stamp = std::move(stamp);
  auto tokens = ReadTokens(s.path, s.flag);
  if (tokens.ok()) {
    s.tokens = *std::move(tokens);
    std::fprintf(stderr, "%s: '%s' changed: %zu token(s) now\n", s.flag.c_str(), s.path.c_str(), s.tokens.size());
  } else {
    std::fprintf(stderr, "%s (changed on disk); still using the %zu token(s) read before\n",
                 std::string(tokens.status().message()).c_str(), s.tokens.size());
  }
  return s.tokens;
}

bool BearerToken::Holds(State& s, absl::string_view presented) {
  bool held = false;
  for (const std::string& t : Tokens(s)) held |= ConstantTimeEquals(std::string(presented), t);
  return held;
}

std::string BearerToken::Current() const {
  if (state_ == nullptr) return "";
  std::vector<std::string> tokens = Tokens(*state_);
  return tokens.empty() ? "" : tokens.front();
}

bool BearerToken::Accepts(absl::string_view presented) const {
  if (state_ == nullptr) return true;
  if (!Holds(*state_, presented)) return false;
  if (excluded_ != nullptr && Holds(*excluded_, presented)) {
    if (!state_->said_shared.exchange(true)) {
      std::fprintf(stderr, "%s and %s hold the same token: it is refused on both sides until they differ\n",
                   state_->flag.c_str(), excluded_->flag.c_str());
    }
    return false;
  }
  return true;
}

BearerToken BearerToken::Excluding(const BearerToken& other) const {
  BearerToken t = *this;
  if (other.state_ != state_) t.excluded_ = other.state_;  // one token for both (no worker token file) stays one
  return t;
}

bool BearerToken::Shares(const BearerToken& other) const {
  if (state_ == nullptr || other.state_ == nullptr) return false;
  for (const std::string& a : Tokens(*state_)) {
    for (const std::string& b : Tokens(*other.state_)) {
      if (a == b) return true;
    }
  }
  return false;
}

}  // namespace dfc
