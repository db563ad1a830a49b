// Instruction-set selection for the CPU kernels. The extension is built for the baseline
// x86-64 ISA; hot loops are compiled again for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA)
// and picked at load time (GCC target_clones). Elsewhere everything is the baseline build.
#pragma once

#include <type_traits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define BSR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BSR_CLONES
#endif
#if defined(__GNUC__) || defined(__clang__)
#define BSR_INLINE inline __attribute__((always_inline))
#define BSR_LAMBDA_INLINE __attribute__((always_inline))
#else
#define BSR_INLINE inline
#define BSR_LAMBDA_INLINE
#endif

namespace bsrops {

template <typename F>
BSR_CLONES void run_best_isa(const F& body) {
  body();  // inlined into each clone, so compiled for that clone's ISA
}

// Runs `body` (a lambda marked BSR_LAMBDA_INLINE) in the multi-ISA build for float, the
// dtype training runs; other dtypes run the baseline build (keeps the build time reasonable).
template <typename scalar_t, typename F>
inline void with_best_isa(const F& body) {
  if constexpr (std::is_same_v<scalar_t, float>)
    run_best_isa(body);
  else
    body();
}

}  // namespace bsrops
