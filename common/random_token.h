#ifndef DFC_COMMON_RANDOM_TOKEN_H_
#define DFC_COMMON_RANDOM_TOKEN_H_

#include <cstddef>
#include <string>

namespace dfc {

// `bytes` bytes from the kernel's CSPRNG (getrandom(2)), as lower-case hex:
// a secret nobody can guess, such as a job attempt's rendezvous key.
std::string RandomHexToken(size_t bytes = 16);

}  // namespace dfc

#endif  // DFC_COMMON_RANDOM_TOKEN_H_
