// Build and runtime information about the CUDA side of the native core.
#pragma once

namespace pyprune {
// Number of CUDA devices the runtime sees (0 without a driver or GPU, or in a
// CPU-only build).
int cuda_device_count();
// CUDA runtime version the module was built with (e.g. 13000), 0 if none.
int cuda_runtime_version();
// CUDA driver version (0 without a driver or in a CPU-only build).
int cuda_driver_version();
}  // namespace pyprune
