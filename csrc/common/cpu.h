// Run-time CPU feature checks for the kernels compiled twice (portable and AVX2).
#pragma once

namespace pyprune {

// True when the AVX2 translation units were built and this CPU has AVX2 and FMA.
inline bool cpu_use_avx2() {
#if defined(PYPRUNE_HAVE_AVX2_TU) && (defined(__x86_64__) || defined(_M_X64))
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace pyprune
