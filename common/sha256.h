#ifndef DFC_COMMON_SHA256_H_
#define DFC_COMMON_SHA256_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace dfc {

// SHA-256 (OpenSSL), incremental: what users compare with `sha256sum`.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // 64 lowercase hex digits; ends the computation.
  std::string HexDigest();

 private:
  void* ctx_;  // EVP_MD_CTX
};

// 64 lowercase hex digits.
bool IsSha256Hex(std::string_view s);

}  // namespace dfc

#endif  // DFC_COMMON_SHA256_H_
