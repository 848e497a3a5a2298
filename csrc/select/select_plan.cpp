// Planning of select_channels calls: memory order, density, the compacted
// layout and the job of each tensor, from metadata alone.  This mirrors what
// pyprune/ops/select.py once did per tensor in Python, where it dominated the
// cost of a call.
#include <algorithm>
#include <numeric>
#include <tuple>

#include "select/select.h"

namespace pyprune {

void select_plan_tensor(SelectTensor& t, bool force_order) {
  const int n = static_cast<int>(t.sizes.size());
  // Memory order: decreasing stride, ties in dimension order.
  t.order.resize(static_cast<size_t>(n));
  std::iota(t.order.begin(), t.order.end(), 0);
  std::sort(t.order.begin(), t.order.end(), [&](int a, int b) {
    return t.strides[a] != t.strides[b] ? t.strides[a] > t.strides[b] : a < b;
  });
  // Dense: from the innermost dimension out, each stride is the number of
  // elements inside it (a size-1 dimension may have any stride).
  t.dense = true;
  int64_t expected = 1;
  for (int k = n - 1; k >= 0; --k) {
    const int d = t.order[static_cast<size_t>(k)];
    if (t.sizes[d] != 1 && t.strides[d] != expected) {
      t.dense = false;
      break;
    }
    expected *= t.sizes[d];
  }
  if (!t.dense && force_order) std::iota(t.order.begin(), t.order.end(), 0);
  t.numel = 1;
  for (int64_t s : t.sizes) t.numel *= s;
  t.new_sizes = t.sizes;
  for (int d = 0; d < n; ++d)
    if (t.sels[d].on) t.new_sizes[d] = t.sels[d].keep_len * t.sels[d].block;
  // Dense strides of the compacted tensor in the same memory order.
  t.new_strides.assign(static_cast<size_t>(n), 0);
  int64_t s = 1;
  for (int k = n - 1; k >= 0; --k) {
    const int d = t.order[static_cast<size_t>(k)];
    t.new_strides[d] = s;
    s *= std::max<int64_t>(1, t.new_sizes[d]);
  }
  t.kept_bytes = t.item;
  for (int64_t v : t.new_sizes) t.kept_bytes *= v;
}

SelectJob select_tensor_job(const SelectTensor& t, char* dst) {
  // Dimensions in memory order; a dimension selected with block k > 1 splits
  // into its channels (selected) and the k indices inside each (kept whole).
  std::vector<SelectDim> dims;
  dims.reserve(t.order.size() + 2);
  for (int d : t.order) {
    const int64_t size = t.sizes[d], stride = t.strides[d] * t.item;
    const SelectTensor::Sel& sel = t.sels[d];
    if (!sel.on) {
      dims.push_back(SelectDim{size, stride, nullptr, size});
    } else {
      dims.push_back(SelectDim{size / sel.block, stride * sel.block, sel.keep, sel.keep_len});
      if (sel.block > 1) dims.push_back(SelectDim{sel.block, stride, nullptr, sel.block});
    }
  }
  int last = -1;
  for (int i = 0; i < static_cast<int>(dims.size()); ++i)
    if (dims[i].keep) last = i;
  SelectJob job;
  job.src = t.data;
  job.dst = dst;
  job.chunk_bytes = t.item;  // everything after the last selected dimension is one chunk
  for (size_t i = static_cast<size_t>(last + 1); i < dims.size(); ++i) job.chunk_bytes *= dims[i].size;
  // Merge neighbouring unselected dimensions that step like one.
  for (int i = 0; i <= last; ++i) {
    const SelectDim& dd = dims[i];
    if (!job.dims.empty() && !job.dims.back().keep && !dd.keep && job.dims.back().stride == dd.stride * dd.size) {
      SelectDim& prev = job.dims.back();
      prev.size *= dd.size;
      prev.stride = dd.stride;
      prev.keep_len = prev.size;
    } else {
      job.dims.push_back(dd);
    }
  }
  return job;
}

std::pair<int, int64_t> select_check_keep(const int64_t* keep, int64_t n, int64_t size) {
  if (n <= 0) return {0, 0};
  for (int64_t i = 0; i + 1 < n; ++i)
    if (keep[i + 1] <= keep[i]) return {keep[i + 1] == keep[i] ? 1 : 2, i};
  if (keep[0] < 0) return {3, 0};
  if (keep[n - 1] >= size) return {3, n - 1};
  return {0, 0};
}

std::pair<int64_t, int64_t> select_first_overlap(const std::vector<SelectTensor>& tensors) {
  std::vector<std::tuple<uintptr_t, uintptr_t, int64_t>> spans;  // start, end, first pair
  spans.reserve(tensors.size());
  for (const auto& t : tensors) {
    if (t.numel == 0) continue;
    const uintptr_t start = reinterpret_cast<uintptr_t>(t.data);
    spans.emplace_back(start, start + static_cast<uintptr_t>(t.numel * t.item), t.first_pair);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (std::get<0>(spans[i]) < std::get<1>(spans[i - 1])) return {std::get<2>(spans[i - 1]), std::get<2>(spans[i])};
  return {-1, -1};
}

}  // namespace pyprune
