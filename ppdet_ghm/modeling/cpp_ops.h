// Helpers shared by ppdet-ghm's custom ops that call Paddle's own CPU kernels on several threads
// (modeling/threaded_conv.cc, modeling/frozen_bn.cc, losses/threaded_ops.cc,
// engine/threaded_momentum.cc). ppdet_ghm/modeling/cpp_ops.py puts this folder on the include
// path of every build and this file's text into every build's cache key.

#pragma once

#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "paddle/extension.h"
#include "paddle/phi/api/include/context_pool.h"
#include "paddle/phi/backends/cpu/cpu_context.h"
#include "paddle/phi/core/dense_tensor.h"
#include "paddle/phi/core/kernel_factory.h"

namespace ppdet_ghm {

// Paddle's registered CPU float32 kernel `name`, as the function type `Fn` of its variadic
// form (the kernel's own parameters, the device context as phi::DeviceContext).
template <typename Fn>
Fn cpu_kernel(const char* name) {
  const phi::KernelKey key(phi::Backend::CPU, phi::DataLayout::ALL_LAYOUT,
                           phi::DataType::FLOAT32);
  return phi::KernelFactory::Instance()
      .SelectKernelOrThrowError(name, key)
      .kernel.GetVariadicKernelFn<Fn>();
}

inline const phi::DeviceContext& cpu_context() {
  return *paddle::experimental::DeviceContextPool::Instance().Get(phi::CPUPlace());
}

inline phi::DenseTensor& dense(const paddle::Tensor& t) {
  return *static_cast<phi::DenseTensor*>(t.impl().get());
}

// Elements [begin, end) of a contiguous float32 tensor as a 1-D tensor sharing its memory.
inline phi::DenseTensor flat_piece(const phi::DenseTensor& t, int64_t begin, int64_t end) {
  phi::DenseTensorMeta meta = t.meta();
  meta.offset += begin * sizeof(float);
  meta.dims = common::make_ddim({end - begin});
  meta.strides = phi::DenseTensorMeta::calc_strides(meta.dims);
  return phi::DenseTensor(t.Holder(), meta);
}

// Calls part(i) for i in [0, count): part(0) on this thread, the others on new threads; waits
// for all of them, then rethrows the error of the lowest i that failed.
template <typename Part>
void on_threads(int count, Part part) {
  if (count <= 1) {
    part(0);
    return;
  }
  std::vector<std::exception_ptr> errors(count);
  auto guarded = [&](int i) {
    try {
      part(i);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  for (int i = 1; i < count; ++i) workers.emplace_back(guarded, i);
  guarded(0);
  for (auto& worker : workers) worker.join();
  for (auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace ppdet_ghm
