// What the CUDA kernels share: the block size, grid sizing and the grid-stride loop, the launch
// on the current stream with its error check, and a deterministic block reduction. Only
// minimal headers, so that the kernels compile against the CPU torch wheel (the nvcc check).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace bsrops {

constexpr int kThreads = 256;          // threads per block of every kernel (their __launch_bounds__)
constexpr int64_t kMaxBlocks = 65536;  // a grid-stride loop covers the elements beyond

// Blocks of a grid-stride loop over `total` elements.
inline int64_t grid_blocks(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
}

// for (e = this thread's first element; e < total; e += all threads of the grid)
#define BSR_GRID_STRIDE(e, total)                                                          \
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < (total); \
       e += static_cast<int64_t>(blockDim.x) * gridDim.x)

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
