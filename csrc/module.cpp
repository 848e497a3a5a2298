// pyprune._C: the native core.  It takes raw buffers (addresses, shapes,
// strides in elements or bytes) from pyprune.ops, which validates every
// argument and allocates outputs and workspaces with torch; nothing here links
// libtorch.  Each op releases the GIL while it runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "common/parallel.h"
#include "info/info.h"
#include "rank/rank.h"
#include "select/select.h"

namespace py = pybind11;
using namespace pyprune;

namespace {

template <class T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

std::string rank_cpu_binding(uintptr_t data, int dtype, const std::vector<int64_t>& batch_sizes,
                             const std::vector<int64_t>& batch_strides, int64_t rows, int64_t cols,
                             int64_t row_stride, int64_t col_stride, double atol, double rtol,
                             uintptr_t out, int threads, uintptr_t workspace);

using DimSpec = std::tuple<int64_t, int64_t, uintptr_t, int64_t>;   // size, stride (bytes), keep ptr, keep len
using JobSpec = std::tuple<uintptr_t, uintptr_t, int64_t, std::vector<DimSpec>>;  // src, dst, chunk bytes, dims

std::vector<SelectJob> to_select_jobs(const std::vector<JobSpec>& specs, const char* op) {
  std::vector<SelectJob> jobs;
  jobs.reserve(specs.size());
  for (const auto& spec : specs) {
    SelectJob job;
    job.src = as_ptr<char>(std::get<0>(spec));
    job.dst = as_ptr<char>(std::get<1>(spec));
    job.chunk_bytes = std::get<2>(spec);
    if (std::get<3>(spec).size() > 16) throw std::invalid_argument(std::string(op) + ": more than 16 dimensions");
    for (const auto& d : std::get<3>(spec)) {
      SelectDim dim;
      dim.size = std::get<0>(d);
      dim.stride = std::get<1>(d);
      dim.keep = as_ptr<const int64_t>(std::get<2>(d));
      dim.keep_len = dim.keep ? std::get<3>(d) : dim.size;
      job.dims.push_back(dim);
    }
    jobs.push_back(std::move(job));
  }
  return jobs;
}

void select_cpu_binding(const std::vector<JobSpec>& specs, int threads) {
  std::vector<SelectJob> jobs = to_select_jobs(specs, "select_cpu");
  py::gil_scoped_release nogil;
  select_cpu(jobs, threads);
}

RankJob make_rank_job(const char* op, uintptr_t data, int dtype, const std::vector<int64_t>& batch_sizes,
                      const std::vector<int64_t>& batch_strides, int64_t rows, int64_t cols, int64_t row_stride,
                      int64_t col_stride, double atol, double rtol, uintptr_t out) {
  if (batch_sizes.size() != batch_strides.size() || batch_sizes.size() > 16)
    throw std::invalid_argument(std::string(op) + ": batch_sizes and batch_strides must have the same length <= 16");
  if (dtype < 0 || dtype > 3) throw std::invalid_argument(std::string(op) + ": unknown dtype code");
  if (rows < 1 || cols < 1) throw std::invalid_argument(std::string(op) + ": matrices must be non-empty");
  RankJob job;
  job.data = as_ptr<const void>(data);
  job.dtype = static_cast<DType>(dtype);
  job.batch_ndim = static_cast<int>(batch_sizes.size());
  for (size_t i = 0; i < batch_sizes.size(); ++i) {
    job.batch_sizes[i] = batch_sizes[i];
    job.batch_strides[i] = batch_strides[i];
  }
  job.rows = rows;
  job.cols = cols;
  job.row_stride = row_stride;
  job.col_stride = col_stride;
  job.atol = atol;
  job.rtol = rtol;
  job.out = as_ptr<int64_t>(out);
  return job;
}

std::string rank_cpu_binding(uintptr_t data, int dtype, const std::vector<int64_t>& batch_sizes,
                             const std::vector<int64_t>& batch_strides, int64_t rows, int64_t cols,
                             int64_t row_stride, int64_t col_stride, double atol, double rtol,
                             uintptr_t out, int threads, uintptr_t workspace) {
  const RankJob job = make_rank_job("rank_cpu", data, dtype, batch_sizes, batch_strides, rows, cols, row_stride,
                                    col_stride, atol, rtol, out);
  py::gil_scoped_release nogil;
  return rank_cpu(job, threads, as_ptr<void>(workspace));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyprune native core (raw-buffer kernels; validation lives in pyprune.ops)";

  m.def("rank_cpu", &rank_cpu_binding, py::arg("data"), py::arg("dtype"), py::arg("batch_sizes"),
        py::arg("batch_strides"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
        py::arg("col_stride"), py::arg("atol"), py::arg("rtol"), py::arg("out"), py::arg("threads"),
        py::arg("workspace"),
        "Batched matrix rank of a strided buffer; writes int64 ranks (-1 for non-finite matrices).");
  m.def("rank_cpu_workspace_bytes",
        [](int64_t rows, int64_t cols, int dtype, int threads) {
          return rank_cpu_workspace_bytes(rows, cols, static_cast<DType>(dtype), threads);
        },
        py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("threads"));
  m.def("select_cpu", &select_cpu_binding, py::arg("jobs"), py::arg("threads"),
        "Compacts kept channel sub-grids, in place (dst == src) or into dst.");

#if PYPRUNE_WITH_CUDA
  m.def("rank_cuda",
        [](uintptr_t data, int dtype, const std::vector<int64_t>& batch_sizes, const std::vector<int64_t>& batch_strides,
           int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride, double atol, double rtol, uintptr_t out,
           int device, uintptr_t stream, uintptr_t workspace, int64_t workspace_bytes, uintptr_t nonfinite_flag) {
          const RankJob job = make_rank_job("rank_cuda", data, dtype, batch_sizes, batch_strides, rows, cols,
                                            row_stride, col_stride, atol, rtol, out);
          py::gil_scoped_release nogil;
          rank_cuda(job, device, as_ptr<void>(stream), as_ptr<void>(workspace), workspace_bytes,
                    as_ptr<int>(nonfinite_flag));
        },
        py::arg("data"), py::arg("dtype"), py::arg("batch_sizes"), py::arg("batch_strides"), py::arg("rows"),
        py::arg("cols"), py::arg("row_stride"), py::arg("col_stride"), py::arg("atol"), py::arg("rtol"),
        py::arg("out"), py::arg("device"), py::arg("stream"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("nonfinite_flag") = 0,
        "Batched matrix rank of a strided device buffer, launched on `stream` without synchronising; "
        "writes int64 ranks (-1 for non-finite matrices) and, when nonfinite_flag is a device int*, "
        "zeroes it and sets it to 1 if any matrix holds NaN/Inf.");
  m.def("rank_cuda_workspace_bytes",
        [](int64_t rows, int64_t cols, int dtype, int64_t num_matrices, int device) {
          if (dtype < 0 || dtype > 3) throw std::invalid_argument("rank_cuda_workspace_bytes: unknown dtype code");
          return rank_cuda_workspace_bytes(rows, cols, static_cast<DType>(dtype), num_matrices, device);
        },
        py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("num_matrices"), py::arg("device"));
  m.def("select_cuda_table_words",
        [](const std::vector<JobSpec>& specs) {
          return select_cuda_table_words(to_select_jobs(specs, "select_cuda_table_words"));
        },
        py::arg("jobs"));
  m.def("select_cuda_pack",
        [](const std::vector<JobSpec>& specs, uintptr_t host, uintptr_t device_table, int64_t words) {
          return select_cuda_pack(to_select_jobs(specs, "select_cuda_pack"), as_ptr<int64_t>(host), device_table,
                                  words);
        },
        py::arg("jobs"), py::arg("host"), py::arg("device_table"), py::arg("words"),
        "Fills a host job table for select_cuda (kept indices read from host memory); returns the block count.");
  m.def("select_cuda",
        [](uintptr_t device_table, int64_t blocks, int device, uintptr_t stream) {
          py::gil_scoped_release nogil;
          select_cuda(as_ptr<const int64_t>(device_table), blocks, device, as_ptr<void>(stream));
        },
        py::arg("device_table"), py::arg("blocks"), py::arg("device"), py::arg("stream"),
        "Compacts every job of a device table in one launch on `stream` (no synchronisation).");
#endif

  m.def("build_info", []() {
    py::dict d;
    d["version"] = PYPRUNE_VERSION;
    d["cuda"] = static_cast<bool>(PYPRUNE_WITH_CUDA);
    std::vector<std::string> archs;
    std::string a = PYPRUNE_CUDA_ARCHS;
    size_t start = 0;
    while (!a.empty() && start <= a.size()) {
      const size_t end = a.find(',', start);
      archs.push_back(a.substr(start, end == std::string::npos ? std::string::npos : end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
    d["cuda_archs"] = archs;
    d["cuda_runtime_version"] = cuda_runtime_version();
    d["cpu_isa"] = rank_cpu_isa();
    d["hardware_threads"] = hardware_threads();
    return d;
  });
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_driver_version", &cuda_driver_version);
}
