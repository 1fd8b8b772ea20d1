#ifndef DFC_COMMON_UTF8_H_
#define DFC_COMMON_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace dfc {

// Protobuf string fields and JSON text must be UTF-8; file names, weights
// files and the error lines that quote them need not be. A proto3 message
// with a non-UTF-8 string does not parse on the other side (a worker whose
// heartbeat carried one was taken for dead), and nlohmann::json::dump()
// throws on one.

// The offset of the first byte that does not begin a well-formed UTF-8
// sequence (RFC 3629: no overlong forms, surrogates or code points past
// U+10FFFF), or std::string_view::npos when all of `s` is UTF-8.
size_t InvalidUtf8Offset(std::string_view s);

// `s` with each byte that is not part of a well-formed sequence written as
// \xNN (upper-case hex); UTF-8 text comes back unchanged.
std::string ValidUtf8(std::string_view s);

// `s` made safe to print on a terminal, for text that reaches one user from
// another (a job's failure reason quotes the paths its submitter chose): the
// C0 controls and DEL (\n, \r, \t, else \xNN), the C1 controls and the
// bidirectional overrides and isolates (\uNNNN) and bytes that are not UTF-8
// (\xNN) are written as escapes, so no escape sequence reaches the terminal
// and no text is reordered; other UTF-8 comes back unchanged.
std::string ForTerminal(std::string_view s);

}  // namespace dfc

#endif  // DFC_COMMON_UTF8_H_
