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
// Work is split over (batch, query) with at::parallel_for (build with -fopenmp, otherwise ATen's
// OpenMP backend runs the loop on one thread). Each (query, head) accumulates its head_dim outputs in a
// local float32 buffer. The inner loop is compiled several times for different instruction sets and
// the widest one this CPU supports is picked at run time, so one binary runs on every x86-64 host.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace codetr_ops {
namespace {

struct Problem {
  const float* value;
  const int64_t* shapes;  // (num_levels, 2): h, w
  const int64_t* starts;  // (num_levels,)
  const float* loc;
  const float* attn;
  float* out;
  int64_t num_keys;
  int64_t num_queries;
  int64_t num_heads;
  int64_t head_dim;
  int64_t num_levels;
  int64_t num_points;
};

// Vectors of kLanes floats (GCC vector extensions): 4 for SSE2, 8 for AVX2, 16 for AVX-512, so each
// variant keeps its accumulators in registers of its own width.
typedef float Vec4 __attribute__((vector_size(16)));
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec16 __attribute__((vector_size(64)));
template <int kLanes> struct VecOf;
template <> struct VecOf<4> { using type = Vec4; };
template <> struct VecOf<8> { using type = Vec8; };
template <> struct VecOf<16> { using type = Vec16; };

template <typename V>
static inline __attribute__((always_inline)) V load_vec(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

// The bilinear corners of one sampling point: their weights (bilinear x attention) and the rows they read.
struct Corners {
  float w[4];
  int64_t offset[4];  // from the level's first key, in floats
  bool valid[4];
};

enum class Point { kInside, kOutside, kNonFinite };

// kOutside: the point lies outside the map (it contributes nothing). kNonFinite: its location or attention
// weight is NaN or infinite; mmcv's CPU path then returns NaN for the whole head (grid_sample's weights
// become NaN and NaN * 0 stays NaN), and so do we, so a numeric fault upstream stays visible.
static inline __attribute__((always_inline)) Point corners(int64_t height, int64_t width, int64_t key_stride,
                                                           float loc_x, float loc_y, float w_attn, Corners& c) {
  const float x = loc_x * static_cast<float>(width) - 0.5f;
  const float y = loc_y * static_cast<float>(height) - 0.5f;
  // Written so that NaN locations also fail the "inside" test; the rare failures are then told apart.
  if (!(y > -1.f && x > -1.f && y < static_cast<float>(height) && x < static_cast<float>(width))) {
    return std::isfinite(x) && std::isfinite(y) && std::isfinite(w_attn) ? Point::kOutside : Point::kNonFinite;
  }
  if (!std::isfinite(w_attn)) return Point::kNonFinite;
  const float y0f = std::floor(y);
  const float x0f = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(y0f);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const float ly = y - y0f;
  const float lx = x - x0f;
  const float hy = 1.f - ly;
  const float hx = 1.f - lx;
  const bool top = y0 >= 0, bottom = y0 + 1 < height, left = x0 >= 0, right = x0 + 1 < width;
  c.valid[0] = top && left;
  c.valid[1] = top && right;
  c.valid[2] = bottom && left;
  c.valid[3] = bottom && right;
  c.w[0] = hy * hx * w_attn;
  c.w[1] = hy * lx * w_attn;
  c.w[2] = ly * hx * w_attn;
  c.w[3] = ly * lx * w_attn;
  const int64_t base = (y0 * width + x0) * key_stride;  // only read through for valid corners
  c.offset[0] = base;
  c.offset[1] = base + key_stride;
  c.offset[2] = base + width * key_stride;
  c.offset[3] = base + (width + 1) * key_stride;
  return Point::kInside;
}

// The whole kernel for rows [begin, end) of the flattened (batch, query) index.
// kDim: the head size when it is a multiple of kLanes (accumulators stay in vector registers), else 0.
template <int kDim, int kLanes>
static inline __attribute__((always_inline)) void msda_rows(const Problem& pb, int64_t begin, int64_t end) {
  static_assert(kDim % kLanes == 0, "kDim must be 0 or a multiple of kLanes");
  using Vec = typename VecOf<kLanes>::type;
  constexpr int kChunks = kDim / kLanes;
  const int64_t dim = kDim > 0 ? kDim : pb.head_dim;
  const int64_t heads = pb.num_heads;
  const int64_t levels = pb.num_levels;
  const int64_t points = pb.num_points;
  const int64_t key_stride = heads * dim;  // floats between two consecutive keys of one head
  std::vector<float> scalar_acc(kDim > 0 ? 0 : dim);

  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / pb.num_queries;
    const float* value_b = pb.value + b * pb.num_keys * key_stride;
    const float* loc_q = pb.loc + bq * heads * levels * points * 2;
    const float* attn_q = pb.attn + bq * heads * levels * points;
    float* out_q = pb.out + bq * heads * dim;

    for (int64_t h = 0; h < heads; ++h) {
      Vec acc[kChunks > 0 ? kChunks : 1];
      for (int k = 0; k < kChunks; ++k) acc[k] = Vec{};
      float* acc_s = scalar_acc.data();
      for (int64_t i = 0; i < (kDim > 0 ? 0 : dim); ++i) acc_s[i] = 0.f;

      const float* value_bh = value_b + h * dim;
      bool non_finite = false;
      for (int64_t l = 0; l < levels && !non_finite; ++l) {
        const int64_t height = pb.shapes[2 * l];
        const int64_t width = pb.shapes[2 * l + 1];
        const float* value_l = value_bh + pb.starts[l] * key_stride;
        const float* loc_l = loc_q + (h * levels + l) * points * 2;
        const float* attn_l = attn_q + (h * levels + l) * points;
        for (int64_t p = 0; p < points; ++p) {
          Corners c;
          const Point where = corners(height, width, key_stride, loc_l[2 * p], loc_l[2 * p + 1], attn_l[p], c);
          if (where == Point::kNonFinite) {
            non_finite = true;
            break;
          }
          if (where == Point::kOutside) continue;
          for (int corner = 0; corner < 4; ++corner) {
            if (!c.valid[corner]) continue;
            const float w = c.w[corner];
            const float* row = value_l + c.offset[corner];
            if constexpr (kDim > 0) {
              for (int k = 0; k < kChunks; ++k) acc[k] += w * load_vec<Vec>(row + kLanes * k);
            } else {
              for (int64_t i = 0; i < dim; ++i) acc_s[i] += w * row[i];
            }
          }
        }
      }
      float* out = out_q + h * dim;
      if (non_finite) {
        for (int64_t i = 0; i < dim; ++i) out[i] = std::numeric_limits<float>::quiet_NaN();
      } else if constexpr (kDim > 0) {
        for (int k = 0; k < kChunks; ++k) std::memcpy(out + kLanes * k, &acc[k], sizeof(Vec));
      } else {
        std::memcpy(out, acc_s, sizeof(float) * dim);
      }
    }
  }
}

// One entry point per instruction set; head sizes 32 (Co-DINO) and 16/64 get unrolled loops.
#define CODETR_MSDA_VARIANT(NAME, LANES, ATTR)                               \
  ATTR static void NAME(const Problem& pb, int64_t begin, int64_t end) {    \
    switch (pb.head_dim) {                                                   \
      case 16: msda_rows<16, LANES>(pb, begin, end); break;                  \
      case 32: msda_rows<32, LANES>(pb, begin, end); break;                  \
      case 64: msda_rows<64, LANES>(pb, begin, end); break;                  \
      default: msda_rows<0, LANES>(pb, begin, end); break;                   \
    }                                                                        \
  }

#if defined(__x86_64__) || defined(__i386__)
#define CODETR_MSDA_X86 1
CODETR_MSDA_VARIANT(msda_rows_baseline, 4, )
CODETR_MSDA_VARIANT(msda_rows_avx2, 8, __attribute__((target("avx2,fma"))))
CODETR_MSDA_VARIANT(msda_rows_avx512, 16, __attribute__((target("avx512f,avx2,fma"))))
#else
#define CODETR_MSDA_X86 0
CODETR_MSDA_VARIANT(msda_rows_baseline, 4, )
#endif

using RowsFn = void (*)(const Problem&, int64_t, int64_t);

struct Variant {
  const char* name;
  RowsFn fn;
  bool supported;
};

std::vector<Variant> variants() {
  std::vector<Variant> out;
#if CODETR_MSDA_X86
  __builtin_cpu_init();
  out.push_back({"avx512", msda_rows_avx512, static_cast<bool>(__builtin_cpu_supports("avx512f"))});
  out.push_back({"avx2", msda_rows_avx2,
                 __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")});
#endif
  out.push_back({"baseline", msda_rows_baseline, true});
  return out;
}

// isa == "auto": the widest supported variant, unless CODETR_MSDA_ISA (auto, baseline, avx2, avx512) or
// else ATen's own ATEN_CPU_CAPABILITY (default, avx2, avx512) names a narrower one.
Variant pick_variant(const std::string& isa) {
  std::string wanted = isa;
  if (wanted.empty() || wanted == "auto") {
    const char* ours = std::getenv("CODETR_MSDA_ISA");
    const char* aten = std::getenv("ATEN_CPU_CAPABILITY");
    if (ours && *ours) {
      wanted = ours;
    } else if (aten && *aten) {
      wanted = std::string(aten) == "default" ? "baseline" : aten;
      // ATen knows more levels (e.g. zvector, sve); ones we have no variant for mean "widest".
      bool known = false;
      for (const auto& v : variants()) known = known || wanted == v.name;
      if (!known) wanted = "auto";
    } else {
      wanted = "auto";
    }
  }
  const auto all = variants();
  for (const auto& v : all) {
    if (!v.supported) continue;
    if (wanted == "auto" || wanted == v.name) return v;
  }
  std::string known;
  for (const auto& v : all) {
    if (v.supported) known += std::string(known.empty() ? "" : ", ") + v.name;
  }
  TORCH_CHECK(false, "codetr_ops::msda_forward: instruction set '", wanted,
              "' is not available on this CPU (available: auto, ", known, ")");
}

at::Tensor msda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights, c10::string_view isa) {
  const char* op = "codetr_ops::msda_forward: ";
  TORCH_CHECK(value.device().is_cpu() && sampling_locations.device().is_cpu() &&
                  attention_weights.device().is_cpu(),
              op, "expects CPU tensors");
  TORCH_CHECK(value.scalar_type() == at::kFloat && sampling_locations.scalar_type() == at::kFloat &&
                  attention_weights.scalar_type() == at::kFloat,
              op, "expects float32 value, sampling_locations and attention_weights (got ",
              value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ",
              attention_weights.scalar_type(), ")");
  TORCH_CHECK(value.dim() == 4, op, "value must be (bs, num_keys, num_heads, head_dim), got ",
              value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2, op,
              "sampling_locations must be (bs, num_queries, num_heads, num_levels, num_points, 2), got ",
              sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, op,
              "attention_weights must be (bs, num_queries, num_heads, num_levels, num_points), got ",
              attention_weights.sizes());

  const int64_t bs = value.size(0);
  const int64_t num_keys = value.size(1);
  const int64_t num_heads = value.size(2);
  const int64_t head_dim = value.size(3);
  const int64_t num_queries = sampling_locations.size(1);
  const int64_t num_levels = sampling_locations.size(3);
  const int64_t num_points = sampling_locations.size(4);

  TORCH_CHECK(sampling_locations.size(0) == bs && sampling_locations.size(2) == num_heads, op,
              "sampling_locations ", sampling_locations.sizes(), " does not match value ", value.sizes());
  TORCH_CHECK(attention_weights.size(0) == bs && attention_weights.size(1) == num_queries &&
                  attention_weights.size(2) == num_heads && attention_weights.size(3) == num_levels &&
                  attention_weights.size(4) == num_points,
              op, "attention_weights ", attention_weights.sizes(), " does not match sampling_locations ",
              sampling_locations.sizes());

  const at::Tensor shapes = spatial_shapes.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU, at::kLong).contiguous();
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
    TORCH_CHECK(start >= 0 && start <= num_keys && h <= (num_keys - start) / w, op, "level ", l, " (start ",
                start_ptr[l], ", ", h, "x", w, ") does not fit in ", num_keys, " keys");
  }

  const Variant variant = pick_variant(std::string(isa));

  const at::Tensor value_c = value.contiguous();
  const at::Tensor loc_c = sampling_locations.contiguous();
  const at::Tensor attn_c = attention_weights.contiguous();
  at::Tensor output = at::empty({bs, num_queries, num_heads * head_dim}, value.options());
  if (output.numel() == 0) return output;

  const Problem pb{value_c.data_ptr<float>(), shape_ptr,     start_ptr,   loc_c.data_ptr<float>(),
                   attn_c.data_ptr<float>(),  output.data_ptr<float>(),  num_keys,    num_queries,
                   num_heads,                 head_dim,      num_levels,  num_points};
  // About 8 heads x 5 levels x 4 points x 4 corners of 32-float rows per query: 16 queries is ~100 us.
  constexpr int64_t kGrain = 16;
  at::parallel_for(0, bs * num_queries, kGrain,
                   [&](int64_t begin, int64_t end) { variant.fn(pb, begin, end); });
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
  m.def("msda_isas() -> str[]", &msda_isas);
  m.def("msda_isa() -> str", &msda_isa);
  m.def("msda_openmp() -> bool", &msda_openmp);
}

TORCH_LIBRARY_IMPL(codetr_ops, CPU, m) { m.impl("msda_forward", &msda_forward); }

}  // namespace codetr_ops
