#ifndef DFC_COMMON_SUBPROCESS_H_
#define DFC_COMMON_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace dfc {

// The absolute path of the running executable (to re-launch it or find its
// sibling binaries); "/proc/self/exe" if it cannot be read.
std::string SelfExecutable();

// A TCP port on 127.0.0.1 that was free a moment ago (0 if none could be had).
int PickFreePort();

// Starts args[0] with args (no shell), stdout and stderr appended to
// `log_path` (inherited when empty). With `new_session` the child leaves the
// caller's session (a daemon that outlives the terminal). Returns the pid, or
// -1 when fork failed; an exec failure makes the child exit 127.
pid_t SpawnProcess(const std::vector<std::string>& args, const std::string& log_path, bool new_session);

// The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks
// since boot), or 0 if there is no such process. A pid with another start
// time than recorded is another process: the pid was reused.
unsigned long long ProcessStartTime(pid_t pid);

}  // namespace dfc

#endif  // DFC_COMMON_SUBPROCESS_H_
