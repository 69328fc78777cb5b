// FlashAttention-2 forward with Volta's instructions only (sm70): WMMA m16n16k16 in fp16 with fp32
// accumulation, plain 16-byte loads, fp16 only (no bf16 on sm70); building blocks in common_sm70.cuh.
//
// One thread block: 16 * WARPS query rows of one (batch, query head), 16 rows per warp; Q's fragments
// stay in registers (Q_REGS) or are read from shared memory for every key block. Per 64-key block,
// each warp computes its S = Q K^T (four 16x16 tiles) and runs the online softmax, then O += P V
// stays in WMMA accumulators. PTX leaves the accumulator's element order unspecified, so:
// - REG (where the host found, by a probe of this GPU, an order the register softmax can use; the
//   constants in `wmma_order`): the softmax runs on the accumulators in registers, each row's max
//   and sum are combined across the lanes that share the row by XOR shuffles, and P becomes the
//   A operand of P V in registers (a shuffle per pair of elements where another lane holds it);
// - else: S goes to the warp's rows of shared memory, a pair of lanes per row runs the softmax and
//   writes P in fp16 over S, and O is rescaled through a row map read once from a fragment loaded
//   from a matrix of row numbers.
//
// With no cp.async, the next block's K is loaded into registers while S is computed, and its V while
// the softmax and P V run; each goes to shared memory once every warp is done with the current one.
// Shared memory holds K, V, S unless REG, and Q unless Q_REGS (with Q_REGS, Q passes through the K/V
// space at the start); O goes through all of it at the end.
//
// Tensors are (batch, seqlen, heads, <= HEAD_DIM) with a contiguous last dim and 16-byte aligned
// rows; `dim` (a multiple of 8) is the real head dim, the rest is zero-filled in shared memory. out
// is (batch, seqlen_q, heads_q, dim); lse float32 (batch, heads_q, seqlen_q).
#pragma once

#include "common_sm70.cuh"

namespace portattn_sm70 {

constexpr int BLOCK_N = 64;  // keys per block
constexpr int S_TILES = BLOCK_N / 16;

__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const u32*>(&h);
}

template <int HEAD_DIM, int WARPS, bool Q_REGS, bool REG, bool HAS_LO, bool HAS_HI>
__global__ void __launch_bounds__(32 * WARPS, (HEAD_DIM <= 64 ? 12 : 8) / WARPS + (Q_REGS ? 0 : 4 / WARPS))
flash_fwd_sm70(const __half* q, const __half* k, const __half* v, __half* out, float* lse,
               long long q_stride_b, long long q_stride_s, long long q_stride_h,
               long long k_stride_b, long long k_stride_s, long long k_stride_h,
               long long v_stride_b, long long v_stride_s, long long v_stride_h,
               long long o_stride_b, long long o_stride_s, long long o_stride_h,
               int seqlen_q, int seqlen_k, int heads_q, int group, int dim, int band_lo, int band_hi,
               float scale_log2) {
  constexpr int LD = HEAD_DIM + 8;    // halves per Q/K/V row
  constexpr int LDS = BLOCK_N + 4;    // floats per S row: keys, the row's correction at BLOCK_N, padding
  constexpr int LDP = 2 * LDS;        // halves per P row, P written over S
  constexpr int LDO = HEAD_DIM + 4;   // floats per O staging row
  constexpr int O_TILES = HEAD_DIM / 16;
  constexpr int BLOCK_M = 16 * WARPS, NTHREADS = 32 * WARPS;
  constexpr int G = REG ? wmma_order::GROUPS : 1;  // rows this lane keeps softmax state for
  static_assert(HEAD_DIM % 16 == 0, "16-wide WMMA tiles");
  static_assert(!REG || wmma_order::REGISTER_SOFTMAX, "REG needs an element order the host has checked");
  static_assert(BLOCK_M <= 2 * BLOCK_N, "Q fits where K and V go");
  constexpr int S_BYTES = REG ? 0 : BLOCK_M * LDS * 4;  // S (and P) in shared memory: not with REG
  // O's staging (BLOCK_M * LDO floats) goes over everything at the end: plan.smem_bytes reserves at least that
  static_assert(WARPS * 256 * 4 <= BLOCK_N * LD * 2, "the maps' scratch fits where K goes");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  __half* k_s = reinterpret_cast<__half*>(smem_raw);
  __half* v_s = k_s + BLOCK_N * LD;
  float* s_s = reinterpret_cast<float*>(v_s + BLOCK_N * LD);  // not with REG
  __half* p_s = reinterpret_cast<__half*>(s_s);
  __half* q_s = Q_REGS ? k_s : reinterpret_cast<__half*>(smem_raw + 2 * BLOCK_N * LD * 2 + S_BYTES);  // Q_REGS: at the start
  float* o_s = reinterpret_cast<float*>(smem_raw);  // O at the end, over K, V and S

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int m0 = blockIdx.x * BLOCK_M;
  const int bh = blockIdx.y, b = bh / heads_q, h = bh % heads_q, hk = h / group;
  const __half* q_head = q + b * q_stride_b + h * q_stride_h;
  const __half* k_head = k + b * k_stride_b + hk * k_stride_h;
  const __half* v_head = v + b * v_stride_b + hk * v_stride_h;
  const int wr = warp * 16;                     // the warp's first row in the block
  const int r = wr + lane / 2, c0 = (lane % 2) * (BLOCK_N / 2);  // the shared-memory softmax's row and columns
  const int row = m0 + r;
  const u32 s_warp_addr = shared_address(s_s + wr * LDS);  // not with REG

  // the row and column of each accumulator element of this lane (the same for every 16x16 fp32 fragment)
  float* scratch = reinterpret_cast<float*>(smem_raw) + warp * 256;  // before K (or Q) arrives
  int row_of[8], col_of[8];
#pragma unroll
  for (int pass = 0; pass < (REG ? 2 : 1); ++pass) {
    for (int i = lane; i < 16 * 16; i += 32) scratch[i] = static_cast<float>(pass ? i % 16 : i / 16);
    __syncwarp();
    FragC map;
    load_c_row(map, scratch, 16);
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 8; ++i) (pass ? col_of : row_of)[i] = (pass ? 0 : wr) + static_cast<int>(map.x[i]);
  }

  __syncthreads();  // every warp has its maps: Q may go over the scratch
  load_tile<BLOCK_M, HEAD_DIM, LD, NTHREADS>(q_s, q_head, q_stride_s, m0, seqlen_q, dim, tid);
  __syncthreads();
  FragAB qf[Q_REGS ? HEAD_DIM / 16 : 1];  // in registers for the whole loop
#pragma unroll
  for (int kk = 0; kk < (Q_REGS ? HEAD_DIM / 16 : 0); ++kk) load_a_row(qf[kk], q_s + wr * LD + kk * 16, LD);

  int first = 0, last = seqlen_k;  // the key range this block can see
  if (HAS_LO) first = max(m0 + band_lo, 0) / BLOCK_N * BLOCK_N;
  if (HAS_HI) last = min(m0 + BLOCK_M - 1 + band_hi + 1, seqlen_k);

  TileRegs<BLOCK_N, HEAD_DIM, NTHREADS> next;  // the next block's K, then its V
  __syncthreads();  // every warp holds its Q fragments: the space becomes K and V
  if (first < last) {
    load_tile<BLOCK_N, HEAD_DIM, LD, NTHREADS>(k_s, k_head, k_stride_s, first, seqlen_k, dim, tid);
    load_tile<BLOCK_N, HEAD_DIM, LD, NTHREADS>(v_s, v_head, v_stride_s, first, seqlen_k, dim, tid);
  }
  __syncthreads();

  FragC o[O_TILES];
#pragma unroll
  for (int j = 0; j < O_TILES; ++j)
#pragma unroll
    for (int i = 0; i < 8; ++i) o[j].x[i] = 0.f;
  float m_i[G], l_i[G];  // REG: l_i is this lane's part of the row sum until the end
#pragma unroll
  for (int g = 0; g < G; ++g) m_i[g] = -INFINITY, l_i[g] = 0.f;

  for (int n0 = first; n0 < last; n0 += BLOCK_N) {
    const bool more = n0 + BLOCK_N < last;
    if (more) next.load(k_head, k_stride_s, n0 + BLOCK_N, seqlen_k, dim, tid);
    const bool masked = n0 + BLOCK_N > seqlen_k || (HAS_LO && n0 < m0 + BLOCK_M - 1 + band_lo) ||
                        (HAS_HI && n0 + BLOCK_N - 1 > m0 + band_hi);
    FragC s[S_TILES];  // S = Q K^T, four 16x16 tiles
#pragma unroll
    for (int j = 0; j < S_TILES; ++j)
#pragma unroll
      for (int i = 0; i < 8; ++i) s[j].x[i] = 0.f;
    if constexpr (Q_REGS) {
      warp_gemm_acc<BLOCK_N, HEAD_DIM, true, LD>(s, qf, k_s);
    } else {
      warp_gemm_acc<BLOCK_N, HEAD_DIM, true, LD, LD>(s, q_s + wr * LD, k_s);
    }
    float alpha[G];
    FragAB p_frag[REG ? S_TILES : 1];  // REG: P as the A operand of P V

    if constexpr (REG) {
      // online softmax in base 2 on the accumulators: slot i of every tile is in the lane's row
      // group GROUP_OF[i]; the lanes of a row are this lane XOR the span of ROW_MASKS
      float mx[G];
#pragma unroll
      for (int g = 0; g < G; ++g) mx[g] = m_i[g];
#pragma unroll
      for (int j = 0; j < S_TILES; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          float x = s[j].x[i] * scale_log2;
          if (masked) {
            const int key = n0 + j * 16 + col_of[i], query = m0 + row_of[i];
            if (!visible<HAS_LO, HAS_HI>(query, key, seqlen_q, seqlen_k, band_lo, band_hi)) x = -INFINITY;
          }
          s[j].x[i] = x;
          mx[wmma_order::group_of(i)] = fmaxf(mx[wmma_order::group_of(i)], x);
        }
      float m_use[G], sum[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int t = 0; t < wmma_order::ROW_MASK_COUNT; ++t)
          mx[g] = fmaxf(mx[g], __shfl_xor_sync(0xffffffff, mx[g], wmma_order::row_mask(t)));
        m_use[g] = mx[g] == -INFINITY ? 0.f : mx[g];  // a row that has seen no key yet
        alpha[g] = exp2f(m_i[g] - m_use[g]);
        m_i[g] = mx[g];
        sum[g] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < S_TILES; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          s[j].x[i] = exp2f(s[j].x[i] - m_use[wmma_order::group_of(i)]);
          sum[wmma_order::group_of(i)] += s[j].x[i];
        }
#pragma unroll
      for (int g = 0; g < G; ++g) l_i[g] = l_i[g] * alpha[g] + sum[g];
      // P's A operand: A element pair e of tile j is accumulator slots A_SLOT[2e], A_SLOT[2e + 1]
      // of tile j of lane ^ A_XOR[2e]
#pragma unroll
      for (int j = 0; j < S_TILES; ++j)
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          u32 pair = pack_half2(s[j].x[wmma_order::a_slot(2 * e)], s[j].x[wmma_order::a_slot(2 * e + 1)]);
          if (wmma_order::a_xor(2 * e) != 0) pair = __shfl_xor_sync(0xffffffff, pair, wmma_order::a_xor(2 * e));
          p_frag[j].x[e] = pair;
        }
      __syncthreads();  // every warp is done with this K
      if (more) {
        next.template store<LD>(k_s, tid);
        next.load(v_head, v_stride_s, n0 + BLOCK_N, seqlen_k, dim, tid);
      }
    } else {
      static_for<0, S_TILES>([&](auto j) {
        constexpr int J = decltype(j)::value;
        store_d_row_at<J * 16 * 4>(s_warp_addr, s[J], LDS);
      });
      __syncthreads();  // every warp is done with this K (and sees its own S)
      if (more) {
        next.template store<LD>(k_s, tid);
        next.load(v_head, v_stride_s, n0 + BLOCK_N, seqlen_k, dim, tid);
      }

      // online softmax in base 2: two lanes per row, half the keys each. S is read twice (the max,
      // then the exponentials as one FFMA each) and only P is held, packed: 16 registers, not 32
      const float4* s_row = reinterpret_cast<const float4*>(s_s + r * LDS + c0);
      float mx = m_i[0];
#pragma unroll
      for (int c = 0; c < BLOCK_N / 8; ++c) {
        const float4 t = s_row[c];
        const float y[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool hidden =
              masked && !visible<HAS_LO, HAS_HI>(row, n0 + c0 + 4 * c + e, seqlen_q, seqlen_k, band_lo, band_hi);
          mx = fmaxf(mx, hidden ? -INFINITY : y[e] * scale_log2);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
      const float m_use = mx == -INFINITY ? 0.f : mx;  // a row that has seen no key yet
      const float a = exp2f(m_i[0] - m_use);
      m_i[0] = mx;
      float sum = 0.f;
      u32 p_pairs[BLOCK_N / 4];
#pragma unroll
      for (int c = 0; c < BLOCK_N / 8; ++c) {
        const float4 t = s_row[c];
        const float y[4] = {t.x, t.y, t.z, t.w};
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool hidden =
              masked && !visible<HAS_LO, HAS_HI>(row, n0 + c0 + 4 * c + e, seqlen_q, seqlen_k, band_lo, band_hi);
          p[e] = hidden ? 0.f : exp2f(fmaf(y[e], scale_log2, -m_use));
          sum += p[e];
        }
        p_pairs[2 * c] = pack_half2(p[0], p[1]);
        p_pairs[2 * c + 1] = pack_half2(p[2], p[3]);
      }
      __syncwarp();  // both lanes of the row have read S before P goes over it
      uint4* p_row = reinterpret_cast<uint4*>(p_s + r * LDP + c0);  // rows of 272 bytes, c0 of 64
#pragma unroll
      for (int c = 0; c < BLOCK_N / 16; ++c)
        p_row[c] = make_uint4(p_pairs[4 * c], p_pairs[4 * c + 1], p_pairs[4 * c + 2], p_pairs[4 * c + 3]);
      sum += __shfl_xor_sync(0xffffffff, sum, 1);
      l_i[0] = l_i[0] * a + sum;
      if (lane % 2 == 0) s_s[r * LDS + BLOCK_N] = a;
      __syncwarp();
    }

    // O = O * alpha + P V
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float a;
      if constexpr (REG) {
        a = alpha[wmma_order::group_of(i)];
      } else {
        a = s_s[row_of[i] * LDS + BLOCK_N];
      }
#pragma unroll
      for (int j = 0; j < O_TILES; ++j) o[j].x[i] *= a;
    }
    if constexpr (REG) {
      warp_gemm_acc<HEAD_DIM, BLOCK_N, false, LD>(o, p_frag, v_s);
    } else {
      warp_gemm_acc<HEAD_DIM, BLOCK_N, false, LDP, LD>(o, p_s + wr * LDP, v_s);
    }
    __syncthreads();  // every warp is done with this V
    if (more) next.template store<LD>(v_s, tid);
  }

  // O normalized by 1/l; rows that saw no key: 0, lse -inf
  float inv = 1.f;  // REG: O is normalized in registers
  if constexpr (REG) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int t = 0; t < wmma_order::ROW_MASK_COUNT; ++t)
        l_i[g] += __shfl_xor_sync(0xffffffff, l_i[g], wmma_order::row_mask(t));
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float l = l_i[wmma_order::group_of(i)], scale = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
      for (int j = 0; j < O_TILES; ++j) o[j].x[i] *= scale;
    }
    if ((lane & wmma_order::ROW_LANE_BITS) == 0) {  // one lane of each row writes its lse
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int query = m0 + row_of[wmma_order::group_slot(g)];
        if (query < seqlen_q) {
          const float m = m_i[g] == -INFINITY ? 0.f : m_i[g];
          lse[static_cast<long long>(bh) * seqlen_q + query] =
              l_i[g] > 0.f ? (m + log2f(l_i[g])) * 0.6931471805599453f : -INFINITY;
        }
      }
    }
  } else {
    inv = l_i[0] > 0.f ? 1.f / l_i[0] : 0.f;
  }
  __syncthreads();  // every warp is done with K, V and S: O goes through shared memory
#pragma unroll
  for (int j = 0; j < O_TILES; ++j) store_d_row(o_s + wr * LDO + j * 16, o[j], LDO);
  __syncwarp();
  if (row < seqlen_q) {
    __half* o_row = out + b * o_stride_b + h * o_stride_h + row * o_stride_s;
    const int half = HEAD_DIM / 2, cbeg = (lane % 2) * half;
    for (int c = cbeg; c < cbeg + half && c < dim; c += 2) {
      *reinterpret_cast<__half2*>(o_row + c) =
          __floats2half2_rn(o_s[r * LDO + c] * inv, o_s[r * LDO + c + 1] * inv);
    }
    if (!REG && lane % 2 == 0) {
      const float m = m_i[0] == -INFINITY ? 0.f : m_i[0];
      lse[static_cast<long long>(bh) * seqlen_q + row] =
          l_i[0] > 0.f ? (m + log2f(l_i[0])) * 0.6931471805599453f : -INFINITY;
    }
  }
}

}  // namespace portattn_sm70
