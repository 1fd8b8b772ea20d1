#ifndef DFC_COMMON_RPC_BEARER_TOKEN_H_
#define DFC_COMMON_RPC_BEARER_TOKEN_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dfc {

// A bearer token as a client sends it, or the tokens a server accepts. From
// a file it is read again whenever the file changes (looked at on use, at
// most once a second), so a token is rotated without restarting anything:
// a server accepts every token in its file, one per line, and a client
// sends the first line. To rotate a token that both sides read from one
// Secret: add the new token as a second line, then make it the first, then
// drop the old one. A file that becomes unreadable or empty changes
// nothing: the tokens read before stay, and the reason is logged.
// Copies share the file and what was read from it.
class BearerToken {
 public:
  BearerToken() = default;  // none: a server accepts any call, a client sends none
  explicit BearerToken(std::string token);  // fixed (DFC_TOKEN); "" is none
  // The tokens in `path`; errors start with `flag` ("--token-file: ...").
  static absl::StatusOr<BearerToken> FromFile(const std::string& path, const std::string& flag);

  bool empty() const { return state_ == nullptr; }
  // What a client sends: the first token ("" when none).
  std::string Current() const;
  // Whether a server accepts `presented` (any token, when none is set). Each
  // token is compared in constant time and every one is compared.
  bool Accepts(absl::string_view presented) const;
  // Whether any token is in both (the users' and the workers' must differ).
  bool Shares(const BearerToken& other) const;
  // This token, refusing what `other` also accepts: the users' and the
  // workers' files are checked for a shared token at start, and this keeps
  // that true after either is read again (a token put in both by mistake
  // is refused on both sides, and the first refusal is logged).
  BearerToken Excluding(const BearerToken& other) const;

 private:
  struct State;
  // The file's tokens now (read again when it changed).
  static std::vector<std::string> Tokens(State& s);
  // Whether `presented` is one of them (each compared in constant time).
  static bool Holds(State& s, absl::string_view presented);
  std::shared_ptr<State> state_;
  std::shared_ptr<State> excluded_;  // Excluding's other token, when set
};

}  // namespace dfc

#endif  // DFC_COMMON_RPC_BEARER_TOKEN_H_
