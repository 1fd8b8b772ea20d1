#include "common/stop_signal.h"

#include <signal.h>
#include <unistd.h>

#include <csignal>

namespace dfc {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

void Say(const char* text, size_t size) {
  const ssize_t n = ::write(STDERR_FILENO, text, size);
  (void)n;
}

void OnStopSignal(int sig) {
  // signal, raise and write are async-signal-safe.
  if (g_stop_signal == sig) {  // the same again (Ctrl-C twice): go now
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  if (g_stop_signal != 0) return;  // another one (dfc train's launcher passing on a Ctrl-C)
  g_stop_signal = sig;
  static constexpr char kNote[] = "dfc: asked to stop: stopping before the next training step or validation "
                                  "batch, saving how far training got (the same signal again ends this process at "
                                  "once)\n";
  Say(kNote, sizeof(kNote) - 1);
}

}  // namespace

void CatchStopSignals(std::initializer_list<int> signals) {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (const int sig : signals) ::sigaction(sig, &sa, nullptr);
}

int StopSignal() { return g_stop_signal; }

const char* StopSignalName() {
  switch (g_stop_signal) {
    case 0: return "no signal";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    default: return "a signal";
  }
}

}  // namespace dfc
