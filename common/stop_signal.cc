#include "common/stop_signal.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>

namespace dfc {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
// The line the handler writes, made before any signal can come.
char g_note[512];
size_t g_note_size = 0;

void OnStopSignal(int sig) {
  // signal, raise and write are async-signal-safe.
  if (g_stop_signal == sig) {  // the same again (Ctrl-C twice): go now
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  if (g_stop_signal != 0) return;  // another one (dfc train's launcher passing on a Ctrl-C)
  g_stop_signal = sig;
  const ssize_t n = ::write(STDERR_FILENO, g_note, g_note_size);
  (void)n;
}

}  // namespace

void CatchStopSignals(std::initializer_list<int> signals, const std::string& who) {
  const std::string note = who + ": asked to stop: stopping before the next training step or validation batch, "
                                 "saving how far training got (the same signal again ends this process at once)\n";
  g_note_size = std::min(note.size(), sizeof(g_note));
  std::memcpy(g_note, note.data(), g_note_size);
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
