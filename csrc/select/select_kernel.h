// Kernels of the CPU channel compaction compiled in their own translation
// unit with -mavx2 (select_avx2.cpp), called only when cpu_use_avx2().
#pragma once
#include <cstdint>

namespace pyprune {
namespace detail {

// Copies the 36-byte chunks at row + keep[i] * stride, i in [i0, i1), packed
// to dst and returns dst + 36 * (i1 - i0).  keep must not be null.  With
// `stream` the aligned 64-byte lines of the output are written with
// non-temporal stores: the caller issues an sfence before anyone reads them.
// In place, every destination byte must lie below every source chunk (the
// waves of select_cpu guarantee it).
char* select_copy36_avx2(char* dst, const char* row, const int64_t* keep, int64_t i0, int64_t i1,
                         int64_t stride, bool stream);

}  // namespace detail
}  // namespace pyprune
