// sm80 building blocks shared by the forward and backward kernels: cp.async, ldmatrix, mma.sync
// m16n8k16 with fp32 accumulation, and the XOR swizzle of shared-memory tiles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace portattn {

using u32 = unsigned int;  // NVRTC has no <stdint.h>

// A tile of ROWS x HEAD_DIM 16-bit values is stored row by row; 16-byte chunk c of row r sits at
// chunk c ^ (r % 8). The 8 rows an ldmatrix reads, and the 8 chunks cp.async writes per row group,
// then fall in 8 different 4-bank groups: no bank conflicts.
// Bit operations, not / and %: the compiler then sees that a row offset by a multiple of 8 keeps its
// XOR key, and turns such offsets into immediates instead of holding each address in a register.
template <int HEAD_DIM>
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * HEAD_DIM + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

template <typename T>
__device__ __forceinline__ u32 smem_addr(const T* base, int offset) {
  return static_cast<u32>(__cvta_generic_to_shared(base + offset));
}

__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Rows [row0, row0 + ROWS) of one head (row stride `stride` elements) into a swizzled tile; rows past
// `seqlen` and columns past `dim` (a multiple of 8) are zero-filled.
template <typename T, int ROWS, int HEAD_DIM, int THREADS>
__device__ __forceinline__ void load_tile_async(T* tile, const T* head, long long stride, int row0, int seqlen,
                                                int dim, int tid) {
  constexpr int CHUNKS = HEAD_DIM / 8;
  static_assert((ROWS * CHUNKS) % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < ROWS * CHUNKS / THREADS; ++i) {
    const int c = tid + i * THREADS;
    const int row = c / CHUNKS;
    const int col = (c % CHUNKS) * 8;
    const bool valid = row0 + row < seqlen && col < dim;
    const T* src = valid ? head + (row0 + row) * stride + col : head;
    cp_async_16(smem_addr(tile, swizzle<HEAD_DIM>(row, col)), src, valid);
  }
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d (16x8 fp32) += a (16x16, row) * b (16x8, col)
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const u32 (&a)[4], u32 b0,
                                                         u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// two floats as one register of two 16-bit values (the lower address holds `lo`)
template <typename T>
__device__ __forceinline__ u32 pack2(float lo, float hi);

template <>
__device__ __forceinline__ u32 pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<u32*>(&v);
}

template <>
__device__ __forceinline__ u32 pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<u32*>(&v);
}

}  // namespace portattn
