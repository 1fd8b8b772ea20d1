#include "common/rpc/tls_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"

namespace dfc {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// "FLAG: " before a message, or nothing without a flag.
std::string After(const std::string& flag) { return flag.empty() ? "" : flag + ": "; }

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& flag) {
  auto pem = ReadFile(path, 1 << 20);
  if (!pem.ok()) return absl::InvalidArgumentError(absl::StrCat(After(flag), pem.status().message()));
  return *pem;
}

std::vector<X509Ptr> ParseCertificates(const std::string& pem) {
  auto bio = MemoryBio(pem);
  std::vector<X509Ptr> certs;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.emplace_back(cert);
  ERR_clear_error();  // the end of the input reads as an error
  return certs;
}

absl::StatusOr<KeyPair> ReadKeyPair(const std::string& cert_path, const std::string& key_path,
                                    const std::string& cert_flag, const std::string& key_flag) {
  auto cert_pem = ReadPemFile(cert_path, cert_flag);
  if (!cert_pem.ok()) return cert_pem.status();
  auto key_pem = ReadPemFile(key_path, key_flag);
  if (!key_pem.ok()) return key_pem.status();
  std::vector<X509Ptr> certs = ParseCertificates(*cert_pem);
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(After(cert_flag), "'", cert_path, "' holds no PEM certificate"));
  }
  KeyPair pair;
  pair.cert = std::move(certs.front());
  pair.chain.reset(sk_X509_new_null());
  for (size_t i = 1; i < certs.size(); ++i) sk_X509_push(pair.chain.get(), certs[i].release());
  auto bio = MemoryBio(*key_pem);
  pair.key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  const bool matches = pair.key != nullptr && X509_check_private_key(pair.cert.get(), pair.key.get()) == 1;
  ERR_clear_error();
  if (pair.key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(After(key_flag), "'", key_path, "' holds no PEM private key"));
  }
  if (!matches) {
    return absl::InvalidArgumentError(absl::StrCat(After(key_flag), "'", key_path,
                                                   "' is not the key of the certificate in ",
                                                   cert_flag.empty() ? "" : cert_flag + " ", "'", cert_path, "'"));
  }
  return pair;
}

}  // namespace dfc
