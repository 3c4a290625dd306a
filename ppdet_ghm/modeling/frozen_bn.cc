// BatchNorm on frozen statistics followed by a ReLU (optionally after adding a residual), as one
// pass over the tensor on several threads, forward and backward.
//
// Training ResNet with mmdet's norm_eval, every BatchNorm is a per-channel affine map
// y = x * s + t (Paddle's kernel folds gamma, beta and the statistics into s and t), and most
// are followed by a ReLU, the last of each block by "+ shortcut, ReLU". Paddle runs each of
// these as its own single-threaded kernel, a full pass over memory each (forward: BN, add,
// ReLU; backward: ReLU, add, BN). This op does the same arithmetic in one pass, its planes (one
// image, one channel) split over `threads` threads:
//   forward:  y = relu(x * s[c] + t[c] (+ r))              (relu optional; v > 0 ? v : 0)
//   backward: g = dy * (y > 0 ? 1 : 0)                      (dy without relu)
//             dx = g * s[c]; dr = g;
//             dsum[c] = sum g;  dcentered[c] = sum g * (x - mean[c])   (in double)
// Given Paddle's own s and t (the caller reads them back from its kernel), y, dx and dr are the
// bits of Paddle's batch_norm, add and relu (the same float32 products and sums, no FMA: x86-64's
// baseline SSE2 has none). The caller forms d beta = dsum and d gamma = dcentered /
// sqrt(var + eps); Paddle sums these in float32. The sums are taken per plane in a fixed order
// (8 double lanes, then the lanes, then the images in order), so no result depends on the
// thread count. The autograd is wired in Python (ppdet_ghm/modeling/frozen_bn.py, a PyLayer).
//
// Built at first use by paddle.utils.cpp_extension against Paddle's headers only.

#include <algorithm>
#include <vector>

#include "cpp_ops.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace {

constexpr int kLanes = 8;
// Below this many elements per thread a new thread costs more than it saves.
constexpr int64_t kMinPerThread = 1 << 16;

void check(const paddle::Tensor& t, const char* name, size_t dims) {
  PD_CHECK(t.is_cpu() && t.is_dense_tensor(), "frozen_bn: ", name, " must be a dense CPU tensor");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, "frozen_bn: ", name, " must be float32");
  PD_CHECK(t.shape().size() == dims, "frozen_bn: ", name, " must be ", dims, "-D");
}

// Calls body(begin, end) on ranges of [0, planes) on up to `threads` threads (this one
// included); rethrows the first error.
template <typename Body>
void over_planes(int64_t planes, int64_t plane_size, int threads, Body body) {
  int64_t by_size = planes * plane_size / kMinPerThread;
  int count = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, by_size)));
  count = static_cast<int>(std::min<int64_t>(count, planes));
  ppdet_ghm::on_threads(count, [&](int i) { body(planes * i / count, planes * (i + 1) / count); });
}

// One plane of FrozenBnBackward: writes dx / dr where asked and sums[0] = sum g,
// sums[1] = sum g * (x - mean). Element i is added to double lane i % kLanes, then the lanes are
// added in order: the SSE2 loop and the scalar tail give the same sums on any x86-64 CPU.
// g = dy * (y > 0 ? 1 : 0), as Paddle's ReLU gradient (a NaN in dy stays a NaN).
template <bool kRelu, bool kInputGrad, bool kResidualGrad>
void plane_backward(const float* x, const float* y, const float* dy, float scale, float mean,
                    float* dx, float* dr, int64_t size, double* sums) {
  double sum[kLanes] = {}, centered[kLanes] = {};
  int64_t i = 0;
#ifdef __SSE2__
  static_assert(kLanes == 8, "the SSE2 loop adds 8 elements per step");
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
  const __m128 vscale = _mm_set1_ps(scale), vmean = _mm_set1_ps(mean);
  __m128d vsum[4], vcentered[4];
  for (int k = 0; k < 4; ++k) vsum[k] = vcentered[k] = _mm_setzero_pd();
  for (; i + kLanes <= size; i += kLanes) {
    for (int h = 0; h < 2; ++h) {
      const int64_t j = i + 4 * h;
      __m128 g = _mm_loadu_ps(dy + j);
      if (kRelu) g = _mm_mul_ps(g, _mm_and_ps(_mm_cmpgt_ps(_mm_loadu_ps(y + j), zero), one));
      if (kInputGrad) _mm_storeu_ps(dx + j, _mm_mul_ps(g, vscale));
      if (kResidualGrad) _mm_storeu_ps(dr + j, g);
      const __m128 xc = _mm_sub_ps(_mm_loadu_ps(x + j), vmean);
      const __m128d g_low = _mm_cvtps_pd(g), g_high = _mm_cvtps_pd(_mm_movehl_ps(g, g));
      const __m128d x_low = _mm_cvtps_pd(xc), x_high = _mm_cvtps_pd(_mm_movehl_ps(xc, xc));
      vsum[2 * h] = _mm_add_pd(vsum[2 * h], g_low);
      vsum[2 * h + 1] = _mm_add_pd(vsum[2 * h + 1], g_high);
      vcentered[2 * h] = _mm_add_pd(vcentered[2 * h], _mm_mul_pd(g_low, x_low));
      vcentered[2 * h + 1] = _mm_add_pd(vcentered[2 * h + 1], _mm_mul_pd(g_high, x_high));
    }
  }
  for (int k = 0; k < 4; ++k) {
    _mm_storeu_pd(sum + 2 * k, vsum[k]);
    _mm_storeu_pd(centered + 2 * k, vcentered[k]);
  }
#endif
  for (int k = 0; i < size; ++i, k = (k + 1) % kLanes) {
    const float g = kRelu ? dy[i] * (y[i] > 0.0f ? 1.0f : 0.0f) : dy[i];
    if (kInputGrad) dx[i] = g * scale;
    if (kResidualGrad) dr[i] = g;
    sum[k] += g;
    centered[k] += static_cast<double>(g) * static_cast<double>(x[i] - mean);
  }
  sums[0] = sums[1] = 0.0;
  for (int k = 0; k < kLanes; ++k) {
    sums[0] += sum[k];
    sums[1] += centered[k];
  }
}

}  // namespace

// x [N, C, H, W], scale and shift [C], residual [N, C, H, W] when has_residual (else ignored)
// -> y [N, C, H, W].
std::vector<paddle::Tensor> FrozenBnForward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                            const paddle::Tensor& shift,
                                            const paddle::Tensor& residual, bool has_residual,
                                            bool relu, int threads) {
  check(x, "input", 4);
  check(scale, "scale", 1);
  check(shift, "shift", 1);
  const auto& shape = x.shape();
  const int64_t channels = shape[1], plane = shape[2] * shape[3];
  PD_CHECK(scale.numel() == channels && shift.numel() == channels,
           "frozen_bn: scale and shift need one value per channel (", channels, ")");
  const float* r = nullptr;
  if (has_residual) {
    check(residual, "residual", 4);
    PD_CHECK(residual.shape() == shape, "frozen_bn: residual must have the input's shape");
    r = residual.data<float>();
  }
  paddle::Tensor out = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = x.data<float>();
  const float* s = scale.data<float>();
  const float* t = shift.data<float>();
  float* y = out.data<float>();
  over_planes(shape[0] * channels, plane, threads, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float sc = s[p % channels], sh = t[p % channels];
      const float* xp = in + p * plane;
      const float* rp = r ? r + p * plane : nullptr;
      float* yp = y + p * plane;
      for (int64_t i = 0; i < plane; ++i) {
        float v = xp[i] * sc + sh;
        if (rp) v += rp[i];
        // as Paddle's ReLU: v > 0 ? v : 0 (so -0 and NaN give +0)
        yp[i] = relu && !(v > 0.0f) ? 0.0f : v;
      }
    }
  });
  return {out};
}

// Gradients of FrozenBnForward for dy [N, C, H, W], given its input x and output y:
// dx = g * scale (when need_input_grad, else a 1-element placeholder), g itself as the
// residual's gradient (when need_residual_grad), and per channel, in float64,
// [sum g, sum g * (x - mean)] as a [2, C] tensor; g = dy * (y > 0) with relu, dy without.
std::vector<paddle::Tensor> FrozenBnBackward(const paddle::Tensor& x, const paddle::Tensor& y,
                                             const paddle::Tensor& dy,
                                             const paddle::Tensor& scale,
                                             const paddle::Tensor& mean, bool relu,
                                             bool need_input_grad, bool need_residual_grad,
                                             int threads) {
  check(x, "input", 4);
  check(y, "output", 4);
  check(dy, "output gradient", 4);
  check(scale, "scale", 1);
  check(mean, "mean", 1);
  const auto& shape = x.shape();
  PD_CHECK(y.shape() == shape && dy.shape() == shape,
           "frozen_bn: input, output and output gradient must have one shape");
  const int64_t images = shape[0], channels = shape[1], plane = shape[2] * shape[3];
  PD_CHECK(scale.numel() == channels && mean.numel() == channels,
           "frozen_bn: scale and mean need one value per channel (", channels, ")");
  auto placeholder = [] {
    return paddle::empty({1}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  };
  paddle::Tensor dx = need_input_grad
                          ? paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace())
                          : placeholder();
  paddle::Tensor dr = need_residual_grad
                          ? paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace())
                          : placeholder();
  const float* in = x.data<float>();
  const float* out = y.data<float>();
  const float* grad = dy.data<float>();
  const float* s = scale.data<float>();
  const float* m = mean.data<float>();
  float* dxp_all = need_input_grad ? dx.data<float>() : nullptr;
  float* drp_all = need_residual_grad ? dr.data<float>() : nullptr;
  // per plane: sum g and sum g * (x - mean)
  std::vector<double> plane_sums(2 * images * channels);
  auto kernel = plane_backward<false, false, false>;
  if (relu) {
    kernel = dxp_all ? (drp_all ? plane_backward<true, true, true> : plane_backward<true, true, false>)
                     : (drp_all ? plane_backward<true, false, true> : plane_backward<true, false, false>);
  } else {
    kernel = dxp_all ? (drp_all ? plane_backward<false, true, true> : plane_backward<false, true, false>)
                     : (drp_all ? plane_backward<false, false, true> : plane_backward<false, false, false>);
  }
  over_planes(images * channels, plane, threads, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % channels, offset = p * plane;
      kernel(in + offset, out + offset, grad + offset, s[c], m[c],
             dxp_all ? dxp_all + offset : nullptr, drp_all ? drp_all + offset : nullptr, plane,
             &plane_sums[2 * p]);
    }
  });
  paddle::Tensor sums =
      paddle::empty({2, channels}, paddle::DataType::FLOAT64, paddle::CPUPlace());
  double* sp = sums.data<double>();
  for (int64_t c = 0; c < channels; ++c) {
    double total = 0.0, total_centered = 0.0;
    for (int64_t n = 0; n < images; ++n) {
      total += plane_sums[2 * (n * channels + c)];
      total_centered += plane_sums[2 * (n * channels + c) + 1];
    }
    sp[c] = total;
    sp[channels + c] = total_centered;
  }
  return {dx, dr, sums};
}

PD_BUILD_OP(frozen_bn_forward)
    .Inputs({"X", "Scale", "Shift", "Residual"})
    .Outputs({"Y"})
    .Attrs({"has_residual: bool", "relu: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(FrozenBnForward));

PD_BUILD_OP(frozen_bn_backward)
    .Inputs({"X", "Y", "DY", "Scale", "Mean"})
    .Outputs({"DX", "DResidual", "Sums"})
    .Attrs({"relu: bool", "need_input_grad: bool", "need_residual_grad: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(FrozenBnBackward));
