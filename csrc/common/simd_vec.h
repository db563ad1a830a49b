// Vec<T>: a 64-byte SIMD vector of T (16 floats, 8 doubles) for the CPU kernels' register tiles,
// written with GCC/Clang vector extensions: the compiler maps it to one AVX-512 register, two
// AVX2 ones or four SSE ones in the respective clone of a multi-ISA function (cpu_isa.h).
// Vec<T, 32> is the 32-byte vector (one AVX2 register), for tiles that need many registers.
// Elsewhere a portable array with the same interface.
#pragma once

#include <algorithm>

#include "cpu_isa.h"  // BSR_INLINE

namespace bsrops {

#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors only live inside inlined code
template <typename T, int Bytes = 64>
struct Vec {
  static constexpr int kLanes = Bytes / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(Bytes)));
  static BSR_INLINE type load(const T* p) {
    type v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  static BSR_INLINE void store(T* p, type v) { __builtin_memcpy(p, &v, sizeof v); }
  static BSR_INLINE type splat(T s) { return type{} + s; }
};
#else
template <typename T, int Bytes = 64>
struct Vec {
  static constexpr int kLanes = Bytes / static_cast<int>(sizeof(T));
  struct type {
    T e[kLanes];
    friend type operator+(type a, type b) { for (int l = 0; l < kLanes; ++l) a.e[l] += b.e[l]; return a; }
    friend type operator*(type a, type b) { for (int l = 0; l < kLanes; ++l) a.e[l] *= b.e[l]; return a; }
    type& operator+=(type b) { return *this = *this + b; }
  };
  static type load(const T* p) { type v; std::copy(p, p + kLanes, v.e); return v; }
  static void store(T* p, type v) { std::copy(v.e, v.e + kLanes, p); }
  static type splat(T s) { type v; std::fill(v.e, v.e + kLanes, s); return v; }
};
#endif

}  // namespace bsrops
