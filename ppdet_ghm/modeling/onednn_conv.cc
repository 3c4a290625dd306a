// oneDNN 2-D convolution for Paddle's CPU dygraph training, as two Paddle custom ops on plain
// NCHW float32 tensors: the forward, and the backward (input gradient and weight / bias
// gradients in one call).
//
// Paddle 3.3.1's dygraph CPU conv is im2col + GEMM; its oneDNN kernels are reached only from a
// static graph, where the ops between convolutions fall to oneDNN's reference code. Here each
// call runs oneDNN primitives chosen by oneDNN for this CPU (format_tag::any: blocked layouts
// such as nChw16c on AVX-512), with reorders from and to Paddle's plain tensors around them; the
// autograd is wired in Python (ppdet_ghm/modeling/onednn_conv.py, PyLayers). This is how
// PyTorch's CPU convolution reaches oneDNN too (ideep: plain in, blocked inside, plain out).
//
// Built at first use by paddle.utils.cpp_extension against Paddle's own libdnnl.so.3 (3.6.x)
// with the headers of the onednn-devel wheel of the same minor version.

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "paddle/extension.h"

namespace {

using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Shapes of one convolution in oneDNN's terms (dilation counted from 0, symmetric padding).
struct Geometry {
  dims src, weights, bias, dst, strides, dilation, padding;
};

Geometry geometry(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                  const std::vector<int>& strides, const std::vector<int>& paddings,
                  const std::vector<int>& dilations) {
  PD_CHECK(x.size() == 4 && w.size() == 4, "onednn_conv2d: input and weight must be 4-D");
  PD_CHECK(x[1] == w[1], "onednn_conv2d: input channels ", x[1], " != weight's ", w[1]);
  PD_CHECK(strides.size() == 2 && paddings.size() == 2 && dilations.size() == 2,
           "onednn_conv2d: strides, paddings and dilations need 2 values each");
  Geometry g;
  int64_t out_h = (x[2] + 2 * paddings[0] - (dilations[0] * (w[2] - 1) + 1)) / strides[0] + 1;
  int64_t out_w = (x[3] + 2 * paddings[1] - (dilations[1] * (w[3] - 1) + 1)) / strides[1] + 1;
  PD_CHECK(out_h > 0 && out_w > 0, "onednn_conv2d: empty output for input ", x[2], "x", x[3]);
  g.src = {x[0], x[1], x[2], x[3]};
  g.weights = {w[0], w[1], w[2], w[3]};
  g.bias = {w[0]};
  g.dst = {x[0], w[0], out_h, out_w};
  g.strides = {strides[0], strides[1]};
  g.dilation = {dilations[0] - 1, dilations[1] - 1};
  g.padding = {paddings[0], paddings[1]};
  return g;
}

// Deterministic primitives: the same inputs give the same bits on every call (resume, reruns).
const dnnl::primitive_attr& attributes() {
  static const dnnl::primitive_attr attr = [] {
    dnnl::primitive_attr a;
    a.set_deterministic(true);
    return a;
  }();
  return attr;
}

dnnl::memory::desc any_layout(const dims& d) { return {d, dt::f32, tag::any}; }

dnnl::memory plain(const dims& d, tag layout, const float* data) {
  return {{d, dt::f32, layout}, cpu_engine(), const_cast<float*>(data)};
}

// Temporary buffers (tensors reordered to oneDNN's layouts) from Paddle's allocator, which
// reuses freed blocks: a fresh malloc of tens of MB per call page-faults on every call. Held until
// the call's primitives have run.
class Scratch {
 public:
  dnnl::memory make(const dnnl::memory::desc& desc) {
    int64_t floats = static_cast<int64_t>((desc.get_size() + sizeof(float) - 1) / sizeof(float));
    held_.push_back(paddle::empty({floats > 0 ? floats : 1}, paddle::DataType::FLOAT32,
                                  paddle::CPUPlace()));
    return {desc, cpu_engine(), held_.back().data<float>()};
  }

 private:
  std::vector<paddle::Tensor> held_;
};

// `tensor` in the layout the primitive wants: itself, or a reordered copy.
dnnl::memory to_layout(dnnl::memory tensor, const dnnl::memory::desc& wanted,
                       dnnl::stream& stream, Scratch& scratch) {
  if (tensor.get_desc() == wanted) return tensor;
  dnnl::memory copy = scratch.make(wanted);
  dnnl::reorder(tensor, copy).execute(stream, tensor, copy);
  return copy;
}

// Memory for a primitive's output: `target` itself when the layouts agree, else scratch that
// `copy_back` reorders into `target`.
dnnl::memory output_in(dnnl::memory target, const dnnl::memory::desc& wanted, Scratch& scratch) {
  return target.get_desc() == wanted ? target : scratch.make(wanted);
}

void copy_back(dnnl::memory result, dnnl::memory target, dnnl::stream& stream) {
  if (result != target) dnnl::reorder(result, target).execute(stream, result, target);
}

dnnl::convolution_forward::primitive_desc forward_desc(const Geometry& g, bool has_bias) {
  if (has_bias)
    return {cpu_engine(), dnnl::prop_kind::forward_training,
            dnnl::algorithm::convolution_direct, any_layout(g.src), any_layout(g.weights),
            any_layout(g.bias), any_layout(g.dst), g.strides, g.dilation, g.padding, g.padding,
            attributes()};
  return {cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          any_layout(g.src), any_layout(g.weights), any_layout(g.dst), g.strides, g.dilation,
          g.padding, g.padding, attributes()};
}

void check_input(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), "onednn_conv2d: ", name, " must be on the CPU");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, "onednn_conv2d: ", name, " must be float32");
}

}  // namespace

// x [N, C, H, W], w [O, C, kh, kw], b [O] (read only when has_bias) -> [N, O, H', W'].
std::vector<paddle::Tensor> Conv2dForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                          const paddle::Tensor& b,
                                          const std::vector<int>& strides,
                                          const std::vector<int>& paddings,
                                          const std::vector<int>& dilations, bool has_bias) {
  check_input(x, "input");
  check_input(w, "weight");
  Geometry g = geometry(x.shape(), w.shape(), strides, paddings, dilations);
  paddle::Tensor out = paddle::empty(g.dst, paddle::DataType::FLOAT32, paddle::CPUPlace());
  dnnl::stream stream(cpu_engine());
  auto pd = forward_desc(g, has_bias);
  dnnl::memory dst_plain = plain(g.dst, tag::nchw, out.data<float>());
  Scratch scratch;
  dnnl::memory dst = output_in(dst_plain, pd.dst_desc(), scratch);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC,
       to_layout(plain(g.src, tag::nchw, x.data<float>()), pd.src_desc(), stream, scratch)},
      {DNNL_ARG_WEIGHTS,
       to_layout(plain(g.weights, tag::oihw, w.data<float>()), pd.weights_desc(), stream,
                 scratch)},
      {DNNL_ARG_DST, dst}};
  if (has_bias) {
    check_input(b, "bias");
    args[DNNL_ARG_BIAS] = plain(g.bias, tag::a, b.data<float>());
  }
  dnnl::convolution_forward(pd).execute(stream, args);
  copy_back(dst, dst_plain, stream);
  stream.wait();
  return {out};
}

// Gradients of Conv2dForward for the output gradient dy [N, O, H', W']: dx [N, C, H, W] when
// need_input_grad, dw [O, C, kh, kw] and db [O] (when has_bias) when need_weight_grad; an output
// not asked for is a 1-element placeholder. dy is reordered once for both primitives when they
// want the same layout.
std::vector<paddle::Tensor> Conv2dBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                           const paddle::Tensor& dy,
                                           const std::vector<int>& strides,
                                           const std::vector<int>& paddings,
                                           const std::vector<int>& dilations, bool has_bias,
                                           bool need_input_grad, bool need_weight_grad) {
  check_input(x, "input");
  check_input(w, "weight");
  check_input(dy, "output gradient");
  Geometry g = geometry(x.shape(), w.shape(), strides, paddings, dilations);
  auto placeholder = [] {
    return paddle::empty({1}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  };
  paddle::Tensor dx = need_input_grad
      ? paddle::empty(g.src, paddle::DataType::FLOAT32, paddle::CPUPlace()) : placeholder();
  paddle::Tensor dw = need_weight_grad
      ? paddle::empty(g.weights, paddle::DataType::FLOAT32, paddle::CPUPlace()) : placeholder();
  paddle::Tensor db = need_weight_grad && has_bias
      ? paddle::empty(g.bias, paddle::DataType::FLOAT32, paddle::CPUPlace()) : placeholder();
  dnnl::stream stream(cpu_engine());
  auto hint = forward_desc(g, has_bias);
  Scratch scratch;
  dnnl::memory ddst = plain(g.dst, tag::nchw, dy.data<float>());

  dnnl::memory ddst_blocked;  // the output gradient in the last layout reordered to
  auto ddst_in = [&](const dnnl::memory::desc& wanted) {
    if (!ddst_blocked || ddst_blocked.get_desc() != wanted)
      ddst_blocked = to_layout(ddst, wanted, stream, scratch);
    return ddst_blocked;
  };

  if (need_input_grad) {
    dnnl::convolution_backward_data::primitive_desc pd(
        cpu_engine(), dnnl::algorithm::convolution_direct, any_layout(g.src),
        any_layout(g.weights), any_layout(g.dst), g.strides, g.dilation, g.padding, g.padding,
        hint, attributes());
    dnnl::memory dsrc_plain = plain(g.src, tag::nchw, dx.data<float>());
    dnnl::memory dsrc = output_in(dsrc_plain, pd.diff_src_desc(), scratch);
    dnnl::convolution_backward_data(pd).execute(
        stream,
        {{DNNL_ARG_DIFF_DST, ddst_in(pd.diff_dst_desc())},
         {DNNL_ARG_WEIGHTS, to_layout(plain(g.weights, tag::oihw, w.data<float>()),
                                      pd.weights_desc(), stream, scratch)},
         {DNNL_ARG_DIFF_SRC, dsrc}});
    copy_back(dsrc, dsrc_plain, stream);
  }
  if (need_weight_grad) {
    auto pd = has_bias ? dnnl::convolution_backward_weights::primitive_desc(
                             cpu_engine(), dnnl::algorithm::convolution_direct,
                             any_layout(g.src), any_layout(g.weights), any_layout(g.bias),
                             any_layout(g.dst), g.strides, g.dilation, g.padding, g.padding,
                             hint, attributes())
                       : dnnl::convolution_backward_weights::primitive_desc(
                             cpu_engine(), dnnl::algorithm::convolution_direct,
                             any_layout(g.src), any_layout(g.weights), any_layout(g.dst),
                             g.strides, g.dilation, g.padding, g.padding, hint, attributes());
    dnnl::memory dw_plain = plain(g.weights, tag::oihw, dw.data<float>());
    dnnl::memory dweights = output_in(dw_plain, pd.diff_weights_desc(), scratch);
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC,
         to_layout(plain(g.src, tag::nchw, x.data<float>()), pd.src_desc(), stream, scratch)},
        {DNNL_ARG_DIFF_DST, ddst_in(pd.diff_dst_desc())},
        {DNNL_ARG_DIFF_WEIGHTS, dweights}};
    if (has_bias) args[DNNL_ARG_DIFF_BIAS] = plain(g.bias, tag::a, db.data<float>());
    dnnl::convolution_backward_weights(pd).execute(stream, args);
    copy_back(dweights, dw_plain, stream);
  }
  stream.wait();
  return {dx, dw, db};
}

PD_BUILD_OP(onednn_conv2d_forward)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>",
            "dilations: std::vector<int>", "has_bias: bool"})
    .SetKernelFn(PD_KERNEL(Conv2dForward));

PD_BUILD_OP(onednn_conv2d_backward)
    .Inputs({"X", "W", "DY"})
    .Outputs({"DX", "DW", "DB"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>",
            "dilations: std::vector<int>", "has_bias: bool", "need_input_grad: bool",
            "need_weight_grad: bool"})
    .SetKernelFn(PD_KERNEL(Conv2dBackward));
