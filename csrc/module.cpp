// pyprune._C: the native core.  It takes raw buffers (addresses, shapes,
// strides in elements or bytes) from pyprune.ops, which validates every
// argument and allocates outputs and workspaces with torch; nothing here links
// libtorch.  (One exception: SelectBatch.from_pairs reads tensor metadata
// through the tensors' Python attributes, as a fast path of the validation.)
// Each op releases the GIL while it runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "common/parallel.h"
#include "info/info.h"
#include "norms/row_norms.h"
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

// The tensors of one select_channels call (see pyprune/ops/select.py), which
// has validated the pairs and the kept indices: checks layouts and overlaps,
// gives the compacted layouts and runs (CPU) or packs (CUDA) the jobs.  One
// object per call keeps the per-tensor work out of Python.
class SelectBatch {
 public:
  using TensorSpec = std::tuple<uintptr_t, int64_t, std::vector<int64_t>, std::vector<int64_t>, int64_t>;

  // tensors: (data_ptr, element_size, sizes, strides, first pair) each;
  // sels: (tensor index, dim, keep_ptr, keep_len, block) per pair, flat;
  // keepalive: holds the index tensors at keep_ptr for the batch's lifetime.
  SelectBatch(const std::vector<TensorSpec>& tensors, const std::vector<int64_t>& sels, py::object keepalive)
      : keepalive_(std::move(keepalive)) {
    t_.resize(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      SelectTensor& t = t_[i];
      t.data = as_ptr<char>(std::get<0>(tensors[i]));
      t.item = std::get<1>(tensors[i]);
      t.sizes = std::get<2>(tensors[i]);
      t.strides = std::get<3>(tensors[i]);
      t.first_pair = std::get<4>(tensors[i]);
      if (t.sizes.size() != t.strides.size()) throw std::invalid_argument("SelectBatch: sizes and strides differ in length");
      t.sels.resize(t.sizes.size());
    }
    if (sels.size() % 5 != 0) throw std::invalid_argument("SelectBatch: sels must hold 5 numbers per pair");
    for (size_t k = 0; k < sels.size(); k += 5) {
      const int64_t i = sels[k], d = sels[k + 1];
      if (i < 0 || i >= static_cast<int64_t>(t_.size()) || d < 0 || d >= static_cast<int64_t>(t_[i].sizes.size()))
        throw std::invalid_argument("SelectBatch: selection out of range");
      SelectTensor::Sel& sel = t_[i].sels[d];
      sel.on = true;
      sel.keep = as_ptr<const int64_t>(static_cast<uintptr_t>(sels[k + 2]));
      sel.keep_len = sels[k + 3];
      sel.block = sels[k + 4];
    }
    for (auto& t : t_) select_plan_tensor(t);
  }

  // Fast path of pyprune.ops.select._validate for the common call: builds the
  // batch straight from the pairs, reading each distinct tensor's metadata
  // once through its Python attributes.  Returns None as soon as anything is
  // off or unusual (a failing check, a type other than tuple/list, int,
  // torch.Tensor or torch.nn.Parameter, a device other than CPU or CUDA, a
  // Python error); the Python validator then runs from the start and raises
  // the exact error or handles the case.  So it accepts a subset of what the
  // validator accepts and yields the same batch.
  //   keeps: one (int64 CPU index tensor, data_ptr, length) per pair; with
  //   `shared` every pair has the same one and equal channel counts.
  //   tensor_types: the exact types accepted as tensors.
  static py::object from_pairs(py::handle pairs, py::handle keeps, bool shared, bool in_place,
                               bool refuse_inference, py::tuple tensor_types) {
    static PyObject* const kShape = PyUnicode_InternFromString("shape");
    static PyObject* const kStride = PyUnicode_InternFromString("stride");
    static PyObject* const kDataPtr = PyUnicode_InternFromString("data_ptr");
    static PyObject* const kElementSize = PyUnicode_InternFromString("element_size");
    static PyObject* const kDevice = PyUnicode_InternFromString("device");
    static PyObject* const kIsCpu = PyUnicode_InternFromString("is_cpu");
    static PyObject* const kIsCuda = PyUnicode_InternFromString("is_cuda");
    static PyObject* const kIsInference = PyUnicode_InternFromString("is_inference");
    const py::object none = py::none();
    if (!PyList_CheckExact(pairs.ptr()) && !PyTuple_CheckExact(pairs.ptr())) return none;
    // A snapshot: the attributes read below run torch code, not ours.
    const auto ps = py::reinterpret_steal<py::object>(PySequence_Tuple(pairs.ptr()));
    if (!ps || !PyList_CheckExact(keeps.ptr())) return fail();
    const Py_ssize_t n = PyTuple_GET_SIZE(ps.ptr());
    if (n == 0 || PyList_GET_SIZE(keeps.ptr()) != n) return none;
    SelectBatch b;
    b.keepalive_ = py::reinterpret_borrow<py::object>(keeps);  // the index tensors
    std::unordered_map<PyObject*, size_t> index;  // tensor -> position in b.t_
    std::set<std::pair<PyObject*, int64_t>> checked;  // (keep, channels) already checked
    int64_t channels = -1;
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* p = PyTuple_GET_ITEM(ps.ptr(), i);
      if (!PyTuple_CheckExact(p) && !PyList_CheckExact(p)) return none;
      const Py_ssize_t len = PySequence_Fast_GET_SIZE(p);
      if (len != 2 && len != 3) return none;
      const auto t = py::reinterpret_borrow<py::object>(PySequence_Fast_GET_ITEM(p, 0));
      int64_t dim = 0, block = 1;
      if (!exact_int(PySequence_Fast_GET_ITEM(p, 1), dim) || (len == 3 && !exact_int(PySequence_Fast_GET_ITEM(p, 2), block)))
        return fail();
      auto found = index.find(t.ptr());
      if (found == index.end()) {
        bool type_ok = false;
        for (py::handle ty : tensor_types) type_ok = type_ok || Py_TYPE(t.ptr()) == reinterpret_cast<PyTypeObject*>(ty.ptr());
        if (!type_ok) return none;
        SelectTensor st;
        st.first_pair = i;
        const auto shape = py::reinterpret_steal<py::object>(PyObject_GetAttr(t.ptr(), kShape));
        const auto stride = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t.ptr(), kStride));
        const auto ptr = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t.ptr(), kDataPtr));
        const auto item = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t.ptr(), kElementSize));
        auto device = py::reinterpret_steal<py::object>(PyObject_GetAttr(t.ptr(), kDevice));
        if (!shape || !stride || !ptr || !item || !device || !int_tuple(shape.ptr(), st.sizes) ||
            !int_tuple(stride.ptr(), st.strides) || st.sizes.empty() || st.sizes.size() != st.strides.size() ||
            !exact_int(item.ptr(), st.item))
          return fail();
        st.data = as_ptr<char>(PyLong_AsUnsignedLongLong(ptr.ptr()));
        if (PyErr_Occurred()) return fail();
        if (refuse_inference) {  // torch refuses their new layout only after the data moved
          const auto inf = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t.ptr(), kIsInference));
          if (!inf) return fail();
          if (inf.ptr() != Py_False) return none;
        }
        if (b.t_.empty()) {
          // Only CPU and CUDA tensors: other devices take the index_select fallback.
          const auto cpu = py::reinterpret_steal<py::object>(PyObject_GetAttr(t.ptr(), kIsCpu));
          const auto cuda = py::reinterpret_steal<py::object>(PyObject_GetAttr(t.ptr(), kIsCuda));
          if (!cpu || !cuda) return fail();
          if (cpu.ptr() != Py_True && cuda.ptr() != Py_True) return none;
          b.device_ = std::move(device);
        } else {
          const int eq = PyObject_RichCompareBool(device.ptr(), b.device_.ptr(), Py_EQ);
          if (eq != 1) return fail();
        }
        st.sels.resize(st.sizes.size());
        found = index.emplace(t.ptr(), b.t_.size()).first;
        b.t_.push_back(std::move(st));
        b.tensors_.push_back(t);
      }
      SelectTensor& st = b.t_[found->second];
      const int64_t ndim = static_cast<int64_t>(st.sizes.size());
      if (dim < -ndim || dim >= ndim) return none;
      if (dim < 0) dim += ndim;
      const int64_t size = st.sizes[dim];
      if (block < 1 || size % block != 0) return none;
      const int64_t nch = size / block;
      if (shared) {
        if (channels >= 0 && nch != channels) return none;
        channels = nch;
      }
      PyObject* k = PyList_GET_ITEM(keeps.ptr(), i);
      int64_t kptr = 0, klen = 0;
      if (!PyTuple_CheckExact(k) || PyTuple_GET_SIZE(k) != 3 || !exact_int(PyTuple_GET_ITEM(k, 1), kptr) ||
          !exact_int(PyTuple_GET_ITEM(k, 2), klen))
        return fail();
      if (checked.emplace(k, nch).second &&
          select_check_keep(as_ptr<const int64_t>(static_cast<uintptr_t>(kptr)), klen, nch).first != 0)
        return none;
      SelectTensor::Sel& sel = st.sels[dim];
      if (sel.on) return none;
      sel.on = true;
      sel.keep = as_ptr<const int64_t>(static_cast<uintptr_t>(kptr));
      sel.keep_len = klen;
      sel.block = block;
    }
    for (auto& t : b.t_) select_plan_tensor(t);
    if (in_place) {
      if (!b.not_dense(true).empty() || select_first_overlap(b.t_).first >= 0) return none;
    }
    return py::cast(std::move(b));
  }

  // The distinct tensors (fast path only), in order of first appearance.
  const std::vector<py::object>& tensors() const { return tensors_; }
  // Their device (fast path only).
  py::object device() const { return device_; }

  // Indices of the tensors that are not dense (skipping empty ones with nonempty).
  std::vector<int64_t> not_dense(bool nonempty) const {
    std::vector<int64_t> out;
    for (size_t i = 0; i < t_.size(); ++i)
      if (!t_[i].dense && !(nonempty && t_[i].numel == 0)) out.push_back(static_cast<int64_t>(i));
    return out;
  }

  // First pairs of two tensors that overlap in memory, or None.
  py::object overlap() const {
    const auto pr = select_first_overlap(t_);
    if (pr.first < 0) return py::none();
    return py::make_tuple(pr.first, pr.second);
  }

  // Compacted (sizes, strides) of every tensor.
  py::list layouts() const {
    py::list out(t_.size());
    for (size_t i = 0; i < t_.size(); ++i)
      out[i] = py::make_tuple(py::cast(t_[i].new_sizes), py::cast(t_[i].new_strides));
    return out;
  }

  // Replaces tensor i's source by a dense copy (select_channels of a tensor that is not dense).
  void set_source(int64_t i, uintptr_t data, const std::vector<int64_t>& strides) {
    SelectTensor& t = t_.at(static_cast<size_t>(i));
    if (strides.size() != t.sizes.size()) throw std::invalid_argument("SelectBatch.set_source: wrong number of strides");
    t.data = as_ptr<char>(data);
    t.strides = strides;
    select_plan_tensor(t, /*force_order=*/true);
  }

  // Gives each tensor of `tensors` (the batch's, in order) its compacted layout, or
  // with `original` the one it had, through its own `as_strided_` (same storage and
  // offset): one loop here instead of one Python call per tensor.  The caller holds
  // torch.no_grad().  Raises what as_strided_ raises; tensors before that have
  // their new layout (the caller's undo puts every one back).
  void apply_layouts(py::sequence tensors, bool original) const {
    static PyObject* const kAsStrided = PyUnicode_InternFromString("as_strided_");
    if (static_cast<size_t>(py::len(tensors)) != t_.size())
      throw std::invalid_argument("SelectBatch.apply_layouts: one tensor per batch tensor");
    for (size_t i = 0; i < t_.size(); ++i) {
      const SelectTensor& t = t_[i];
      const std::vector<int64_t>& sizes = original ? t.sizes : t.new_sizes;
      const std::vector<int64_t>& strides = original ? t.strides : t.new_strides;
      const py::tuple s = int_tuple_of(sizes), st = int_tuple_of(strides);
      const py::object tensor = tensors[i];
      PyObject* r = PyObject_CallMethodObjArgs(tensor.ptr(), kAsStrided, s.ptr(), st.ptr(), nullptr);
      if (r == nullptr) throw py::error_already_set();
      Py_DECREF(r);
    }
  }

  // Copies the bytes that in-place compaction overwrites (the first kept_bytes
  // of each tensor, from its data pointer) into a buffer the batch owns, so
  // restore() can put them back.  Returns the buffer's size in bytes.  Throws
  // (MemoryError) before touching anything if the buffer cannot be allocated.
  int64_t snapshot(int threads) {
    std::vector<std::pair<char*, int64_t>> regions = written_regions();
    int64_t total = 0;
    for (const auto& r : regions) total += r.second;
    std::unique_ptr<char[]> saved(new char[static_cast<size_t>(std::max<int64_t>(total, 1))]);  // not zeroed
    {
      py::gil_scoped_release nogil;
      copy_regions(regions, saved.get(), /*to_regions=*/false, threads);
    }
    saved_ = std::move(saved);  // (never null once taken: at least one byte)
    return total;
  }

  // Writes the snapshot back (the data only; the caller restores the layouts).
  void restore(int threads) const {
    if (!saved_) throw std::invalid_argument("SelectBatch.restore: no snapshot was taken");
    std::vector<std::pair<char*, int64_t>> regions = written_regions();
    py::gil_scoped_release nogil;
    copy_regions(regions, saved_.get(), /*to_regions=*/true, threads);
  }

  // Compacts on the CPU, in place (dsts None) or into dsts[i] (one address per tensor).
  void run_cpu(const std::optional<std::vector<uintptr_t>>& dsts, int threads) const {
    std::vector<SelectJob> jobs = make_jobs(dsts, 0, "select_cpu");
    py::gil_scoped_release nogil;
    select_cpu(jobs, threads);
  }

#if PYPRUNE_WITH_CUDA
  // Bytes of the scratch buffer of in-place compaction on a CUDA device.
  int64_t cuda_scratch_bytes() const {
    int64_t total = 0;
    for (const auto& t : t_)
      if (t.kept_bytes > 0) total += (t.kept_bytes + 15) / 16 * 16;
    return total;
  }

  // Words of the job tables of cuda_pack.
  int64_t cuda_table_words(const std::optional<std::vector<uintptr_t>>& dsts) const {
    int64_t words = 0;
    for (const auto& jobs : cuda_launches(dsts, 0)) words += select_cuda_table_words(jobs);
    return words;
  }

  // Fills the host table (for a device copy at `table`) of the launches:
  // into dsts[i] (one launch), or in place with dsts None: gather into
  // `scratch`, then copy each block back to its tensor (two launches).
  // Returns (word offset, blocks) per launch.
  std::vector<std::pair<int64_t, int64_t>> cuda_pack(const std::optional<std::vector<uintptr_t>>& dsts,
                                                     uintptr_t scratch, uintptr_t host, uintptr_t table,
                                                     int64_t words) const {
    std::vector<std::pair<int64_t, int64_t>> out;
    int64_t off = 0;
    for (const auto& jobs : cuda_launches(dsts, scratch)) {
      const int64_t w = select_cuda_table_words(jobs);
      if (off + w > words) throw std::invalid_argument("SelectBatch.cuda_pack: table too small");
      out.emplace_back(off, select_cuda_pack(jobs, as_ptr<int64_t>(host) + off, table + static_cast<uintptr_t>(off) * 8, w));
      off += w;
    }
    return out;
  }
#endif

 private:
  // (start, bytes) that in-place compaction writes, per tensor with kept bytes.
  std::vector<std::pair<char*, int64_t>> written_regions() const {
    std::vector<std::pair<char*, int64_t>> regions;
    regions.reserve(t_.size());
    for (const auto& t : t_)
      if (t.kept_bytes > 0) regions.emplace_back(t.data, t.kept_bytes);
    return regions;
  }

  // Copies the regions, laid end to end in buf, from (to_regions false) or to them.
  static void copy_regions(const std::vector<std::pair<char*, int64_t>>& regions, char* buf, bool to_regions,
                           int threads) {
    std::vector<int64_t> start(regions.size() + 1, 0);
    for (size_t i = 0; i < regions.size(); ++i) start[i + 1] = start[i] + regions[i].second;
    const int64_t total = start.back();
    constexpr int64_t kGrain = 1 << 20;  // bytes per block at least: small snapshots stay on one thread
    parallel_for(total, threads, kGrain, [&](int64_t b, int64_t e, int) {
      // the regions overlapping bytes [b, e) of the buffer
      size_t i = static_cast<size_t>(std::upper_bound(start.begin(), start.end(), b) - start.begin()) - 1;
      for (; i < regions.size() && start[i] < e; ++i) {
        const int64_t lo = std::max(b, start[i]), hi = std::min(e, start[i + 1]);
        if (hi <= lo) continue;
        char* region = regions[i].first + (lo - start[i]);
        if (to_regions) {
          std::memcpy(region, buf + lo, static_cast<size_t>(hi - lo));
        } else {
          std::memcpy(buf + lo, region, static_cast<size_t>(hi - lo));
        }
      }
    });
  }

  // Jobs of the tensors with kept bytes, into dsts[i] or (dsts None) to base.
  std::vector<SelectJob> make_jobs(const std::optional<std::vector<uintptr_t>>& dsts, uintptr_t base,
                                   const char* op) const {
    if (dsts && dsts->size() != t_.size()) throw std::invalid_argument(std::string(op) + ": one dst per tensor");
    std::vector<SelectJob> jobs;
    jobs.reserve(t_.size());
    for (size_t i = 0; i < t_.size(); ++i) {
      const SelectTensor& t = t_[i];
      if (t.kept_bytes <= 0) continue;
      char* dst = dsts ? as_ptr<char>((*dsts)[i]) : base ? as_ptr<char>(base) : t.data;
      jobs.push_back(select_tensor_job(t, dst));
      if (jobs.back().dims.size() > 16) throw std::invalid_argument(std::string(op) + ": more than 16 dimensions");
      if (!dsts && base) base += static_cast<uintptr_t>((t.kept_bytes + 15) / 16 * 16);
    }
    return jobs;
  }

#if PYPRUNE_WITH_CUDA
  std::vector<std::vector<SelectJob>> cuda_launches(const std::optional<std::vector<uintptr_t>>& dsts,
                                                    uintptr_t scratch) const {
    std::vector<std::vector<SelectJob>> launches;
    if (dsts) {
      launches.push_back(make_jobs(dsts, 0, "select_cuda"));
    } else {
      // Sources and destinations of a launch must not overlap: gather every
      // tensor into its 16-byte aligned slot of the scratch buffer, then copy back.
      const uintptr_t base = scratch ? scratch : 16;  // any non-null base sizes the tables
      launches.push_back(make_jobs(std::nullopt, base, "select_cuda"));
      std::vector<SelectJob> back;
      uintptr_t at = base;
      for (const auto& t : t_) {
        if (t.kept_bytes <= 0) continue;
        SelectJob job;
        job.src = as_ptr<char>(at);
        job.dst = t.data;
        job.chunk_bytes = t.kept_bytes;
        back.push_back(std::move(job));
        at += static_cast<uintptr_t>((t.kept_bytes + 15) / 16 * 16);
      }
      launches.push_back(std::move(back));
    }
    launches.erase(std::remove_if(launches.begin(), launches.end(), [](const auto& j) { return j.empty(); }),
                   launches.end());
    return launches;
  }
#endif

  SelectBatch() = default;

  // None, clearing a pending Python error: the validator will meet it again.
  static py::object fail() {
    PyErr_Clear();
    return py::none();
  }

  static bool exact_int(PyObject* o, int64_t& v) {
    if (!PyLong_CheckExact(o)) return false;  // bool and int subclasses: the validator decides
    int overflow = 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && !(v == -1 && PyErr_Occurred());
  }

  static py::tuple int_tuple_of(const std::vector<int64_t>& v) {
    py::tuple out(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      PyObject* x = PyLong_FromLongLong(v[i]);
      if (x == nullptr) throw py::error_already_set();
      PyTuple_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), x);
    }
    return out;
  }

  static bool int_tuple(PyObject* o, std::vector<int64_t>& out) {
    if (!PyTuple_Check(o)) return false;  // torch.Size is a tuple
    const Py_ssize_t n = PyTuple_GET_SIZE(o);
    out.resize(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!exact_int(PyTuple_GET_ITEM(o, i), out[static_cast<size_t>(i)])) return false;
    return true;
  }

  std::vector<SelectTensor> t_;
  std::unique_ptr<char[]> saved_;  // snapshot(): the written regions, end to end (null before)
  std::vector<py::object> tensors_;  // fast path: the tensors of t_
  py::object device_;
  py::object keepalive_;
};

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
  m.def("row_abs_sum_many",
        [](const std::vector<std::tuple<uintptr_t, int, int64_t, int64_t, int64_t, uintptr_t>>& specs,
           int threads) {
          std::vector<RowAbsSumJob> jobs(specs.size());
          for (size_t i = 0; i < specs.size(); ++i) {
            const auto& [x, dtype, rows, cols, row_stride, out] = specs[i];
            if (rows < 0 || cols < 0 || row_stride < cols || (dtype != 0 && dtype != 1))
              throw std::invalid_argument("row_abs_sum_many: bad shape or dtype in spec " + std::to_string(i));
            jobs[i] = RowAbsSumJob{as_ptr<const void>(x), dtype, rows, cols, row_stride, as_ptr<void>(out)};
          }
          py::gil_scoped_release release;
          row_abs_sum_many(jobs.data(), static_cast<int64_t>(jobs.size()), threads);
        },
        py::arg("specs"), py::arg("threads"),
        "out[r] = sum of |x| along row r (columns contiguous), accumulated in double, for many "
        "matrices: specs are (x, dtype 0 float32 / 1 float64, rows, cols, row_stride, out) each.");
  m.def("select_check_keep",
        [](uintptr_t keep, int64_t n, int64_t size) { return select_check_keep(as_ptr<const int64_t>(keep), n, size); },
        py::arg("keep"), py::arg("n"), py::arg("size"),
        "Checks that n int64 indices at `keep` are sorted, unique and in [0, size): (0, 0), or "
        "(1, i) duplicate / (2, i) unsorted at i, i + 1, or (3, i) keep[i] out of range.");
  auto batch = py::class_<SelectBatch>(m, "SelectBatch",
                                       "The tensors of one select_channels call (metadata, validated pairs).")
      .def(py::init<const std::vector<SelectBatch::TensorSpec>&, const std::vector<int64_t>&, py::object>(),
           py::arg("tensors"), py::arg("sels"), py::arg("keepalive"))
      .def_static("from_pairs", &SelectBatch::from_pairs, py::arg("pairs"), py::arg("keeps"), py::arg("shared"),
                  py::arg("in_place"), py::arg("refuse_inference"), py::arg("tensor_types"))
      .def("tensors", &SelectBatch::tensors)
      .def("device", &SelectBatch::device)
      .def("not_dense", &SelectBatch::not_dense, py::arg("nonempty"))
      .def("overlap", &SelectBatch::overlap)
      .def("layouts", &SelectBatch::layouts)
      .def("apply_layouts", &SelectBatch::apply_layouts, py::arg("tensors"), py::arg("original"),
           "Gives each tensor its compacted (or with original=True its original) layout via as_strided_.")
      .def("snapshot", &SelectBatch::snapshot, py::arg("threads"),
           "Saves the bytes in-place compaction overwrites (for restore); returns their number.")
      .def("restore", &SelectBatch::restore, py::arg("threads"),
           "Writes the snapshot back (data only; the caller restores each tensor's layout).")
      .def("set_source", &SelectBatch::set_source, py::arg("i"), py::arg("data"), py::arg("strides"))
      .def("run_cpu", &SelectBatch::run_cpu, py::arg("dsts"), py::arg("threads"),
           "Compacts kept channel sub-grids on the CPU, in place (dsts None) or into dsts.");
#if PYPRUNE_WITH_CUDA
  batch.def("cuda_scratch_bytes", &SelectBatch::cuda_scratch_bytes)
      .def("cuda_table_words", &SelectBatch::cuda_table_words, py::arg("dsts"))
      .def("cuda_pack", &SelectBatch::cuda_pack, py::arg("dsts"), py::arg("scratch"), py::arg("host"),
           py::arg("table"), py::arg("words"),
           "Fills the host job tables (kept indices read from host memory); returns (word offset, blocks) "
           "per launch.");
#else
  (void)batch;
#endif

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
    d["thread_backend"] = std::string(thread_backend());
    return d;
  });
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_driver_version", &cuda_driver_version);
}
