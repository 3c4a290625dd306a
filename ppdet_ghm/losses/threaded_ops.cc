// The GHM-C loss's per-element work on every logit of an FPN level (up to 12M elements at
// 800x1333) on several threads, with the numbers of Paddle's one-core kernels:
//   sigmoid, softplus: Paddle's own registered kernels, on pieces of the tensor (below);
//   lookup:   out[i] = table[index[i]], a gather of a short table (a copy: the same bits);
//   bincount: counts of small non-negative integers, per piece, then added (integers: exact).
//
// Both kernels compute each element from that element alone (an Eigen expression evaluated in
// SIMD packets of at most 16 floats, the last few elements one by one). This op calls the same
// registered kernel ("sigmoid" / "softplus", CPU, float32; softplus's beta and threshold are
// doubles) on consecutive pieces of the flat tensor whose lengths, all but the last, are
// multiples of 64 elements: every element lands in a packet exactly where it would in one call
// on the whole tensor, and the scalar tail stays the tail.
// Same operations on the same operands, hence the same bits (tests compare them). The Python side
// is ppdet_ghm/losses/threaded_ops.py.
//
// Built at first use by paddle.utils.cpp_extension against Paddle's headers only.

#include <algorithm>
#include <string>
#include <vector>

#include "cpp_ops.h"

namespace {

using ppdet_ghm::cpu_context;
using ppdet_ghm::cpu_kernel;
using ppdet_ghm::dense;
using ppdet_ghm::flat_piece;

// Signatures of phi::SigmoidKernel and phi::SoftplusKernel as registered (variadic form).
using UnaryFn = void (*)(const phi::DeviceContext&, const phi::DenseTensor&, phi::DenseTensor*);
using SoftplusFn = void (*)(const phi::DeviceContext&, const phi::DenseTensor&, double, double,
                            phi::DenseTensor*);

// Pieces are multiples of this many elements (4 packets of 16 floats, the widest unrolling).
constexpr int64_t kGrain = 64;
// Below this many elements per thread a new thread costs more than it saves.
constexpr int64_t kMinPerThread = 1 << 18;

// How many pieces over_pieces cuts n elements into for `threads` threads.
int64_t piece_count(int64_t n, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(threads, n / kMinPerThread));
}

// Calls body(piece, begin, end) on consecutive pieces of [0, n), one per thread (this one
// included); rethrows the first error.
template <typename Body>
void over_pieces(int64_t n, int threads, Body body) {
  const int64_t count = piece_count(n, threads);
  const int64_t step = (n / count + kGrain - 1) / kGrain * kGrain;
  ppdet_ghm::on_threads(static_cast<int>(count), [&](int i) {
    const int64_t begin = std::min(n, i * step);
    const int64_t end = i + 1 == count ? n : std::min(n, (i + 1) * step);
    if (begin < end) body(i, begin, end);
  });
}

// kernel(input piece, output piece) on the pieces of float32 `x`, into a new tensor of its shape.
template <typename Kernel>
paddle::Tensor elementwise_in_pieces(const paddle::Tensor& x, int threads, Kernel kernel) {
  PD_CHECK(x.is_cpu() && x.is_dense_tensor(), "threaded_ops: x must be a dense CPU tensor");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "threaded_ops: x must be float32");
  paddle::Tensor out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto& result = dense(out);
  over_pieces(x.numel(), threads, [&](int64_t, int64_t begin, int64_t end) {
    phi::DenseTensor part = flat_piece(result, begin, end);
    kernel(flat_piece(dense(x), begin, end), &part);
  });
  return out;
}

}  // namespace

// sigmoid(x) for a contiguous float32 CPU tensor, the same shape, on `threads` threads.
std::vector<paddle::Tensor> ThreadedSigmoid(const paddle::Tensor& x, int threads) {
  static const UnaryFn sigmoid = cpu_kernel<UnaryFn>("sigmoid");
  const phi::DeviceContext& ctx = cpu_context();
  return {elementwise_in_pieces(x, threads, [&](const phi::DenseTensor& in, phi::DenseTensor* out) {
    sigmoid(ctx, in, out);
  })};
}

// softplus(x) = log(1 + exp(beta * x)) / beta (x where beta * x > threshold), as Paddle's.
std::vector<paddle::Tensor> ThreadedSoftplus(const paddle::Tensor& x, double beta,
                                             double threshold, int threads) {
  static const SoftplusFn softplus = cpu_kernel<SoftplusFn>("softplus");
  const phi::DeviceContext& ctx = cpu_context();
  return {elementwise_in_pieces(x, threads, [&](const phi::DenseTensor& in, phi::DenseTensor* out) {
    softplus(ctx, in, beta, threshold, out);
  })};
}

// table[index] for a float32 table [T] and int32 indices (any shape, each in [0, T)): a
// float32 tensor of the indices' shape.
std::vector<paddle::Tensor> ThreadedLookup(const paddle::Tensor& table, const paddle::Tensor& index,
                                           int threads) {
  PD_CHECK(table.is_cpu() && index.is_cpu(), "threaded_lookup: CPU tensors only");
  PD_CHECK(table.dtype() == paddle::DataType::FLOAT32 && table.shape().size() == 1,
           "threaded_lookup: table must be a float32 vector");
  PD_CHECK(index.dtype() == paddle::DataType::INT32, "threaded_lookup: index must be int32");
  paddle::Tensor out =
      paddle::empty(index.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* values = table.data<float>();
  const int32_t* idx = index.data<int32_t>();
  const int64_t size = table.numel();
  float* result = out.data<float>();
  over_pieces(index.numel(), threads, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      PD_CHECK(idx[i] >= 0 && idx[i] < size, "threaded_lookup: index ", idx[i],
               " outside the table of ", size);
      result[i] = values[idx[i]];
    }
  });
  return {out};
}

// Counts of each value of int32 `index` (values in [0, minlength)): int64 [minlength], as
// paddle.bincount(index, minlength=minlength) for such values.
std::vector<paddle::Tensor> ThreadedBincount(const paddle::Tensor& index, int minlength,
                                             int threads) {
  PD_CHECK(index.is_cpu() && index.dtype() == paddle::DataType::INT32,
           "threaded_bincount: index must be an int32 CPU tensor");
  PD_CHECK(minlength > 0, "threaded_bincount: minlength must be positive");
  const int32_t* idx = index.data<int32_t>();
  const int64_t n = index.numel();
  // one histogram per piece, added at the end
  std::vector<std::vector<int64_t>> partial(piece_count(n, threads),
                                            std::vector<int64_t>(minlength, 0));
  over_pieces(n, threads, [&](int64_t piece, int64_t begin, int64_t end) {
    std::vector<int64_t>& counts = partial[piece];
    for (int64_t i = begin; i < end; ++i) {
      PD_CHECK(idx[i] >= 0 && idx[i] < minlength, "threaded_bincount: value ", idx[i],
               " outside [0, ", minlength, ")");
      ++counts[idx[i]];
    }
  });
  paddle::Tensor out = paddle::empty({minlength}, paddle::DataType::INT64, paddle::CPUPlace());
  int64_t* result = out.data<int64_t>();
  for (int v = 0; v < minlength; ++v) {
    result[v] = 0;
    for (const auto& counts : partial) result[v] += counts[v];
  }
  return {out};
}

PD_BUILD_OP(threaded_lookup)
    .Inputs({"Table", "Index"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(ThreadedLookup));

PD_BUILD_OP(threaded_bincount)
    .Inputs({"Index"})
    .Outputs({"Out"})
    .Attrs({"minlength: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(ThreadedBincount));

PD_BUILD_OP(threaded_sigmoid)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(ThreadedSigmoid));

PD_BUILD_OP(threaded_softplus)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"beta: double", "threshold: double", "threads: int"})
    .SetKernelFn(PD_KERNEL(ThreadedSoftplus));
