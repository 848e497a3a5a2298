// The CUDA translation unit that proves the CUDA build works: queries the
// runtime (linked statically) for devices and versions.  On a machine without a
// driver every query fails cleanly and reports zero.
#include <cuda_runtime.h>

#include "info/info.h"

namespace pyprune {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state
    return 0;
  }
  return n;
}

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace pyprune
