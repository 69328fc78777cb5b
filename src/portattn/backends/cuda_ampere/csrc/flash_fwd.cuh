// FlashAttention-2 forward for sm80+: mma.sync m16n8k16 (fp32 accumulation), ldmatrix, a
// double-buffered cp.async pipeline for K/V tiles, XOR-swizzled shared memory.
//
// One thread block: BLOCK_M query rows of one (batch, query head); each of its 4 warps owns a quarter
// of them for the whole loop (split-Q: no cross-warp reduction). Visibility is the band lo <= key - row <= hi
// (HAS_LO / HAS_HI off = unbounded): key blocks outside it are never loaded, blocks wholly inside run
// without mask arithmetic. Softmax in base 2 with the scale folded into the exponent's FMA.
//
// Tensors are (batch, seqlen, heads, HEAD_DIM-or-less) with a contiguous last dim and 16-byte aligned
// rows; `dim` (<= HEAD_DIM, a multiple of 8) is the real head dim, the rest is zero-filled in shared
// memory. out is (batch, seqlen_q, heads_q, dim_v); lse float32 (batch, heads_q, seqlen_q).
#pragma once

#include "common.cuh"

namespace portattn {

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  long long q_stride_b, q_stride_s, q_stride_h;
  long long k_stride_b, k_stride_s, k_stride_h;
  long long v_stride_b, v_stride_s, v_stride_h;
  long long o_stride_b, o_stride_s, o_stride_h;
  int seqlen_q, seqlen_k, heads_q, group, dim, dim_v;
  int band_lo, band_hi;
  float scale_log2;      // softmax scale * log2(e)
  float softcap_log2;    // HAS_SOFTCAP: scores become softcap * tanh(scale * q.k / softcap), here times log2(e)
  float scale_over_cap;  // HAS_SOFTCAP: scale / softcap
};

// Launched with plain arguments (what CuPy passes without a struct layout to agree on), in FwdParams' order.
// 4 warps; each owns BLOCK_M / 4 query rows as BLOCK_M / 64 MMA tiles of 16 rows, so that every K and V
// fragment read from shared memory feeds that many MMAs.
template <typename T, int HEAD_DIM, int BLOCK_M, int BLOCK_N, bool HAS_LO, bool HAS_HI, bool HAS_SOFTCAP>
__global__ void __launch_bounds__(128)
flash_fwd(const void* q, const void* k, const void* v, void* out, float* lse,
          long long q_stride_b, long long q_stride_s, long long q_stride_h,
          long long k_stride_b, long long k_stride_s, long long k_stride_h,
          long long v_stride_b, long long v_stride_s, long long v_stride_h,
          long long o_stride_b, long long o_stride_s, long long o_stride_h,
          int seqlen_q, int seqlen_k, int heads_q, int group, int dim, int dim_v, int band_lo, int band_hi,
          float scale_log2, float softcap_log2, float scale_over_cap) {
  const FwdParams p{q, k, v, out, lse, q_stride_b, q_stride_s, q_stride_h, k_stride_b, k_stride_s, k_stride_h,
                    v_stride_b, v_stride_s, v_stride_h, o_stride_b, o_stride_s, o_stride_h,
                    seqlen_q, seqlen_k, heads_q, group, dim, dim_v, band_lo, band_hi,
                    scale_log2, softcap_log2, scale_over_cap};
  constexpr int THREADS = 128;
  constexpr int M_TILES = BLOCK_M / 64;   // 16-row MMA tiles per warp
  constexpr int N_TILES = BLOCK_N / 8;    // 8-key column tiles of S
  constexpr int O_TILES = HEAD_DIM / 8;   // 8-dim column tiles of O
  static_assert(HEAD_DIM % 64 == 0, "the swizzle needs rows of at least 8 chunks of 16 bytes");
  static_assert(BLOCK_N % 16 == 0 && BLOCK_M % 64 == 0, "4 warps of 16-row MMA tiles; 16-key k-steps");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* q_smem = reinterpret_cast<T*>(aligned_smem(smem_raw));
  T* k_smem = q_smem + BLOCK_M * HEAD_DIM;     // 2 buffers
  T* v_smem = k_smem + 2 * BLOCK_N * HEAD_DIM;  // 2 buffers

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int m0 = blockIdx.x * BLOCK_M;
  const int bh = blockIdx.y;
  const int b = bh / p.heads_q;
  const int h = bh % p.heads_q;
  const int hk = h / p.group;
  const int warp_row = warp * 16 * M_TILES;  // this warp's first row in the block

  const T* q_head = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k_head = static_cast<const T*>(p.k) + b * p.k_stride_b + hk * p.k_stride_h;
  const T* v_head = static_cast<const T*>(p.v) + b * p.v_stride_b + hk * p.v_stride_h;

  // the key range this block can see
  int first = 0, last = p.seqlen_k;
  if (HAS_LO) first = max(m0 + p.band_lo, 0) / BLOCK_N * BLOCK_N;
  if (HAS_HI) last = min(m0 + BLOCK_M - 1 + p.band_hi + 1, p.seqlen_k);

  load_tile_async<T, BLOCK_M, HEAD_DIM, THREADS>(q_smem, q_head, p.q_stride_s, m0, p.seqlen_q, p.dim, tid);
  if (first < last) {
    load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(k_smem, k_head, p.k_stride_s, first, p.seqlen_k, p.dim, tid);
  }
  cp_async_commit();

  float o_acc[M_TILES][O_TILES][4];
  float row_max[M_TILES][2], row_sum[M_TILES][2];
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
    for (int j = 0; j < O_TILES; ++j) o_acc[mt][j][0] = o_acc[mt][j][1] = o_acc[mt][j][2] = o_acc[mt][j][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const int row0 = m0 + warp_row + lane / 4;  // this thread's rows: row0 + 16 mt + {0, 8}

  int buf = 0;
  for (int n0 = first; n0 < last; n0 += BLOCK_N, buf ^= 1) {
    T* k_buf = k_smem + buf * BLOCK_N * HEAD_DIM;
    T* v_buf = v_smem + buf * BLOCK_N * HEAD_DIM;
    load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(v_buf, v_head, p.v_stride_s, n0, p.seqlen_k, p.dim_v, tid);
    cp_async_commit();
    cp_async_wait<1>();  // Q (first time) and K of this block; V may still be in flight
    __syncthreads();

    // S = Q K^T for this warp's rows; Q fragments come from shared memory at each k-step (registers
    // are kept for S and O)
    float s[M_TILES][N_TILES][4];
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
      for (int j = 0; j < N_TILES; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
    mma_a_bt<T, HEAD_DIM, M_TILES, N_TILES>(s, q_smem, warp_row, k_buf, lane);
    const bool more = n0 + BLOCK_N < last;
    if (more) {  // the next K tile streams in while this one's softmax and P.V run
      load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(k_smem + (buf ^ 1) * BLOCK_N * HEAD_DIM, k_head,
                                                     p.k_stride_s, n0 + BLOCK_N, p.seqlen_k, p.dim, tid);
    }
    cp_async_commit();

    // scores masked where the block is not wholly visible; with a softcap already capped and in base 2,
    // otherwise raw: the scale is folded into the exponent's FMA below
    const bool masked =
        tile_partial<BLOCK_M, BLOCK_N, HAS_LO, HAS_HI>(m0, n0, p.seqlen_q, p.seqlen_k, p.band_lo, p.band_hi);
    if (HAS_SOFTCAP || masked) {
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
        for (int j = 0; j < N_TILES; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mt][j][e];
            if (HAS_SOFTCAP) x = p.softcap_log2 * tanhf(x * p.scale_over_cap);
            if (masked) {
              const int row = row0 + mt * 16 + (e / 2) * 8;
              const int key = n0 + j * 8 + (lane % 4) * 2 + e % 2;
              if (!visible<HAS_LO, HAS_HI>(row, key, p.seqlen_q, p.seqlen_k, p.band_lo, p.band_hi)) x = -INFINITY;
            }
            s[mt][j][e] = x;
          }
        }
      }
    }
    const float to_log2 = HAS_SOFTCAP ? 1.f : p.scale_log2;  // scores -> base-2 logits (the scale is > 0)

    // online softmax: each row's max and sum across the 4 threads of a quad; row_max in base 2
    float alpha[M_TILES][2];
    bool rescale = false;
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < N_TILES; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
        mx = fmaxf(row_max[mt][r], mx * to_log2);
        const float m_use = mx == -INFINITY ? 0.f : mx;  // a row that has seen no key yet
        alpha[mt][r] = exp2f(row_max[mt][r] - m_use);
        rescale |= mx != row_max[mt][r];
        row_max[mt][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < N_TILES; ++j) {
          s[mt][j][2 * r] = exp2f(fmaf(s[mt][j][2 * r], to_log2, -m_use));
          s[mt][j][2 * r + 1] = exp2f(fmaf(s[mt][j][2 * r + 1], to_log2, -m_use));
          sum += s[mt][j][2 * r] + s[mt][j][2 * r + 1];
        }
        row_sum[mt][r] = row_sum[mt][r] * alpha[mt][r] + sum;  // this thread's share; the quad adds up at the end
      }
    }
    // O is rescaled only when a row's max moved somewhere in the warp: once the maxima settle, most key
    // blocks skip the M_TILES * HEAD_DIM / 2 multiplies (alpha is exactly 1 for the rows that did not move)
    if (__any_sync(0xffffffff, rescale)) {
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
        for (int j = 0; j < O_TILES; ++j) {
          o_acc[mt][j][0] *= alpha[mt][0];
          o_acc[mt][j][1] *= alpha[mt][0];
          o_acc[mt][j][2] *= alpha[mt][1];
          o_acc[mt][j][3] *= alpha[mt][1];
        }
      }
    }

    if (more) cp_async_wait<1>();  // V of this block (the next K may still be in flight)
    else cp_async_wait<0>();
    __syncthreads();

    // O += P V
    mma_p_x<T, HEAD_DIM, M_TILES, N_TILES>(o_acc, s, v_buf, lane);
  }
  cp_async_wait<0>();

  // normalize and store; rows that saw no key give 0 and lse -inf
  T* o_head = static_cast<T*>(p.out) + b * p.o_stride_b + h * p.o_stride_h;
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mt][r];
      l += __shfl_xor_sync(0xffffffff, l, 1);
      l += __shfl_xor_sync(0xffffffff, l, 2);
      const int row = row0 + mt * 16 + r * 8;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (row < p.seqlen_q) {
#pragma unroll
        for (int j = 0; j < O_TILES; ++j) {
          const int col = j * 8 + (lane % 4) * 2;
          if (col < p.dim_v) {
            *reinterpret_cast<u32*>(o_head + row * p.o_stride_s + col) =
                pack2<T>(o_acc[mt][j][2 * r] * inv, o_acc[mt][j][2 * r + 1] * inv);
          }
        }
        if (lane % 4 == 0) {
          const float m = row_max[mt][r] == -INFINITY ? 0.f : row_max[mt][r];
          p.lse[static_cast<long long>(bh) * p.seqlen_q + row] =
              l > 0.f ? (m + log2f(l)) * 0.6931471805599453f : -INFINITY;
        }
      }
    }
  }
}

}  // namespace portattn
