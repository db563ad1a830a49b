// Loop pragmas of the CPU kernels, usable inside macro arguments:
//   BSR_SIMD, BSR_SIMD_SUM(vars...)  vectorise the next loop (OpenMP simd; with a + reduction over vars)
//   BSR_UNROLL                       unroll the next loop completely (short loops of a constant trip count)
//   BSR_PREFETCH(p, write)           prefetch the cache line at p into all cache levels
// They expand to nothing for nvcc (the per-element functions that use BSR_SIMD are compiled for
// the GPU too) and where the compiler lacks the feature.
#pragma once

#define BSR_PRAGMA(x) _Pragma(#x)

#if defined(_OPENMP) && !defined(__CUDACC__)
#define BSR_SIMD BSR_PRAGMA(omp simd)
#define BSR_SIMD_SUM(...) BSR_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define BSR_SIMD
#define BSR_SIMD_SUM(...)
#endif

#if defined(__clang__)
#define BSR_UNROLL BSR_PRAGMA(unroll)
#elif defined(__GNUC__)
#define BSR_UNROLL BSR_PRAGMA(GCC unroll 64)
#else
#define BSR_UNROLL
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BSR_PREFETCH(p, write) __builtin_prefetch((p), (write), 3)
#else
#define BSR_PREFETCH(p, write) ((void)0)
#endif
