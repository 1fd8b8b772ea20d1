#ifndef DFC_COMMON_RPC_TLS_FILES_H_
#define DFC_COMMON_RPC_TLS_FILES_H_

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// PEM certificates and keys as every TLS endpoint reads them (OpenSSL): the
// check of the gRPC files at start, the HTTPS endpoints' renewed pairs and
// the certificate expiry metrics.
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct X509ChainFree {
  void operator()(STACK_OF(X509)* chain) const { sk_X509_pop_free(chain, X509_free); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

// A PEM file's text (at most 1 MiB); an error starts with `flag` when one is given.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& flag = "");
// Every certificate in `pem`, in order (none when it holds none).
std::vector<X509Ptr> ParseCertificates(const std::string& pem);

// A certificate file's first certificate, the rest of its chain, and its key.
struct KeyPair {
  X509Ptr cert;
  std::unique_ptr<STACK_OF(X509), X509ChainFree> chain;
  std::unique_ptr<EVP_PKEY, KeyFree> key;
};
// Reads the pair and checks it: both files readable, a PEM certificate, a
// PEM private key, and the key the certificate's. Errors name the files,
// each after its flag when flags are given ("--tls-key: 'K' is not the key
// of the certificate in --tls-cert 'C'").
absl::StatusOr<KeyPair> ReadKeyPair(const std::string& cert_path, const std::string& key_path,
                                    const std::string& cert_flag = "", const std::string& key_flag = "");

}  // namespace dfc

#endif  // DFC_COMMON_RPC_TLS_FILES_H_
