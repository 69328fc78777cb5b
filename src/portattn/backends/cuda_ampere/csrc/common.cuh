// sm80 building blocks shared by the forward and backward kernels: cp.async, ldmatrix, mma.sync
// m16n8k16 with fp32 accumulation, and the XOR swizzle of shared-memory tiles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../../cuda_common/csrc/band.cuh"

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace portattn {

using u32 = unsigned int;  // NVRTC has no <stdint.h>

// A tile of ROWS x WIDTH 16-bit values is stored row by row; 16-byte chunk c of row r sits at chunk
// c ^ (r % 8). The 8 rows an ldmatrix reads, and the 8 chunks cp.async writes per row group, then fall in
// 8 different 4-bank groups: no bank conflicts. Rows of 4 chunks (WIDTH 32: two rows per 128 bytes) use
// c ^ ((r / 2) % 4) for the same effect.
// Bit operations, not / and %: the compiler then sees that a row offset by a multiple of 8 keeps its
// XOR key, and turns such offsets into immediates instead of holding each address in a register.
template <int WIDTH>
__device__ __forceinline__ int swizzle(int row, int col) {
  static_assert(WIDTH % 64 == 0 || WIDTH == 32, "rows of 4 or a multiple of 8 chunks of 16 bytes");
  const int key = WIDTH == 32 ? (row >> 1) & 3 : row & 7;
  return row * WIDTH + ((((col >> 3) ^ key)) << 3) + (col & 7);
}

template <typename T>
__device__ __forceinline__ u32 smem_addr(const T* base, int offset) {
  return static_cast<u32>(__cvta_generic_to_shared(base + offset));
}

// Dynamic shared memory from a 256-byte boundary (launches ask for SMEM_SLACK bytes more): every tile then
// starts at a multiple of its row bytes, so moving a swizzled address by whole chunks is one XOR (tile_step).
constexpr int SMEM_SLACK = 256;

__device__ __forceinline__ unsigned char* aligned_smem(unsigned char* raw) {
  return raw + ((SMEM_SLACK - (smem_addr(raw, 0) & (SMEM_SLACK - 1))) & (SMEM_SLACK - 1));
}

// The shared address of element (row + rows, col + 8 * chunks) of a swizzled WIDTH-wide tile from `addr`, that
// of (row, col): `rows` a multiple of 8 keeps the XOR key (an immediate offset) and `chunks`, whose bits
// must be clear in col / 8, flips chunk bits only (one XOR, given the tile's alignment).
template <int WIDTH>
__device__ __forceinline__ u32 tile_step(u32 addr, int rows, int chunks) {
  return (addr ^ static_cast<u32>(chunks << 4)) + rows * WIDTH * 2;
}

__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_4(u32 dst, const void* src, bool valid) {
  const int bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
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
  constexpr int CHUNKS = HEAD_DIM / 8;            // 16-byte chunks per row
  constexpr int ROWS_PER_PASS = THREADS / CHUNKS;  // a multiple of 8: every pass keeps the swizzle key
  static_assert(ROWS % ROWS_PER_PASS == 0 && ROWS_PER_PASS % 8 == 0, "whole passes of whole swizzle groups");
  const int row = tid / CHUNKS;
  const int col = (tid % CHUNKS) * 8;
  const T* src = head + (row0 + row) * stride + col;
  const u32 dst = smem_addr(tile, swizzle<HEAD_DIM>(row, col));
#pragma unroll
  for (int i = 0; i < ROWS / ROWS_PER_PASS; ++i) {
    const bool valid = row0 + row + i * ROWS_PER_PASS < seqlen && col < dim;
    // each pass moves ROWS_PER_PASS rows down: the same swizzle key, so a constant offset in shared memory
    cp_async_16(dst + i * ROWS_PER_PASS * HEAD_DIM * sizeof(T), valid ? src + i * ROWS_PER_PASS * stride : head,
                valid);
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

using portattn_band::visible;  // the band test, shared with the other CuPy backend

// Whether some (query, key) of the tile [m0, m0 + BLOCK_M) x [n0, n0 + BLOCK_N) is not visible: past a
// sequence's end, or outside the band (key - query spans [n0 - m0 - BLOCK_M + 1, n0 - m0 + BLOCK_N - 1]).
// Wholly visible tiles skip the per-element test.
template <int BLOCK_M, int BLOCK_N, bool HAS_LO, bool HAS_HI>
__device__ __forceinline__ bool tile_partial(int m0, int n0, int seqlen_q, int seqlen_k, int lo, int hi) {
  bool partial = m0 + BLOCK_M > seqlen_q || n0 + BLOCK_N > seqlen_k;
  if (HAS_LO) partial |= n0 - m0 - BLOCK_M + 1 < lo;
  if (HAS_HI) partial |= n0 - m0 + BLOCK_N - 1 > hi;
  return partial;
}

// This lane's ldmatrix address in a swizzled HEAD_DIM-wide tile whose rows are B^T's columns (B's N_TILES * 8 rows
// from row 0): x4 loads cover two 8-row tiles, k 0-15.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ u32 bt_addr(const T* b, int lane) {
  return smem_addr(b, swizzle<HEAD_DIM>(lane % 8 + (lane / 16) * 8, ((lane / 8) % 2) * 8));
}

// k-step kk (16 of HEAD_DIM) of acc (M_TILES x 16 rows, N_TILES x 8 columns) += A B^T, A's fragments given:
// each B fragment feeds M_TILES MMAs.
template <typename T, int HEAD_DIM, int M_TILES, int N_TILES>
__device__ __forceinline__ void mma_bt_step(float (&acc)[M_TILES][N_TILES][4], const u32 (&af)[M_TILES][4], u32 b_addr,
                                            int kk) {
  static_assert(N_TILES % 2 == 0, "B fragments come in pairs of 8-row tiles");
#pragma unroll
  for (int j = 0; j < N_TILES; j += 2) {
    u32 bf[4];  // b0, b1 of row tile j, then of row tile j + 1
    ldmatrix_x4(bf, tile_step<HEAD_DIM>(b_addr, j * 8, 2 * kk));
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
      mma_16816<T>(acc[mt][j], af[mt], bf[0], bf[1]);
      mma_16816<T>(acc[mt][j + 1], af[mt], bf[2], bf[3]);
    }
  }
}

// acc (M_TILES x 16 rows, N_TILES x 8 columns) += A B^T over HEAD_DIM: A's rows start at a_row0 of a
// swizzled tile, B's N_TILES * 8 rows are a whole tile (both row-major, HEAD_DIM wide). Each B fragment
// feeds M_TILES MMAs.
template <typename T, int HEAD_DIM, int M_TILES, int N_TILES>
__device__ __forceinline__ void mma_a_bt(float (&acc)[M_TILES][N_TILES][4], const T* a, int a_row0, const T* b,
                                         int lane) {
  const u32 a_addr = smem_addr(a, swizzle<HEAD_DIM>(a_row0 + lane % 16, lane / 16 * 8));
  const u32 b_addr = bt_addr<T, HEAD_DIM>(b, lane);
#pragma unroll 2  // fully unrolled, ptxas hoists more addresses than the registers hold at HEAD_DIM 128
  for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
    u32 af[M_TILES][4];
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) ldmatrix_x4(af[mt], tile_step<HEAD_DIM>(a_addr, mt * 16, 2 * kk));
    mma_bt_step<T, HEAD_DIM, M_TILES, N_TILES>(acc, af, b_addr, kk);
  }
}

// The A fragments of 16 rows from a_row0 of a swizzled HEAD_DIM-wide tile, one per k-step, for A B^T products
// that reuse them (mma_frags_bt).
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void load_a_frags(u32 (&af)[HEAD_DIM / 16][1][4], const T* a, int a_row0, int lane) {
  const u32 a_addr = smem_addr(a, swizzle<HEAD_DIM>(a_row0 + lane % 16, lane / 16 * 8));
#pragma unroll
  for (int kk = 0; kk < HEAD_DIM / 16; ++kk) ldmatrix_x4(af[kk][0], tile_step<HEAD_DIM>(a_addr, 0, 2 * kk));
}

// acc (16 rows, N_TILES x 8 columns) += A B^T with A's fragments in registers (load_a_frags), B as in mma_a_bt.
template <typename T, int HEAD_DIM, int N_TILES>
__device__ __forceinline__ void mma_frags_bt(float (&acc)[1][N_TILES][4], const u32 (&af)[HEAD_DIM / 16][1][4],
                                             const T* b, int lane) {
  const u32 b_addr = bt_addr<T, HEAD_DIM>(b, lane);
#pragma unroll
  for (int kk = 0; kk < HEAD_DIM / 16; ++kk) mma_bt_step<T, HEAD_DIM, 1, N_TILES>(acc, af[kk], b_addr, kk);
}

template <typename T>
__device__ __forceinline__ u32 pack2(float lo, float hi);

// One 16-row k-step of acc (M_TILES x 16 rows, N_TILES x 8 columns) += A X: `a` holds A's fragments for
// the step, X's rows kk * 16.. of a swizzled tile (X_WIDTH wide) come transposed by ldmatrix, from column
// `col0` on. Each X fragment feeds M_TILES MMAs.
template <typename T, int X_WIDTH, int M_TILES, int N_TILES>
__device__ __forceinline__ void mma_x_step(float (&acc)[M_TILES][N_TILES][4], const u32 (&a)[M_TILES][4], const T* x,
                                           int kk, int col0, int lane) {
  static_assert(N_TILES % 2 == 0 && (N_TILES & (N_TILES - 1)) == 0, "pairs of 8-column tiles; col0 / 8 a multiple");
  const u32 x_addr = smem_addr(x, swizzle<X_WIDTH>(lane % 8 + ((lane / 8) % 2) * 8, col0 + (lane / 16) * 8));
#pragma unroll
  for (int j = 0; j < N_TILES; j += 2) {
    u32 xf[4];  // b0, b1 of column tile j, then of column tile j + 1
    ldmatrix_x4_trans(xf, tile_step<X_WIDTH>(x_addr, kk * 16, j));
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
      mma_16816<T>(acc[mt][j], a[mt], xf[0], xf[1]);
      mma_16816<T>(acc[mt][j + 1], a[mt], xf[2], xf[3]);
    }
  }
}

// acc (M_TILES x 16 rows, HEAD_DIM wide) += P X: P is an fp32 accumulator (M_TILES x 16 rows, K_TILES x 8
// columns) in registers, rounded to T; X's K_TILES * 8 rows are a whole swizzled tile. The accumulator
// layout of m16n8k16, packed in pairs, is its A operand's layout.
template <typename T, int HEAD_DIM, int M_TILES, int K_TILES>
__device__ __forceinline__ void mma_p_x(float (&acc)[M_TILES][HEAD_DIM / 8][4], const float (&p)[M_TILES][K_TILES][4],
                                        const T* x, int lane) {
  static_assert(K_TILES % 2 == 0, "16-row k-steps");
#pragma unroll
  for (int kk = 0; kk < K_TILES / 2; ++kk) {
    u32 pa[M_TILES][4];
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
      pa[mt][0] = pack2<T>(p[mt][2 * kk][0], p[mt][2 * kk][1]);
      pa[mt][1] = pack2<T>(p[mt][2 * kk][2], p[mt][2 * kk][3]);
      pa[mt][2] = pack2<T>(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
      pa[mt][3] = pack2<T>(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
    }
    mma_x_step<T, HEAD_DIM, M_TILES, HEAD_DIM / 8>(acc, pa, x, kk, 0, lane);
  }
}

// acc (16 rows, N_TILES x 8 columns) += A X over K_STEPS 16-row steps, with A stored transposed: A's rows
// are columns a_col0.. of the swizzled tile `a_t` (A_WIDTH wide, one row per k), read by ldmatrix.trans.
// X as in mma_x_step, from column x_col0.
template <typename T, int A_WIDTH, int X_WIDTH, int N_TILES, int K_STEPS>
__device__ __forceinline__ void mma_at_x(float (&acc)[1][N_TILES][4], const T* a_t, int a_col0, const T* x, int x_col0,
                                         int lane) {
  const u32 a_addr = smem_addr(a_t, swizzle<A_WIDTH>(lane % 8 + (lane / 16) * 8, a_col0 + ((lane / 8) % 2) * 8));
#pragma unroll
  for (int kk = 0; kk < K_STEPS; ++kk) {
    u32 af[1][4];  // (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
    ldmatrix_x4_trans(af[0], tile_step<A_WIDTH>(a_addr, kk * 16, 0));
    mma_x_step<T, X_WIDTH, 1, N_TILES>(acc, af, x, kk, x_col0, lane);
  }
}

// two floats as one register of two 16-bit values (the lower address holds `lo`)
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
