// Multi-scale deformable attention, forward only, for CPU float32 tensors.
//
// mmcv 2.1.0 ships this kernel for CUDA/MLU/NPU only; on CPU it runs a pure-PyTorch version
// (grid_sample per level + stack + mul + sum) that dominates a Co-DINO CPU forward. This op computes
// the same thing in one pass:
//
//   out[b, q, h, :] = sum_{l, p} attn[b, q, h, l, p] * bilinear(value[b, level l, :, h, :], loc[b, q, h, l, p])
//
// Conventions (the same as mmcv's CUDA kernel and grid_sample(align_corners=False, padding_mode="zeros")):
//   pixel coordinate = location * size - 0.5 (location (0, 0) is the top-left corner of the map, (1, 1)
//   the bottom-right corner), bilinear interpolation, and every corner that falls outside the map reads 0.
//
// Tensors, as mmcv passes them to its CUDA function (no transposes needed):
//   value               (bs, num_keys, num_heads, head_dim)                      float32
//   spatial_shapes      (num_levels, 2) int64, rows (h, w)
//   level_start_index   (num_levels,)   int64, first key of each level
//   sampling_locations  (bs, num_queries, num_heads, num_levels, num_points, 2)  float32, last dim (x, y)
//   attention_weights   (bs, num_queries, num_heads, num_levels, num_points)     float32
//   -> output           (bs, num_queries, num_heads * head_dim)                  float32
//
// msda_fused_forward takes what mmcv's MultiScaleDeformableAttention.forward has between its linear layers
// instead: the raw sampling_offsets and attention-weight logits of each query (rows of the linear outputs,
// read in place), the reference points, and computes the softmax and the sampling locations per row
// inside the same pass (no (bs, queries, heads, levels, points, 2) tensors in between). It can write its
// output sequence-first, the layout mmcv's transformer layers use, so no permute follows it.
//
// Work is split over (batch, query) with at::parallel_for (build with -fopenmp, otherwise ATen's
// OpenMP backend runs the loop on one thread). Each (query, head) accumulates its head_dim outputs in a
// local float32 buffer. The inner loop is compiled several times for different instruction sets and
// the widest one this CPU supports is picked at run time, so one binary runs on every x86-64 host.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "msda_kernel.h"

namespace codetr_ops {
namespace {

constexpr const char* kPlain = "codetr_ops::msda_forward: ";
constexpr const char* kFused = "codetr_ops::msda_fused_forward: ";

void check_float_cpu(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), op, "expects CPU tensors");
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, "expects float32 tensors, got ", t->scalar_type());
  }
}

// The levels' shapes and first keys as contiguous int64, each level checked to lie inside num_keys.
std::pair<at::Tensor, at::Tensor> level_tables(const char* op, const at::Tensor& spatial_shapes,
                                               const at::Tensor& level_start_index, int64_t num_levels,
                                               int64_t num_keys) {
  at::Tensor shapes = spatial_shapes.to(at::kCPU, at::kLong).contiguous();
  at::Tensor starts = level_start_index.to(at::kCPU, at::kLong).contiguous();
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(0) == num_levels && shapes.size(1) == 2, op,
              "spatial_shapes must be (num_levels=", num_levels, ", 2), got ", shapes.sizes());
  TORCH_CHECK(starts.dim() == 1 && starts.size(0) == num_levels, op,
              "level_start_index must be (num_levels=", num_levels, ",), got ", starts.sizes());
  const int64_t* shape_ptr = shapes.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  for (int64_t l = 0; l < num_levels; ++l) {
    const int64_t h = shape_ptr[2 * l];
    const int64_t w = shape_ptr[2 * l + 1];
    TORCH_CHECK(h > 0 && w > 0, op, "level ", l, " has an empty shape (", h, ", ", w, ")");
    // h * w <= num_keys - start, written without a product that could wrap around int64.
    const int64_t start = start_ptr[l];
    TORCH_CHECK(start >= 0 && start <= num_keys && h <= (num_keys - start) / w, op, "level ", l,
                " (start ", start, ", ", h, "x", w, ") does not fit in ", num_keys, " keys");
  }
  return {shapes, starts};
}

// value as the kernel reads it: any layout whose head_dim elements are contiguous, else a copy.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

void set_value(Problem& pb, const at::Tensor& value) {
  pb.value = value.data_ptr<float>();
  pb.value_stride_b = value.stride(0);
  pb.value_stride_k = value.stride(1);
  pb.value_stride_h = value.stride(2);
  pb.batch = value.size(0);
  pb.num_keys = value.size(1);
  pb.num_heads = value.size(2);
  pb.head_dim = value.size(3);
}

void run(const Problem& problem, const std::string& isa) {
  const Variant variant = pick_variant(isa);
  // About 8 heads x 5 levels x 4 points x 4 corners of 32-float rows per query: 16 queries is ~100 us.
  constexpr int64_t kGrain = 16;
  at::parallel_for(0, problem.batch * problem.num_queries, kGrain,
                   [&](int64_t begin, int64_t end) { variant.fn(problem, begin, end); });
}

at::Tensor msda_forward(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights, c10::string_view isa) {
  const char* op = kPlain;
  check_float_cpu(op, {&value_in, &sampling_locations, &attention_weights});
  TORCH_CHECK(value_in.dim() == 4, op, "value must be (bs, num_keys, num_heads, head_dim), got ",
              value_in.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2, op,
              "sampling_locations must be (bs, num_queries, num_heads, num_levels, num_points, 2), got ",
              sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, op,
              "attention_weights must be (bs, num_queries, num_heads, num_levels, num_points), got ",
              attention_weights.sizes());
  const at::Tensor value = rows_contiguous(value_in);
  Problem pb{};
  set_value(pb, value);
  pb.num_queries = sampling_locations.size(1);
  pb.num_levels = sampling_locations.size(3);
  pb.num_points = sampling_locations.size(4);
  TORCH_CHECK(sampling_locations.size(0) == pb.batch && sampling_locations.size(2) == pb.num_heads, op,
              "sampling_locations ", sampling_locations.sizes(), " does not match value ", value.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), op, "attention_weights ",
              attention_weights.sizes(), " does not match sampling_locations ", sampling_locations.sizes());
  const auto [shapes, starts] = level_tables(op, spatial_shapes, level_start_index, pb.num_levels,
                                             pb.num_keys);
  const std::string isa_name(isa);
  pick_variant(isa_name);  // refuse an unknown instruction set even when there is nothing to compute
  const at::Tensor loc = sampling_locations.contiguous();
  const at::Tensor attn = attention_weights.contiguous();
  at::Tensor output = at::empty({pb.batch, pb.num_queries, pb.num_heads * pb.head_dim}, value.options());
  if (output.numel() == 0) return output;
  pb.shapes = shapes.data_ptr<int64_t>();
  pb.starts = starts.data_ptr<int64_t>();
  pb.loc = loc.data_ptr<float>();
  pb.attn = attn.data_ptr<float>();
  pb.out = output.data_ptr<float>();
  run(pb, isa_name);
  return output;
}

at::Tensor msda_fused_forward(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index, const at::Tensor& reference_points,
                              const at::Tensor& sampling_offsets, const at::Tensor& attention_logits,
                              int64_t num_points, bool sequence_first, c10::string_view isa) {
  const char* op = kFused;
  check_float_cpu(op, {&value_in, &reference_points, &sampling_offsets, &attention_logits});
  TORCH_CHECK(value_in.dim() == 4, op, "value must be (bs, num_keys, num_heads, head_dim), got ",
              value_in.sizes());
  TORCH_CHECK(reference_points.dim() == 4 && (reference_points.size(3) == 2 || reference_points.size(3) == 4),
              op, "reference_points must be (bs, num_queries, num_levels, 2 or 4), got ",
              reference_points.sizes());
  TORCH_CHECK(num_points > 0, op, "num_points must be positive, got ", num_points);
  const at::Tensor value = rows_contiguous(value_in);
  const at::Tensor offsets = rows_contiguous(sampling_offsets);
  const at::Tensor logits = rows_contiguous(attention_logits);
  const at::Tensor ref = reference_points.contiguous();
  Problem pb{};
  set_value(pb, value);
  pb.num_queries = ref.size(1);
  pb.num_levels = ref.size(2);
  pb.num_points = num_points;
  const int64_t per_query = pb.num_heads * pb.num_levels * num_points;
  TORCH_CHECK(ref.size(0) == pb.batch, op, "reference_points ", ref.sizes(), " does not match value ",
              value.sizes());
  TORCH_CHECK(offsets.dim() == 3 && offsets.size(0) == pb.batch && offsets.size(1) == pb.num_queries &&
                  offsets.size(2) == 2 * per_query,
              op, "sampling_offsets must be (bs, num_queries, heads*levels*points*2 = ", 2 * per_query,
              "), got ", offsets.sizes());
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == pb.batch && logits.size(1) == pb.num_queries &&
                  logits.size(2) == per_query,
              op, "attention_logits must be (bs, num_queries, heads*levels*points = ", per_query, "), got ",
              logits.sizes());
  const auto [shapes, starts] = level_tables(op, spatial_shapes, level_start_index, pb.num_levels,
                                             pb.num_keys);
  const std::string isa_name(isa);
  pick_variant(isa_name);
  const int64_t channels = pb.num_heads * pb.head_dim;
  at::Tensor output = sequence_first ? at::empty({pb.num_queries, pb.batch, channels}, value.options())
                                     : at::empty({pb.batch, pb.num_queries, channels}, value.options());
  if (output.numel() == 0) return output;
  pb.shapes = shapes.data_ptr<int64_t>();
  pb.starts = starts.data_ptr<int64_t>();
  pb.offsets = offsets.data_ptr<float>();
  pb.offsets_stride_b = offsets.stride(0);
  pb.offsets_stride_q = offsets.stride(1);
  pb.logits = logits.data_ptr<float>();
  pb.logits_stride_b = logits.stride(0);
  pb.logits_stride_q = logits.stride(1);
  pb.ref = ref.data_ptr<float>();
  pb.ref_dim = ref.size(3);
  pb.out = output.data_ptr<float>();
  pb.sequence_first = sequence_first;
  run(pb, isa_name);
  return output;
}

std::vector<std::string> msda_isas() {
  std::vector<std::string> out;
  for (const auto& v : variants()) {
    if (v.supported) out.emplace_back(v.name);
  }
  return out;
}

std::string msda_isa() { return pick_variant("auto").name; }

// at::parallel_for is compiled into this library: report whether it really is OpenMP-parallel here.
bool msda_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(codetr_ops, m) {
  m.def(
      "msda_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, str isa=\"auto\") -> Tensor");
  m.def(
      "msda_fused_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor reference_points, Tensor sampling_offsets, Tensor attention_logits, int num_points, "
      "bool sequence_first=False, str isa=\"auto\") -> Tensor");
  m.def("msda_isas() -> str[]", &msda_isas);
  m.def("msda_isa() -> str", &msda_isa);
  m.def("msda_openmp() -> bool", &msda_openmp);
}

TORCH_LIBRARY_IMPL(codetr_ops, CPU, m) {
  m.impl("msda_forward", &msda_forward);
  m.impl("msda_fused_forward", &msda_fused_forward);
}

}  // namespace codetr_ops
