// The kernel of codetr_ops' multi-scale deformable attention (see msda_cpu.cpp for the op's contract):
// one pass over (batch, query) rows, several instruction-set variants picked at run time.
#pragma once

#include <ATen/ATen.h>

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
  const float* value;     // (batch, num_keys, num_heads, head_dim), last dim contiguous
  int64_t value_stride_b;  // in floats
  int64_t value_stride_k;
  int64_t value_stride_h;
  const int64_t* shapes;  // (num_levels, 2): h, w
  const int64_t* starts;  // (num_levels,)
  // msda_forward: finished locations and weights, contiguous (batch, query, head, level, point[, 2]).
  const float* loc;
  const float* attn;
  // msda_fused_forward (loc == nullptr): the raw linear outputs, one row of head*level*point*2 offsets and
  // head*level*point logits per (batch, query), and the reference points (batch, query, level, ref_dim).
  const float* offsets;
  int64_t offsets_stride_b;
  int64_t offsets_stride_q;
  const float* logits;
  int64_t logits_stride_b;
  int64_t logits_stride_q;
  const float* ref;
  int64_t ref_dim;  // 2: points (encoder), 4: boxes cx, cy, w, h (decoder)
  float* out;       // (batch, query, head * head_dim), or (query, batch, ...) when sequence_first
  bool sequence_first;
  int64_t batch;
  int64_t num_keys;
  int64_t num_queries;
  int64_t num_heads;
  int64_t head_dim;
  int64_t num_levels;
  int64_t num_points;
};

// mmcv's MultiScaleDeformableAttention.forward between its linear layers, for one (batch, query) row:
// softmax of each head's level*point logits, and sampling locations = reference point + offset / map size
// (2-d references) or centre + offset / points * box size * 0.5 (4-d). The location arithmetic is written
// in mmcv's operation order, so the locations are bitwise mmcv's; the softmax matches torch's to rounding.
static void prepare_row(const Problem& pb, int64_t b, int64_t q, float* loc, float* attn) {
  const int64_t levels = pb.num_levels;
  const int64_t points = pb.num_points;
  const int64_t per_head = levels * points;
  const float* logits = pb.logits + b * pb.logits_stride_b + q * pb.logits_stride_q;
  const float* offsets = pb.offsets + b * pb.offsets_stride_b + q * pb.offsets_stride_q;
  const float* ref = pb.ref + (b * pb.num_queries + q) * levels * pb.ref_dim;
  for (int64_t h = 0; h < pb.num_heads; ++h) {
    const float* x = logits + h * per_head;
    float* w = attn + h * per_head;
    float top = x[0];
    for (int64_t i = 1; i < per_head; ++i) top = x[i] > top ? x[i] : top;
    float sum = 0.f;
    for (int64_t i = 0; i < per_head; ++i) {
      w[i] = std::exp(x[i] - top);
      sum += w[i];
    }
    const float scale = 1.f / sum;  // NaN/inf logits stay non-finite: the kernel then gives NaN
    for (int64_t i = 0; i < per_head; ++i) w[i] *= scale;
  }
  const float point_count = static_cast<float>(points);
  for (int64_t h = 0; h < pb.num_heads; ++h) {
    for (int64_t l = 0; l < levels; ++l) {
      const float* r = ref + l * pb.ref_dim;
      const float height = static_cast<float>(pb.shapes[2 * l]);
      const float width = static_cast<float>(pb.shapes[2 * l + 1]);
      const int64_t first = 2 * (h * levels + l) * points;
      for (int64_t i = first; i < first + 2 * points; i += 2) {
        if (pb.ref_dim == 2) {
          loc[i] = r[0] + offsets[i] / width;
          loc[i + 1] = r[1] + offsets[i + 1] / height;
        } else {
          loc[i] = r[0] + offsets[i] / point_count * r[2] * 0.5f;
          loc[i + 1] = r[1] + offsets[i + 1] / point_count * r[3] * 0.5f;
        }
      }
    }
  }
}

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
  const int64_t key_stride = pb.value_stride_k;  // floats between two consecutive keys of one head
  const bool fused = pb.loc == nullptr;
  std::vector<float> scalar_acc(kDim > 0 ? 0 : dim);
  std::vector<float> row_loc(fused ? heads * levels * points * 2 : 0);
  std::vector<float> row_attn(fused ? heads * levels * points : 0);

  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / pb.num_queries;
    const int64_t q = bq - b * pb.num_queries;
    const float* value_b = pb.value + b * pb.value_stride_b;
    if (fused) prepare_row(pb, b, q, row_loc.data(), row_attn.data());
    const float* loc_q = fused ? row_loc.data() : pb.loc + bq * heads * levels * points * 2;
    const float* attn_q = fused ? row_attn.data() : pb.attn + bq * heads * levels * points;
    float* out_q = pb.out + (pb.sequence_first ? q * pb.batch + b : bq) * heads * dim;

    for (int64_t h = 0; h < heads; ++h) {
      Vec acc[kChunks > 0 ? kChunks : 1];
      for (int k = 0; k < kChunks; ++k) acc[k] = Vec{};
      float* acc_s = scalar_acc.data();
      for (int64_t i = 0; i < (kDim > 0 ? 0 : dim); ++i) acc_s[i] = 0.f;

      const float* value_bh = value_b + h * pb.value_stride_h;
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

}  // namespace
}  // namespace codetr_ops
