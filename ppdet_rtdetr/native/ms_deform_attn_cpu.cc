// Multi-scale deformable attention sampling on the CPU, one Paddle custom operator for what the exported
// graph otherwise runs as per-level splits, transposes, `grid_sample` calls, a concat, a product and a sum
// (Paddle's grid_sample CPU kernel is single-threaded and builds eight temporaries per call: ~4.5 ms a call,
// one call per level, in R18vd at 640 under oneDNN; this operator does a decoder layer's sampling in ~2 ms).
//
// Numbers: every float operation is the one of Paddle's CPU path, in the same order, so the outputs are
// bit-equal to ppdet_rtdetr.modeling.deformable_attn.ms_deform_attn_core (built with -ffp-contract=off):
//   grid g = 2 * loc - 1; pixel x = (g + 1) * (W * 0.5) - 0.5 (grid_sample, align_corners=False);
//   corners floor(x), floor(x) + 1, a corner outside the map reads 0 (padding_mode='zeros');
//   sample = v_wn * d_e * d_s + v_en * d_w * d_s + v_ws * d_e * d_n + v_es * d_w * d_n, left to right;
//   out = sum over the points, in order, of sample * attention weight.
//
// Inputs: Value [b, l, nh, hc] float32 (levels concatenated row-major), Locations [b, q, nh, P, 2] (x, y)
// in [0, 1], Weights [b, q, nh, P], SpatialShapes int64 [nl, 2] (h, w of each level; sum(h * w) == l).
// Attribute num_points: points of each level (sum == P, grouped by level). Output [b, q, nh * hc].
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

struct Level {
  int64_t start, h, w;  // first row in Value's l axis, map size
};

// One query's one head: the weighted sum of its P bilinear samples, written to out[0 .. hc).
void SampleHead(const float* value, int64_t row_stride, const std::vector<Level>& levels,
                const std::vector<int64_t>& level_of, const float* locs, const float* weights, int64_t hc,
                const float* zeros, float* out) {
  for (int64_t c = 0; c < hc; ++c) out[c] = 0.f;
  for (size_t p = 0; p < level_of.size(); ++p) {
    const Level& lv = levels[level_of[p]];
    const float gx = 2.f * locs[2 * p] - 1.f, gy = 2.f * locs[2 * p + 1] - 1.f;
    const float x = (gx + 1.f) * static_cast<float>(lv.w * 0.5) - 0.5f;
    const float y = (gy + 1.f) * static_cast<float>(lv.h * 0.5) - 0.5f;
    const float x_w = std::floor(x), y_n = std::floor(y);
    const float x_e = x_w + 1.f, y_s = y_n + 1.f;
    const float d_w = x - x_w, d_e = x_e - x, d_n = y - y_n, d_s = y_s - y;
    // a corner is read when it lies on the map; NaN locations read none (all comparisons false)
    auto corner = [&](float cx, float cy) -> const float* {
      if (!(cx >= 0.f && cx <= lv.w - 1 && cy >= 0.f && cy <= lv.h - 1)) return zeros;
      return value + (lv.start + static_cast<int64_t>(cy) * lv.w + static_cast<int64_t>(cx)) * row_stride;
    };
    const float *v_wn = corner(x_w, y_n), *v_en = corner(x_e, y_n);
    const float *v_ws = corner(x_w, y_s), *v_es = corner(x_e, y_s);
    const float weight = weights[p];
    for (int64_t c = 0; c < hc; ++c) {
      const float sample = v_wn[c] * d_e * d_s + v_en[c] * d_w * d_s + v_ws[c] * d_e * d_n + v_es[c] * d_w * d_n;
      out[c] += sample * weight;
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> MSDeformAttnForward(const paddle::Tensor& value, const paddle::Tensor& locations,
                                                const paddle::Tensor& weights,
                                                const paddle::Tensor& spatial_shapes,
                                                const std::vector<int64_t>& num_points) {
  PD_CHECK(value.is_cpu() && locations.is_cpu() && weights.is_cpu() && spatial_shapes.is_cpu(),
           "ppdet_rtdetr_ms_deform_attn runs on the CPU only");
  PD_CHECK(value.dtype() == paddle::DataType::FLOAT32 && locations.dtype() == paddle::DataType::FLOAT32 &&
               weights.dtype() == paddle::DataType::FLOAT32,
           "ppdet_rtdetr_ms_deform_attn: Value, Locations and Weights must be float32");
  PD_CHECK(spatial_shapes.dtype() == paddle::DataType::INT64,
           "ppdet_rtdetr_ms_deform_attn: SpatialShapes must be int64");
  const int64_t b = value.shape()[0], l = value.shape()[1], nh = value.shape()[2], hc = value.shape()[3];
  const int64_t q = locations.shape()[1], total = locations.shape()[3];
  const int64_t nl = static_cast<int64_t>(num_points.size());
  PD_CHECK(spatial_shapes.numel() == 2 * nl, "ppdet_rtdetr_ms_deform_attn: SpatialShapes must be [", nl,
           ", 2], got ", spatial_shapes.numel(), " numbers");
  const int64_t* hw = spatial_shapes.data<int64_t>();
  std::vector<Level> levels(nl);
  std::vector<int64_t> level_of;  // level of each of the P points
  int64_t start = 0;
  for (int64_t i = 0; i < nl; ++i) {
    levels[i] = {start, hw[2 * i], hw[2 * i + 1]};
    start += hw[2 * i] * hw[2 * i + 1];
    level_of.insert(level_of.end(), num_points[i], i);
  }
  PD_CHECK(start == l, "ppdet_rtdetr_ms_deform_attn: the levels hold ", start, " rows, Value has ", l);
  PD_CHECK(static_cast<int64_t>(level_of.size()) == total, "ppdet_rtdetr_ms_deform_attn: num_points sum to ",
           level_of.size(), ", Locations has ", total, " points");
  auto out = paddle::empty({b, q, nh * hc}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const std::vector<float> zeros(hc, 0.f);
  const float* v = value.data<float>();
  const float* loc = locations.data<float>();
  const float* wt = weights.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < b * q; ++i) {     // query i of the batch
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t head = i * nh + h;
      // [b, l, nh, hc]: image i / q, head h; rows of the l axis are nh * hc apart
      SampleHead(v + ((i / q) * l * nh + h) * hc, nh * hc, levels, level_of, loc + head * total * 2,
                 wt + head * total, hc, zeros.data(), o + head * hc);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> MSDeformAttnInferShape(const std::vector<int64_t>& value,
                                                         const std::vector<int64_t>& locations,
                                                         const std::vector<int64_t>& weights,
                                                         const std::vector<int64_t>& spatial_shapes) {
  return {{value[0], locations[1], value[2] * value[3]}};
}

std::vector<paddle::DataType> MSDeformAttnInferDtype(const paddle::DataType& value, const paddle::DataType&,
                                                     const paddle::DataType&, const paddle::DataType&) {
  return {value};
}

PD_BUILD_OP(ppdet_rtdetr_ms_deform_attn)
    .Inputs({"Value", "Locations", "Weights", "SpatialShapes"})
    .Outputs({"Out"})
    .Attrs({"num_points: std::vector<int64_t>"})
    .SetKernelFn(PD_KERNEL(MSDeformAttnForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MSDeformAttnInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MSDeformAttnInferDtype));
