#include "common/random_token.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/escaping.h"

namespace dfc {

std::string RandomHexToken(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    const ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Linux has had getrandom since 3.17; without it there is no safe
      // secret to hand out, and a guessable one would be worse than none.
      std::perror("dfc: getrandom");
      std::abort();
    }
    got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(raw);
}

}  // namespace dfc
