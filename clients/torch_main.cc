// dfc-torch: the commands of dfc that run a model (train, predict), the one
// part of the client that links LibTorch. dfc execs it for them; its
// messages, help and exit codes are dfc's.
#include "clients/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"dfc: the commands that run a model (dfc runs them here, in dfc-torch)", "dfc"};
  dfc::RunFn run;
  dfc::AddPredictCommand(app, &run);
  dfc::AddTrainCommand(app, &run);
  return dfc::ParseAndRun(app, argc, argv, &run);
}
