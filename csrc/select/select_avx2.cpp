// AVX2 gather of 36-byte chunks (a 3x3 float32 kernel: the chunk of a conv
// weight selected along its input channels), compiled with -mavx2.
//
// The portable path copies each kept chunk with unaligned 16+16+4-byte moves,
// so every 64-byte output line is written in pieces, and with plain stores
// each line is first read from memory (read-for-ownership).  Here 16 chunks
// (576 bytes, exactly 9 lines) are assembled into 18 aligned 32-byte vectors:
// output vector m covers bytes [32m, 32m + 32) of the group, which start at
// byte e = 32m mod 36 of chunk c = 32m / 36 and run into chunk c + 1; it is
// one unaligned load at chunk c + e, blended lane by lane with one at chunk
// c + 1 shifted back by 36 - e bytes (the lanes are 4-byte, e is a multiple
// of 4).  Every load stays between the first byte of the group's first chunk
// and the last byte of its last chunk; bytes in between that belong to
// skipped channels are loaded and discarded.  The vectors are written with
// aligned stores, or with non-temporal (streaming) stores for outputs larger
// than the caches: full lines with no read-for-ownership.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "select/select_kernel.h"

namespace pyprune {
namespace detail {
namespace {

template <int M, bool Stream>
inline void put_vector(char* dst, const char* const* s) {
  constexpr int o = 32 * M;
  constexpr int c = o / 36;
  constexpr int e = o - 36 * c;      // 0, 4, ..., 32
  constexpr int first = (36 - e) / 4;  // lanes that come from chunk c (>= 8: all)
  __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(s[c] + e));
  if constexpr (first < 8) {
    const __m256 w = _mm256_loadu_ps(reinterpret_cast<const float*>(s[c + 1] + e - 36));
    v = _mm256_blend_ps(w, v, (1 << first) - 1);
  }
  float* out = reinterpret_cast<float*>(dst + o);
  if constexpr (Stream) {
    _mm256_stream_ps(out, v);
  } else {
    _mm256_store_ps(out, v);
  }
}

template <bool Stream, int... M>
inline void put_group(char* dst, const char* const* s, std::integer_sequence<int, M...>) {
  (put_vector<M, Stream>(dst, s), ...);
}

template <bool Stream>
char* copy36(char* dst, const char* row, const int64_t* keep, int64_t i0, int64_t i1, int64_t stride) {
  int64_t i = i0;
  // Single chunks until the output is 64-byte aligned: with 4-byte aligned
  // output that takes at most 15 (36 t + dst = 0 mod 64 has a solution t < 16).
  if ((reinterpret_cast<uintptr_t>(dst) & 3) == 0) {
    for (; i < i1 && (reinterpret_cast<uintptr_t>(dst) & 63) != 0; ++i, dst += 36)
      std::memcpy(dst, row + keep[i] * stride, 36);
    const char* s[16];
    for (; i + 16 <= i1; i += 16, dst += 576) {
      for (int q = 0; q < 16; ++q) s[q] = row + keep[i + q] * stride;
      put_group<Stream>(dst, s, std::make_integer_sequence<int, 18>{});
    }
  }
  for (; i < i1; ++i, dst += 36) std::memcpy(dst, row + keep[i] * stride, 36);
  return dst;
}

}  // namespace

char* select_copy36_avx2(char* dst, const char* row, const int64_t* keep, int64_t i0, int64_t i1,
                         int64_t stride, bool stream) {
  return stream ? copy36<true>(dst, row, keep, i0, i1, stride) : copy36<false>(dst, row, keep, i0, i1, stride);
}

}  // namespace detail
}  // namespace pyprune
