#ifndef DFC_CLIENTS_COMMANDS_H_
#define DFC_CLIENTS_COMMANDS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/status/status.h"

namespace dfc {

// Exit codes of `dfc`, documented in the README.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;     // the work failed (I/O, internal)
inline constexpr int kExitBadInput = 2;    // bad flags, missing files, malformed input
inline constexpr int kExitCorrupt = 3;     // `shard verify` found corruption
inline constexpr int kExitPartial = 4;     // `predict`: some images failed
inline constexpr int kExitJobFailed = 5;   // `watch`: the job ended FAILED or CANCELLED
inline constexpr int kExitUnavailable = 6; // the coordinator cannot be reached

// Prints "dfc: <message>" to stderr and returns the exit code for `status`.
int ReportError(const absl::Status& status);

// The process's own command line (argv), for commands that re-launch it.
std::vector<std::string>& CommandLine();

// Each Add*Command registers a subcommand on `app` and sets *run to the
// function main() calls when that subcommand was chosen.
using RunFn = std::function<int()>;

// main() of dfc and of dfc-torch: records argv (CommandLine), parses it
// (one subcommand required; help, version and usage errors printed as CLI11
// prints them; a usage error exits kExitBadInput) and runs the command
// chosen. An exception escaping it is reported as an internal error rather
// than "terminate called" and a core dump.
int ParseAndRun(CLI::App& app, int argc, char** argv, const RunFn* run);

// The commands that run a model (train, predict) are in dfc-torch, the one
// part of the client that links LibTorch, so that every other command starts
// in milliseconds instead of after LibTorch's half a second of start-up.
// These register them on dfc: each execs dfc-torch (beside dfc, else the one
// on PATH) with its own arguments, help included.
void AddModelCommandsOfDfcTorch(CLI::App& app, RunFn* run);
// Their one-line descriptions, the same in `dfc --help` and in dfc-torch.
inline constexpr char kPredictAbout[] = "Score images with a model: PATH<TAB>P(real)<TAB>logit per line";
inline constexpr char kTrainAbout[] = "Train a detector in this process on a shard directory";
void AddPredictCommand(CLI::App& app, RunFn* run);
void AddSynthCommand(CLI::App& app, RunFn* run);
void AddShardCommand(CLI::App& app, RunFn* run);
void AddTrainCommand(CLI::App& app, RunFn* run);
void AddPlotCommand(CLI::App& app, RunFn* run);
struct ClientArgs;
void AddClusterCommands(CLI::App& app, RunFn* run, std::shared_ptr<ClientArgs> client);
// evaluate, import, models: the evaluation API.
void AddEvaluateCommands(CLI::App& app, RunFn* run, std::shared_ptr<ClientArgs> client);

}  // namespace dfc

#endif  // DFC_CLIENTS_COMMANDS_H_
