// The LeakyReLU element and its gradient, for the kernels that fuse the activation (dpcb,
// patchgan_conv) on every device.
#pragma once

#include <c10/macros/Macros.h>

namespace bsrops {

template <typename T>
C10_HOST_DEVICE inline T leaky_relu_element(T v, T slope) {
  return v > T(0) ? v : v * slope;
}

// d lrelu from its *output*: for slope >= 0 the output has the sign of the input, so the
// pre-activation need not be kept for the backward.
template <typename T>
C10_HOST_DEVICE inline T leaky_relu_grad_element(T grad, T out, T slope) {
  return out > T(0) ? grad : grad * slope;
}

}  // namespace bsrops
