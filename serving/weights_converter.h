#ifndef DFC_SERVING_WEIGHTS_CONVERTER_H_
#define DFC_SERVING_WEIGHTS_CONVERTER_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dfc {

// Weights that dfc-server did not write itself (uploads, from whoever holds
// the users' token; job checkpoints, from the workers; models imported before
// this converter existed) are a Keras .h5 or a DFC checkpoint, parsed by
// libhdf5 or LibTorch's archive reader. Neither is built for hostile files, so
// dfc-server never parses them itself: a child process, confined
// (EnterSandbox: no network, no exec, no other processes; files read only from
// the input and the system's libraries, written only in its own directory) and
// limited (memory, CPU, time, file size, no core dumps), loads the input as
// the named architecture and writes it back as a served-weights file
// (common/weights_file.h: tensors, shapes and a checksum, read by a 100-line
// parser), which is all the server loads and stores. A file that crashes or
// exhausts the converter costs that one import or load.
struct WeightsConverterOptions {
  // The converter's argv before its arguments: {dfc-server, "--convert-weights"}.
  std::vector<std::string> command;
  int64_t memory_bytes = int64_t{4} << 30;  // RLIMIT_AS
  int cpu_seconds = 300;                    // RLIMIT_CPU
  std::chrono::seconds timeout{600};        // wall clock, then SIGKILL
  int64_t max_output_bytes = int64_t{4} << 30;  // RLIMIT_FSIZE
};

// Converts `input` (as `arch`) into the served-weights file `out` in a
// confined child. `out`'s directory must be empty and the child's alone (it
// may write only there; its log is kept there too). Errors are the client's
// (INVALID_ARGUMENT, naming `subject`, e.g. "the uploaded file", or the input's
// path as the child did) unless the converter could not be run (INTERNAL).
// `sandbox` (if given) receives the child's account of its confinement.
absl::Status ConvertWeights(const WeightsConverterOptions& options, const std::string& arch, const std::string& input,
                            const std::string& out, const std::string& subject, std::string* sandbox = nullptr);

// The child's side: `dfc-server --convert-weights ARCH INPUT OUT MEMORY_BYTES`. Exit 0:
// OUT written; 2: the weights are refused (the reason is stderr's last
// line); 3: the sandbox could not be entered.
int ConvertWeightsMain(int argc, char** argv);

}  // namespace dfc

#endif  // DFC_SERVING_WEIGHTS_CONVERTER_H_
