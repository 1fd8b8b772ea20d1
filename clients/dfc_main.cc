// dfc: the DFC command-line client: offline tools, cluster commands and evaluation.
#include <cstdio>
#include <exception>

#include "clients/client_rpc.h"
#include "clients/commands.h"
#include "common/utf8.h"

namespace dfc {

std::vector<std::string>& CommandLine() {
  static std::vector<std::string> args;
  return args;
}

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "dfc: %s\n", ForTerminal(std::string(status.message())).c_str());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kResourceExhausted:
      return kExitBadInput;
    case absl::StatusCode::kDataLoss:
      return kExitCorrupt;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    default:
      return kExitFailure;
  }
}

}  // namespace dfc

int main(int argc, char** argv) {
  CLI::App app{"dfc: train and run deepfake detectors (MesoNet, VGGFace ResNet-50)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dfc 0.1.0");
  dfc::CommandLine().assign(argv, argv + argc);
  dfc::RunFn run;
  dfc::AddPredictCommand(app, &run);
  dfc::AddSynthCommand(app, &run);
  dfc::AddShardCommand(app, &run);
  dfc::AddTrainCommand(app, &run);
  dfc::AddPlotCommand(app, &run);
  auto client = dfc::AddCoordinatorOptions(app);
  dfc::AddClusterCommands(app, &run, client);
  dfc::AddEvaluateCommands(app, &run, client);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return dfc::kExitBadInput;
  }
  if (!run) return dfc::kExitBadInput;
  // Errors are statuses; an exception reaching here is a defect, reported
  // as one rather than as "terminate called after throwing" and a core dump.
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dfc: internal error (please report it): %s\n",
                 dfc::ForTerminal(e.what()).c_str());
    return dfc::kExitFailure;
  }
}
