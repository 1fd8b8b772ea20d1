// dfc: the DFC command-line client: offline tools, cluster commands and
// evaluation. It links no LibTorch: train and predict exec dfc-torch.
#include "clients/client_rpc.h"
#include "clients/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"dfc: train and run deepfake detectors (MesoNet, VGGFace ResNet-50)", "dfc"};
  dfc::RunFn run;
  dfc::AddModelCommandsOfDfcTorch(app, &run);
  dfc::AddSynthCommand(app, &run);
  dfc::AddShardCommand(app, &run);
  dfc::AddPlotCommand(app, &run);
  auto client = dfc::AddCoordinatorOptions(app);
  dfc::AddClusterCommands(app, &run, client);
  dfc::AddEvaluateCommands(app, &run, client);
  return dfc::ParseAndRun(app, argc, argv, &run);
}
