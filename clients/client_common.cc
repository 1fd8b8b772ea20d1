// What dfc and dfc-torch share: error reporting, the command line, main().
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "clients/commands.h"
#include "common/subprocess.h"
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

int ParseAndRun(CLI::App& app, int argc, char** argv, const RunFn* run) {
  CommandLine().assign(argv, argv + argc);
  app.require_subcommand(1);
  app.set_version_flag("--version", "dfc 0.1.0");
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
    return kExitBadInput;
  }
  if (!*run) return kExitBadInput;
  try {
    return (*run)();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dfc: internal error (please report it): %s\n", ForTerminal(e.what()).c_str());
    return kExitFailure;
  }
}

void AddModelCommandsOfDfcTorch(CLI::App& app, RunFn* run) {
  const std::pair<const char*, const char*> commands[] = {
      {"predict", kPredictAbout},
      {"train", kTrainAbout},
  };
  for (const auto& [name, description] : commands) {
    CLI::App* cmd = app.add_subcommand(name, description);
    // Everything after the command, --help included, is dfc-torch's to parse.
    cmd->set_help_flag();
    cmd->prefix_command();
    cmd->allow_extras();
    const std::string command = name;
    cmd->callback([run, cmd, command] {
      std::vector<std::string> args = cmd->remaining();
      *run = [command, args] {
        const std::string program = SiblingExecutable("dfc-torch");
        std::vector<std::string> argv = {program, command};
        argv.insert(argv.end(), args.begin(), args.end());
        std::vector<char*> c_argv;
        for (std::string& a : argv) c_argv.push_back(a.data());
        c_argv.push_back(nullptr);
        std::fflush(stdout);
        ::execv(program.c_str(), c_argv.data());
        const int beside = errno;
        if (beside == ENOENT) {  // dfc alone was copied somewhere: dfc-torch on PATH will do
          ::execvp("dfc-torch", c_argv.data());
          if (errno != ENOENT) {
            return ReportError(absl::FailedPreconditionError(absl::StrCat(
                "dfc ", command, " runs in dfc-torch: cannot run the one on PATH: ", std::strerror(errno))));
          }
        }
        return ReportError(absl::FailedPreconditionError(
            absl::StrCat("dfc ", command, " runs in dfc-torch, which is installed beside dfc: cannot run ", program,
                         ": ", std::strerror(beside), beside == ENOENT ? " (nor is there one on PATH)" : "")));
      };
    });
  }
}

}  // namespace dfc
