// The parameter update of Momentum SGD for all parameters in one call on the math threads, with
// the numbers of Paddle's optimizer step (paddle.optimizer.Momentum with ClipGradByGlobalNorm):
//   grad     *= scale                        (the clip's multiply, where the parameter is clipped)
//   velocity  = velocity * mu + grad (+ coeff * param for L2 decay)
//   param    -= lr * velocity                (Paddle's registered "momentum" CPU kernel)
// Paddle runs both as one single-threaded kernel call per parameter (two passes over memory per
// parameter, 324 calls for R50-FPN). Here the parameters are cut into pieces of kPiece elements,
// the pieces shared out over the threads, and each piece scaled and updated while it is in the
// cache.
//
// Every element is computed from itself alone: the scaling is one float32 product (correctly
// rounded whoever computes it), the update is Paddle's own kernel (an Eigen expression in SIMD
// packets, the last elements one by one) called on pieces whose offsets are multiples of 64
// elements, so each element lands in a packet exactly where it would in one call on the whole
// parameter and the tail stays the tail. Same operations on the same operands, hence the same
// bits as Paddle's step (tests compare them). The Python side is threaded_momentum.py.
//
// Built at first use by paddle.utils.cpp_extension against Paddle's headers only.

#include <algorithm>
#include <string>
#include <vector>

#include "cpp_ops.h"

namespace {

using ppdet_ghm::dense;
using ppdet_ghm::flat_piece;

// phi::MomentumDenseKernel as registered (variadic form).
using MomentumFn = void (*)(const phi::DeviceContext&, const phi::DenseTensor& param,
                            const phi::DenseTensor& grad, const phi::DenseTensor& velocity,
                            const phi::DenseTensor& learning_rate,
                            const paddle::optional<phi::DenseTensor>& master_param, float mu,
                            bool use_nesterov, const std::string& regularization_method,
                            float regularization_coeff, bool multi_precision, float rescale_grad,
                            phi::DenseTensor* param_out, phi::DenseTensor* velocity_out,
                            phi::DenseTensor* master_param_out);

// Piece length: a multiple of 64 elements (4 packets of 16 floats, the widest unrolling); the
// four arrays of a piece (1 MiB) stay in the L2 cache between the scaling and the update.
constexpr int64_t kPiece = 1 << 16;

void check_float32(const paddle::Tensor& t, const char* what, size_t i) {
  PD_CHECK(t.is_cpu() && t.is_dense_tensor() && t.dtype() == paddle::DataType::FLOAT32,
           "threaded_momentum: ", what, "[", i, "] must be a dense float32 CPU tensor");
}

struct Piece {
  size_t param;
  int64_t begin, end;
};

}  // namespace

// Updates params, grads (scaled where clip[i]) and velocities in place. lrs[i]: parameter i's
// learning rate ([1]); scale: the clip factor ([1]); methods / coeffs: the regularization that
// Paddle's step passes to the momentum kernel for each parameter ("l2_decay" or "").
void ClippedMomentum(std::vector<paddle::Tensor>& params, std::vector<paddle::Tensor>& grads,
                     std::vector<paddle::Tensor>& velocities,
                     const std::vector<paddle::Tensor>& lrs, const paddle::Tensor& scale, float mu,
                     bool nesterov, const std::vector<std::string>& methods,
                     const std::vector<float>& coeffs, const std::vector<int>& clip, int threads) {
  static const MomentumFn momentum = ppdet_ghm::cpu_kernel<MomentumFn>("momentum");
  const size_t count = params.size();
  PD_CHECK(grads.size() == count && velocities.size() == count && lrs.size() == count &&
               methods.size() == count && coeffs.size() == count && clip.size() == count,
           "threaded_momentum: one grad, velocity, lr, method, coeff and clip flag per param");
  check_float32(scale, "scale", 0);
  PD_CHECK(scale.numel() == 1, "threaded_momentum: scale must hold one value");
  std::vector<Piece> pieces;
  for (size_t i = 0; i < count; ++i) {
    check_float32(params[i], "params", i);
    check_float32(grads[i], "grads", i);
    check_float32(velocities[i], "velocities", i);
    check_float32(lrs[i], "lrs", i);
    const int64_t n = params[i].numel();
    PD_CHECK(grads[i].numel() == n && velocities[i].numel() == n,
             "threaded_momentum: params[", i, "], its grad and velocity differ in size");
    PD_CHECK(lrs[i].numel() == 1, "threaded_momentum: lrs[", i, "] must hold one value");
    for (int64_t begin = 0; begin < n; begin += kPiece) {
      pieces.push_back({i, begin, std::min(n, begin + kPiece)});
    }
  }
  const float factor = *scale.data<float>();
  const phi::DeviceContext& ctx = ppdet_ghm::cpu_context();
  const paddle::optional<phi::DenseTensor> no_master;

  auto update = [&](const Piece& p) {
    phi::DenseTensor param = flat_piece(dense(params[p.param]), p.begin, p.end);
    phi::DenseTensor grad = flat_piece(dense(grads[p.param]), p.begin, p.end);
    phi::DenseTensor velocity = flat_piece(dense(velocities[p.param]), p.begin, p.end);
    if (clip[p.param]) {
      float* g = grad.data<float>();
      for (int64_t k = 0, n = p.end - p.begin; k < n; ++k) g[k] *= factor;
    }
    phi::DenseTensor param_out = param, velocity_out = velocity;
    momentum(ctx, param, grad, velocity, dense(lrs[p.param]), no_master, mu, nesterov,
             methods[p.param], coeffs[p.param], false, 1.0f, &param_out, &velocity_out, nullptr);
  };

  // thread t takes the pieces that start in its share of all elements
  int64_t total = 0;
  for (const Piece& p : pieces) total += p.end - p.begin;
  const int workers = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(threads, total / (4 * kPiece))));
  std::vector<size_t> first(workers + 1, pieces.size());
  first[0] = 0;
  int64_t seen = 0;
  int next = 1;
  for (size_t k = 0; k < pieces.size(); ++k) {
    while (next < workers && seen >= total * next / workers) first[next++] = k;
    seen += pieces[k].end - pieces[k].begin;
  }
  ppdet_ghm::on_threads(workers, [&](int t) {
    for (size_t k = first[t]; k < first[t + 1]; ++k) update(pieces[k]);
  });
}

PD_BUILD_OP(clipped_momentum)
    .Inputs({paddle::Vec("Params"), paddle::Vec("Grads"), paddle::Vec("Velocities"),
             paddle::Vec("Lrs"), "Scale"})
    .Outputs({paddle::Vec("ParamsOut"), paddle::Vec("GradsOut"), paddle::Vec("VelocitiesOut")})
    .SetInplaceMap({{paddle::Vec("Params"), paddle::Vec("ParamsOut")},
                    {paddle::Vec("Grads"), paddle::Vec("GradsOut")},
                    {paddle::Vec("Velocities"), paddle::Vec("VelocitiesOut")}})
    .Attrs({"mu: float", "nesterov: bool", "methods: std::vector<std::string>",
            "coeffs: std::vector<float>", "clip: std::vector<int>", "threads: int"})
    .SetKernelFn(PD_KERNEL(ClippedMomentum));
