// What the CUDA kernels share: the block size, grid sizing and the grid-stride loop, the launch
// on the current stream with its error check, a deterministic block reduction, and the dtype
// dispatch of the kernels that take half types. Only minimal headers, so that the kernels
// compile against the CPU torch wheel (the nvcc check).
#pragma once

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

// The dispatch of a host function whose kernels take float64, float32, float16 and bfloat16.
#define BSR_DISPATCH_FLOAT_AND_HALF(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

namespace bsrops {

constexpr int kThreads = 256;          // threads per block of every kernel (their __launch_bounds__)
constexpr int64_t kMaxBlocks = 65536;  // a grid-stride loop covers the elements beyond

// Blocks of a grid-stride loop over `total` elements.
inline int64_t grid_blocks(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
}

// for (e = this thread's first element; e < total; e += all threads of the grid), e of type index_t
#define BSR_GRID_STRIDE_AS(index_t, e, total)                                              \
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < (total); \
       e += static_cast<index_t>(blockDim.x) * gridDim.x)
#define BSR_GRID_STRIDE(e, total) BSR_GRID_STRIDE_AS(int64_t, e, total)

// Whether int32_t indices serve a grid-stride loop over `total` elements, and offsets below
// `total`: the last step of the loop, up to one grid of threads past `total`, must not overflow.
inline bool fits_int32(int64_t total) {
  return total <= std::numeric_limits<int32_t>::max() - kThreads * kMaxBlocks;
}

// f(index) with index an int32_t when fits_int32(total), else an int64_t (the kernel's index type).
template <typename F>
void with_index_type(int64_t total, const F& f) {
  if (fits_int32(total)) {
    f(int32_t{0});
  } else {
    f(int64_t{0});
  }
}

// kernel<<<blocks, kThreads>>>(args...) on the current CUDA stream, then the launch check.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), int64_t blocks, Args&&... args) {
  const unsigned int grid = static_cast<unsigned int>(blocks);
  kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The sum of one value per thread of a kThreads block, added in a fixed tree order
// (deterministic); every thread gets it. `shared` holds kThreads values.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();
  return total;
}

}  // namespace bsrops
