// Paddle's own CPU convolution kernels (im2col + GEMM), run on two threads at once: the bits of
// one thread; where the math library runs one thread per call, the demo's 3x3 convolutions take
// 1.5-2x less time (1x1 and the smallest gain little: one std::thread per call costs ~60 us).
//
// Paddle's dygraph conv2d kernel computes each image of the batch on its own (im2col, then one
// GEMM per image and group), and its backward computes the input gradient in one loop over the
// images and the weight gradient in a second loop (each image's GEMM added into the same
// accumulator, in batch order). Nothing is shared between the images of the forward or between
// the two backward loops, so this op calls the same registered kernel ("conv2d" /
// "conv2d_grad", CPU, float32) on two pieces of work side by side:
//   forward:  the first and the second half of the batch, each written into its rows of one
//             output tensor;
//   backward: the input gradient (all images) and the weight gradient (all images, in order).
// Every number is produced by the same code with the same operands as in Paddle's own call,
// hence bit-identical output and gradients. The autograd is wired in Python
// (ppdet_ghm/modeling/threaded_conv.py, a PyLayer).
//
// Built at first use by paddle.utils.cpp_extension against Paddle's headers only.

#include <string>
#include <vector>

#include "cpp_ops.h"

namespace {

using ppdet_ghm::cpu_context;
using ppdet_ghm::cpu_kernel;
using ppdet_ghm::dense;

using Ints = std::vector<int>;

// Signatures of phi::ConvKernel and phi::ConvGradKernel as registered (variadic form).
using ConvFn = void (*)(const phi::DeviceContext&, const phi::DenseTensor&,
                        const phi::DenseTensor&, const Ints&, const Ints&, const std::string&,
                        const Ints&, int, const std::string&, phi::DenseTensor*);
using ConvGradFn = void (*)(const phi::DeviceContext&, const phi::DenseTensor&,
                            const phi::DenseTensor&, const phi::DenseTensor&, const Ints&,
                            const Ints&, const std::string&, const Ints&, int,
                            const std::string&, phi::DenseTensor*, phi::DenseTensor*);

// Images [begin, end) of an NCHW tensor, sharing its memory (DenseTensor::Slice, which the
// headers hide from custom ops).
phi::DenseTensor rows(const phi::DenseTensor& t, int64_t begin, int64_t end) {
  phi::DenseTensorMeta meta = t.meta();
  meta.offset += begin * (t.numel() / t.dims()[0]) * sizeof(float);
  meta.dims[0] = end - begin;
  meta.strides = phi::DenseTensorMeta::calc_strides(meta.dims);
  return phi::DenseTensor(t.Holder(), meta);
}

// Runs `first` on a new thread and `second` on this one; rethrows `second`'s error, else
// `first`'s.
template <typename A, typename B>
void side_by_side(A first, B second) {
  ppdet_ghm::on_threads(2, [&](int i) { i == 0 ? second() : first(); });
}

void check_input(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu() && t.is_dense_tensor(), "threaded_conv2d: ", name,
           " must be a dense CPU tensor");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, "threaded_conv2d: ", name,
           " must be float32");
  PD_CHECK(t.shape().size() == 4, "threaded_conv2d: ", name, " must be 4-D (NCHW)");
}

// [N, O, H', W'] of a convolution with explicit paddings ([h, w] or [top, bottom, left, right]).
std::vector<int64_t> output_shape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                  const Ints& strides, const Ints& paddings,
                                  const std::string& padding_algorithm, const Ints& dilations) {
  PD_CHECK(padding_algorithm == "EXPLICIT", "threaded_conv2d: padding_algorithm ",
           padding_algorithm, " (only EXPLICIT paddings are split over threads)");
  PD_CHECK(strides.size() == 2 && dilations.size() == 2 &&
               (paddings.size() == 2 || paddings.size() == 4),
           "threaded_conv2d: strides and dilations need 2 values, paddings 2 or 4");
  std::vector<int64_t> shape{x[0], w[0], 0, 0};
  for (int d = 0; d < 2; ++d) {
    int64_t pad = paddings.size() == 2 ? 2 * paddings[d] : paddings[2 * d] + paddings[2 * d + 1];
    int64_t extent = dilations[d] * (w[2 + d] - 1) + 1;
    shape[2 + d] = (x[2 + d] + pad - extent) / strides[d] + 1;
    PD_CHECK(shape[2 + d] > 0, "threaded_conv2d: empty output for input ", x[2], "x", x[3]);
  }
  return shape;
}

}  // namespace

// x [N, C, H, W], w [O, C / groups, kh, kw] -> [N, O, H', W'], as Paddle's conv2d with the same
// attributes (paddings and padding_algorithm as nn.Conv2D passes them). `threads` 2 splits the
// batch in two halves.
std::vector<paddle::Tensor> ThreadedConv2dForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                                  const Ints& strides, const Ints& paddings,
                                                  const std::string& padding_algorithm,
                                                  const Ints& dilations, int groups, int threads) {
  check_input(x, "input");
  check_input(w, "weight");
  static const ConvFn conv = cpu_kernel<ConvFn>("conv2d");
  const phi::DeviceContext& ctx = cpu_context();
  const auto& input = dense(x);
  const auto& filter = dense(w);
  const int64_t n = x.shape()[0];
  paddle::Tensor out = paddle::empty(output_shape(x.shape(), w.shape(), strides, paddings,
                                                  padding_algorithm, dilations),
                                     paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto& result = dense(out);
  auto run = [&](int64_t begin, int64_t end) {
    phi::DenseTensor part = rows(result, begin, end);
    conv(ctx, rows(input, begin, end), filter, strides, paddings, padding_algorithm, dilations,
         groups, "NCHW", &part);
  };
  if (threads < 2 || n < 2) {
    run(0, n);
  } else {
    side_by_side([&] { run(0, n / 2); }, [&] { run(n / 2, n); });
  }
  return {out};
}

// Gradients of ThreadedConv2dForward for dy [N, O, H', W']: dx [N, C, H, W] when
// need_input_grad, dw [O, C / groups, kh, kw] when need_weight_grad (an output not asked for is
// a 1-element placeholder); with `threads` 2 and both asked for, each on its own thread.
std::vector<paddle::Tensor> ThreadedConv2dBackward(
    const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& dy,
    const Ints& strides, const Ints& paddings, const std::string& padding_algorithm,
    const Ints& dilations, int groups, int threads, bool need_input_grad,
    bool need_weight_grad) {
  check_input(x, "input");
  check_input(w, "weight");
  check_input(dy, "output gradient");
  static const ConvGradFn conv_grad = cpu_kernel<ConvGradFn>("conv2d_grad");
  const phi::DeviceContext& ctx = cpu_context();
  auto dx = std::make_shared<phi::DenseTensor>();
  auto dw = std::make_shared<phi::DenseTensor>();
  dx->Resize(dense(x).dims());
  dw->Resize(dense(w).dims());
  auto grads = [&](phi::DenseTensor* input_grad, phi::DenseTensor* filter_grad) {
    conv_grad(ctx, dense(x), dense(w), dense(dy), strides, paddings, padding_algorithm,
              dilations, groups, "NCHW", input_grad, filter_grad);
  };
  if (threads >= 2 && need_input_grad && need_weight_grad) {
    side_by_side([&] { grads(nullptr, dw.get()); }, [&] { grads(dx.get(), nullptr); });
  } else {
    grads(need_input_grad ? dx.get() : nullptr, need_weight_grad ? dw.get() : nullptr);
  }
  auto placeholder = [] {
    return paddle::empty({1}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  };
  return {need_input_grad ? paddle::Tensor(dx) : placeholder(),
          need_weight_grad ? paddle::Tensor(dw) : placeholder()};
}

PD_BUILD_OP(threaded_conv2d_forward)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>",
            "padding_algorithm: std::string", "dilations: std::vector<int>", "groups: int",
            "threads: int"})
    .SetKernelFn(PD_KERNEL(ThreadedConv2dForward));

PD_BUILD_OP(threaded_conv2d_backward)
    .Inputs({"X", "W", "DY"})
    .Outputs({"DX", "DW"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>",
            "padding_algorithm: std::string", "dilations: std::vector<int>", "groups: int",
            "threads: int", "need_input_grad: bool", "need_weight_grad: bool"})
    .SetKernelFn(PD_KERNEL(ThreadedConv2dBackward));
