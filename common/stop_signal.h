#ifndef DFC_COMMON_STOP_SIGNAL_H_
#define DFC_COMMON_STOP_SIGNAL_H_

#include <initializer_list>
#include <string>

namespace dfc {

// Training asked to stop by a signal (dfc-worker sends its ranks SIGTERM
// when their job is stopped or the worker shuts down; a user presses Ctrl-C
// in `dfc train`): the first such signal is recorded, and training stops at
// its next step, saving how far it got (TrainOptions::stop_requested); a
// line on stderr says so. The same signal again ends the process at once, as
// its default would (Ctrl-C twice); a different one is ignored (dfc train's
// launcher passes a Ctrl-C on to its ranks as SIGTERM, and a terminal sends
// them SIGINT too).
// `who` starts that line ("dfc", "rank 1").
void CatchStopSignals(std::initializer_list<int> signals, const std::string& who);

// The first caught signal, 0 while none came, and its name ("SIGTERM").
int StopSignal();
const char* StopSignalName();

}  // namespace dfc

#endif  // DFC_COMMON_STOP_SIGNAL_H_
