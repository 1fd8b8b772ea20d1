#ifndef DFC_CLIENTS_TRAINING_FLAGS_H_
#define DFC_CLIENTS_TRAINING_FLAGS_H_

#include <CLI/CLI.hpp>

#include "dfc/v1/dfc.pb.h"

namespace dfc {

// The training flags `dfc train` and `dfc submit` share, parsed into one
// TrainingConfig with the same defaults and checks (the validator in
// common/training_config then checks the whole configuration, as the
// coordinator and every rank do).
void AddTrainingFlags(CLI::App* cmd, v1::TrainingConfig* config);

}  // namespace dfc

#endif  // DFC_CLIENTS_TRAINING_FLAGS_H_
