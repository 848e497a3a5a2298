// CPU-only build: no CUDA runtime is linked.
#include "info/info.h"

namespace pyprune {
int cuda_device_count() { return 0; }
int cuda_runtime_version() { return 0; }
int cuda_driver_version() { return 0; }
}  // namespace pyprune
