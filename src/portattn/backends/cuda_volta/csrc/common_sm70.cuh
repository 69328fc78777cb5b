// Volta building blocks shared by the forward and backward kernels: warp-wide WMMA m16n16k16 in
// fp16 with fp32 accumulation, issued as PTX `wmma.*` (no CUDA header needed), and plain 16-byte
// tile loads (sm70 has no cp.async or ldmatrix). Shared-memory tiles are row-major with rows padded
// by 16 bytes, so that the 8 rows one WMMA load touches fall in different banks; every fragment base
// is 32-byte aligned and every leading dimension a multiple of 16 bytes, as WMMA requires.
#pragma once

#include <cuda_fp16.h>

#include "../../cuda_common/csrc/band.cuh"

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#ifndef PORTATTN_WMMA_ORDER
// The WMMA element order of the GPU, as the host checked it for the forward's register softmax
// (cuda_volta/wmma_order.py writes this namespace and defines PORTATTN_WMMA_ORDER); without it, the
// shared-memory softmax only.
namespace portattn_sm70::wmma_order {
constexpr bool REGISTER_SOFTMAX = false;
constexpr int GROUPS = 1, ROW_MASK_COUNT = 1, ROW_LANE_BITS = 0;
__host__ __device__ constexpr int group_of(int) { return 0; }
__host__ __device__ constexpr int group_slot(int) { return 0; }
__host__ __device__ constexpr int row_mask(int) { return 0; }
__host__ __device__ constexpr int a_slot(int) { return 0; }
__host__ __device__ constexpr int a_xor(int) { return 0; }
}  // namespace portattn_sm70::wmma_order
#endif

namespace portattn_sm70 {

using u32 = unsigned int;
constexpr int THREADS = 128;

struct FragAB {  // a 16x16 fp16 operand: 16 halves per lane
  u32 x[8];
};
struct FragC {  // a 16x16 fp32 accumulator: 8 floats per lane, order unspecified
  float x[8];
};

#ifndef PORTATTN_WMMA_EMULATED  // tests/sm70_emulator.h defines these on the CPU
// Every fragment lives in shared memory, and saying so (`.shared`, a 32-bit shared address) lets the
// loads be LDS (and ldmatrix where ptxas targets sm75+) rather than generic LDs. A fragment's address
// is a base register plus a constant byte offset, which ptxas folds into each load's immediate
// (`base + offset` computed first costs two instructions per load: ptxas does not re-associate the
// lane's row offset). `ld` in elements; the address 32-byte aligned, `ld` a multiple of 16 bytes.
__device__ __forceinline__ u32 shared_address(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

template <int OFFSET>
__device__ __forceinline__ void load_a_row_at(FragAB& f, u32 base, int ld) {
  asm volatile("wmma.load.a.sync.aligned.row.m16n16k16.shared.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8+%10], %9;\n"
               : "=r"(f.x[0]), "=r"(f.x[1]), "=r"(f.x[2]), "=r"(f.x[3]), "=r"(f.x[4]), "=r"(f.x[5]),
                 "=r"(f.x[6]), "=r"(f.x[7])
               : "r"(base), "r"(ld), "n"(OFFSET)
               : "memory");
}

template <bool COL, int OFFSET>  // COL: B(k, n) at [k + n * ld] (K read as K^T); else at [k * ld + n]
__device__ __forceinline__ void load_b_at(FragAB& f, u32 base, int ld) {
  if (COL) {
    asm volatile("wmma.load.b.sync.aligned.col.m16n16k16.shared.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8+%10], %9;\n"
                 : "=r"(f.x[0]), "=r"(f.x[1]), "=r"(f.x[2]), "=r"(f.x[3]), "=r"(f.x[4]), "=r"(f.x[5]),
                   "=r"(f.x[6]), "=r"(f.x[7])
                 : "r"(base), "r"(ld), "n"(OFFSET)
                 : "memory");
  } else {
    asm volatile("wmma.load.b.sync.aligned.row.m16n16k16.shared.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8+%10], %9;\n"
                 : "=r"(f.x[0]), "=r"(f.x[1]), "=r"(f.x[2]), "=r"(f.x[3]), "=r"(f.x[4]), "=r"(f.x[5]),
                   "=r"(f.x[6]), "=r"(f.x[7])
                 : "r"(base), "r"(ld), "n"(OFFSET)
                 : "memory");
  }
}

__device__ __forceinline__ void load_c_row(FragC& f, const float* p, int ld) {
  asm volatile("wmma.load.c.sync.aligned.row.m16n16k16.shared.f32 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8], %9;\n"
               : "=f"(f.x[0]), "=f"(f.x[1]), "=f"(f.x[2]), "=f"(f.x[3]), "=f"(f.x[4]), "=f"(f.x[5]),
                 "=f"(f.x[6]), "=f"(f.x[7])
               : "r"(shared_address(p)), "r"(ld)
               : "memory");
}

template <int OFFSET>
__device__ __forceinline__ void store_d_row_at(u32 base, const FragC& f, int ld) {
  asm volatile("wmma.store.d.sync.aligned.row.m16n16k16.shared.f32 [%0+%10], {%1, %2, %3, %4, %5, %6, %7, %8}, %9;\n"
               ::"r"(base), "f"(f.x[0]), "f"(f.x[1]), "f"(f.x[2]), "f"(f.x[3]), "f"(f.x[4]), "f"(f.x[5]),
                 "f"(f.x[6]), "f"(f.x[7]), "r"(ld), "n"(OFFSET)
               : "memory");
}

template <bool B_COL>  // d += a b
__device__ __forceinline__ void mma(FragC& d, const FragAB& a, const FragAB& b) {
#define PORTATTN_SM70_MMA(LAYOUT)                                                                           \
  asm volatile("wmma.mma.sync.aligned.row." LAYOUT ".m16n16k16.f32.f32 {%0, %1, %2, %3, %4, %5, %6, %7}, " \
               "{%8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19, %20, %21, %22, %23}, "        \
               "{%0, %1, %2, %3, %4, %5, %6, %7};\n"                                                       \
               : "+f"(d.x[0]), "+f"(d.x[1]), "+f"(d.x[2]), "+f"(d.x[3]), "+f"(d.x[4]), "+f"(d.x[5]),       \
                 "+f"(d.x[6]), "+f"(d.x[7])                                                                \
               : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(a.x[4]), "r"(a.x[5]),             \
                 "r"(a.x[6]), "r"(a.x[7]), "r"(b.x[0]), "r"(b.x[1]), "r"(b.x[2]), "r"(b.x[3]),             \
                 "r"(b.x[4]), "r"(b.x[5]), "r"(b.x[6]), "r"(b.x[7]))
  if (B_COL) {
    PORTATTN_SM70_MMA("col");
  } else {
    PORTATTN_SM70_MMA("row");
  }
#undef PORTATTN_SM70_MMA
}
#endif  // PORTATTN_WMMA_EMULATED

// The same at a pointer into shared memory, where the address is not a base plus a constant anyway
__device__ __forceinline__ void load_a_row(FragAB& f, const __half* p, int ld) {
  load_a_row_at<0>(f, shared_address(p), ld);
}
__device__ __forceinline__ void store_d_row(float* p, const FragC& f, int ld) {
  store_d_row_at<0>(shared_address(p), f, ld);
}

// Loops whose index must be a compile-time constant (a load's immediate offset): fn(Int<I>{}) for I
// in [BEGIN, END), the index as decltype(i)::value
template <int V>
struct Int {
  static constexpr int value = V;
};
template <int BEGIN, int END, class Fn>
__device__ __forceinline__ void static_for(Fn&& fn) {
  if constexpr (BEGIN < END) {
    fn(Int<BEGIN>{});
    static_for<BEGIN + 1, END>(fn);
  }
}

// Rows [row0, row0 + ROWS) of one head on their way to a padded shared tile (LD halves per row), held
// in registers between the global load and the shared store so that a load issued early hides its
// latency behind compute (sm70 has no cp.async). Rows past `seqlen` and columns past `dim` are zeros.
template <int ROWS, int HEAD_DIM, int NTHREADS = THREADS>
struct TileRegs {
  static constexpr int CHUNKS = HEAD_DIM / 8;  // 16-byte chunks per row
  static constexpr int PER_THREAD = ROWS * CHUNKS / NTHREADS;
  static_assert(ROWS * CHUNKS % NTHREADS == 0, "every thread moves the same number of chunks");
  uint4 val[PER_THREAD];

  // A thread's chunks are rows r, r + ROW_STEP, ... of one column: one 64-bit multiply per tile, then a
  // pointer step and a compare with a constant per chunk (index arithmetic per chunk cost ~15 instructions).
  static constexpr int ROW_STEP = NTHREADS / CHUNKS;
  static_assert(NTHREADS % CHUNKS == 0, "a thread's chunks share a column");

  __device__ __forceinline__ void load(const __half* head, long long stride, int row0, int seqlen, int dim, int tid) {
    const int r = tid / CHUNKS, c = (tid % CHUNKS) * 8;
    const int rows = c < dim ? seqlen - row0 - r : 0;  // this thread's rows inside: i * ROW_STEP < rows
    const __half* p = head + static_cast<long long>(row0 + r) * stride + c;
    const long long step = stride * ROW_STEP;
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i, p += step)
      val[i] = i * ROW_STEP < rows ? *reinterpret_cast<const uint4*>(p) : make_uint4(0, 0, 0, 0);
  }

  template <int LD>
  __device__ __forceinline__ void store(__half* tile, int tid) const {
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      const int idx = tid + i * NTHREADS;
      *reinterpret_cast<uint4*>(tile + (idx / CHUNKS) * LD + (idx % CHUNKS) * 8) = val[i];
    }
  }
};

template <int ROWS, int HEAD_DIM, int LD, int NTHREADS = THREADS>
__device__ __forceinline__ void load_tile(__half* tile, const __half* head, long long stride, int row0, int seqlen,
                                          int dim, int tid) {
  TileRegs<ROWS, HEAD_DIM, NTHREADS> regs;
  regs.load(head, stride, row0, seqlen, dim, tid);
  regs.template store<LD>(tile, tid);
}

using portattn_band::visible;  // the band test, shared with the other CuPy backend

// In the warp GEMMs below, A is 16 x KD (row-major, LDA halves per row) and B is KD x N in shared
// memory at b_addr: B(k, n) at [k + n * LDB] (B_COL: the rows of b are B's columns, as K is for
// Q K^T) or at [k * LDB + n]. Every fragment's offset is a load immediate.

// acc (16 x N as N / 16 fragments) += a B over the 16-deep slice KK of B, `a` being A's fragment KK
template <int N, int KK, bool B_COL, int LDB>
__device__ __forceinline__ void mma_slice(FragC (&acc)[N / 16], const FragAB& a, u32 b_addr) {
  static_for<0, N / 16>([&](auto j) {
    constexpr int J = decltype(j)::value;
    FragAB bf;
    load_b_at<B_COL, (B_COL ? J * 16 * LDB + KK * 16 : KK * 16 * LDB + J * 16) * 2>(bf, b_addr, LDB);
    mma<B_COL>(acc[J], a, bf);
  });
}

// acc (16 x N) += A B, A's fragments in registers
template <int N, int KD, bool B_COL, int LDB>
__device__ __forceinline__ void warp_gemm_acc(FragC (&acc)[N / 16], const FragAB (&a)[KD / 16], const __half* b) {
  const u32 b_addr = shared_address(b);
  static_for<0, KD / 16>([&](auto kk) {
    constexpr int KK = decltype(kk)::value;
    mma_slice<N, KK, B_COL, LDB>(acc, a[KK], b_addr);
  });
}

// acc (16 x N) += A B, A in shared memory at a (each fragment read once)
template <int N, int KD, bool B_COL, int LDA, int LDB>
__device__ __forceinline__ void warp_gemm_acc(FragC (&acc)[N / 16], const __half* a, const __half* b) {
  const u32 a_addr = shared_address(a), b_addr = shared_address(b);
  static_for<0, KD / 16>([&](auto kk) {
    constexpr int KK = decltype(kk)::value;
    FragAB af;
    load_a_row_at<KK * 16 * 2>(af, a_addr, LDA);
    mma_slice<N, KK, B_COL, LDB>(acc, af, b_addr);
  });
}

// C (16 x N, fp32, stored at c with row stride LDC) = A B, A in shared memory at a, a 16 x 16 tile
// of C at a time (one accumulator live, for the backward's register budget)
template <int N, int KD, bool B_COL, int LDC, int LDA, int LDB>
__device__ __forceinline__ void warp_gemm_store(float* c, const __half* a, const __half* b) {
  const u32 c_addr = shared_address(c), a_addr = shared_address(a), b_addr = shared_address(b);
  static_for<0, N / 16>([&](auto j) {
    constexpr int J = decltype(j)::value;
    FragC acc;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc.x[i] = 0.f;
    static_for<0, KD / 16>([&](auto kk) {
      constexpr int KK = decltype(kk)::value;
      FragAB af, bf;
      load_a_row_at<KK * 16 * 2>(af, a_addr, LDA);
      load_b_at<B_COL, (B_COL ? J * 16 * LDB + KK * 16 : KK * 16 * LDB + J * 16) * 2>(bf, b_addr, LDB);
      mma<B_COL>(acc, af, bf);
    });
    store_d_row_at<J * 16 * 4>(c_addr, acc, LDC);
  });
}

// Rows [row0, row0 + 16 * WARPS) of accumulators (each warp 16 rows, D / 16 fragments) times `scale`,
// to global memory in fp16 through `stage` (fp32, row stride D + 4): rows < `rows`, columns < `dim`.
template <int D>
__device__ __forceinline__ void store_rows(__half* dst, long long stride, const FragC (&acc)[D / 16], float* stage,
                                           int warp_row0, int row0, int rows, int dim, float scale, int lane) {
  constexpr int LDO = D + 4;
#pragma unroll
  for (int j = 0; j < D / 16; ++j) store_d_row(stage + warp_row0 * LDO + j * 16, acc[j], LDO);
  __syncwarp();
  for (int i = lane; i < 16 * (D / 2); i += 32) {
    const int r = i / (D / 2), c = (i % (D / 2)) * 2;
    const int row = row0 + warp_row0 + r;
    if (row < rows && c < dim) {
      const float* s = stage + (warp_row0 + r) * LDO + c;
      *reinterpret_cast<__half2*>(dst + row * stride + c) = __floats2half2_rn(s[0] * scale, s[1] * scale);
    }
  }
}

}  // namespace portattn_sm70
