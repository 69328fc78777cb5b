// FlashAttention-2 backward with Volta's instructions only (sm70), from q, k, v, dout, lse and
// delta = rowsum(dout * out), recomputing P: a dK/dV kernel over key blocks (each block sums its K/V
// head's query heads: no atomics, deterministic) and a dQ kernel over query blocks. Scores and their
// gradients go through shared memory in fp32, as in the forward, where lanes that know their (query,
// key) apply the band; P and dS are written back in fp16 over them, as WMMA A operands.
//
// Layouts as in the forward; lse and delta are float32 (batch, heads_q, seqlen_q), lse in natural log.
#pragma once

#include "common_sm70.cuh"

namespace portattn_sm70 {

constexpr int BWD_KEYS = 64;     // keys per dK/dV block (4 warps x 16), and per dQ block step: 32
constexpr int BWD_QUERIES = 32;  // queries per dK/dV block step
constexpr int DQ_ROWS = 64;      // queries per dQ block (4 warps x 16)
constexpr int DQ_KEYS = 32;      // keys per dQ block step
constexpr float LOG2E_F = 1.4426950408889634f;

// In a warp's 16 x COLS fp32 tiles s (scores) and dp (dP) at row stride LDS, with each element's
// (query, key): p = exp2(s * scale_log2 - lse2[query]) where visible, else 0, and ds = p * (dp -
// delta[query]); p and ds are written in fp16 over the first half of each row of s and dp (row stride
// in halves 2 * LDS). Two lanes per row, COLS / 2 elements each; TRANSPOSED: rows are keys.
template <int COLS, int LDS, bool TRANSPOSED, bool HAS_LO, bool HAS_HI>
__device__ __forceinline__ void softmax_grad(float* s, float* dp, const float* lse2, const float* delta,
                                             int row_base, int col_base, int seqlen_q, int seqlen_k, int lo, int hi,
                                             float scale_log2, int lane) {
  const int r = lane / 2, c0 = (lane % 2) * (COLS / 2);
  float p[COLS / 2], ds[COLS / 2];
#pragma unroll
  for (int c = 0; c < COLS / 2; ++c) {
    const int col = c0 + c;
    const int query = TRANSPOSED ? col_base + col : row_base + r;
    const int key = TRANSPOSED ? row_base + r : col_base + col;
    const int qi = TRANSPOSED ? col : r;  // index into lse2 / delta
    const bool ok = visible<HAS_LO, HAS_HI>(query, key, seqlen_q, seqlen_k, lo, hi);
    p[c] = ok ? exp2f(s[r * LDS + col] * scale_log2 - lse2[qi]) : 0.f;
    ds[c] = p[c] * (dp[r * LDS + col] - delta[qi]);
  }
  __syncwarp();  // every lane has read its row before any overwrites it
  __half2* p_row = reinterpret_cast<__half2*>(reinterpret_cast<__half*>(s + r * LDS) + c0);
  __half2* ds_row = reinterpret_cast<__half2*>(reinterpret_cast<__half*>(dp + r * LDS) + c0);
#pragma unroll
  for (int c = 0; c < COLS / 2; c += 2) {
    p_row[c / 2] = __floats2half2_rn(p[c], p[c + 1]);
    ds_row[c / 2] = __floats2half2_rn(ds[c], ds[c + 1]);
  }
  __syncwarp();
}

// lse (in base 2) and delta of `n` query rows from row0 into shared memory; rows past seqlen_q: 0
__device__ __forceinline__ void load_row_stats(float* lse2, float* delta_s, const float* lse, const float* delta,
                                               int row0, int n, int seqlen_q, int tid) {
  for (int i = tid; i < n; i += THREADS) {
    const bool in = row0 + i < seqlen_q;
    const float l = in ? lse[row0 + i] : 0.f;
    lse2[i] = l == -INFINITY ? INFINITY : l * LOG2E_F;  // +inf: exp2(x - inf) = 0 for rows that saw no key
    delta_s[i] = in ? delta[row0 + i] : 0.f;
  }
}

// Grid (cdiv(seqlen_k, 64), batch * heads_kv). Warp w owns keys [16w, 16w + 16) of the block: dK and
// dV accumulate in its fragments over the query heads of the group and their visible query blocks.
template <int HEAD_DIM, bool HAS_LO, bool HAS_HI>
__global__ void __launch_bounds__(128)
flash_bwd_dkdv_sm70(const __half* q, const __half* k, const __half* v, const __half* dout, const float* lse,
                    const float* delta, __half* dk, __half* dv,
                    long long q_stride_b, long long q_stride_s, long long q_stride_h,
                    long long k_stride_b, long long k_stride_s, long long k_stride_h,
                    long long v_stride_b, long long v_stride_s, long long v_stride_h,
                    long long do_stride_b, long long do_stride_s, long long do_stride_h,
                    long long dk_stride_b, long long dk_stride_s, long long dk_stride_h,
                    long long dv_stride_b, long long dv_stride_s, long long dv_stride_h,
                    int seqlen_q, int seqlen_k, int heads_kv, int group, int dim, int band_lo, int band_hi,
                    float scale_log2, float scale) {
  constexpr int LD = HEAD_DIM + 8;         // halves per Q/dO/K/V row
  constexpr int LDS = BWD_QUERIES + 4;     // floats per S^T / dP^T row
  constexpr int D_TILES = HEAD_DIM / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __half* k_s = reinterpret_cast<__half*>(smem_raw);
  __half* v_s = k_s + BWD_KEYS * LD;
  __half* q_s = v_s + BWD_KEYS * LD;
  __half* do_s = q_s + BWD_QUERIES * LD;
  float* st_s = reinterpret_cast<float*>(do_s + BWD_QUERIES * LD);  // S^T: keys x queries
  float* dpt_s = st_s + BWD_KEYS * LDS;                             // dP^T
  float* lse2 = dpt_s + BWD_KEYS * LDS;
  float* delta_s = lse2 + BWD_QUERIES;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wr = warp * 16;
  const int n0 = blockIdx.x * BWD_KEYS;
  const int b = blockIdx.y / heads_kv, hk = blockIdx.y % heads_kv;
  load_tile<BWD_KEYS, HEAD_DIM, LD>(k_s, k + b * k_stride_b + hk * k_stride_h, k_stride_s, n0, seqlen_k, dim, tid);
  load_tile<BWD_KEYS, HEAD_DIM, LD>(v_s, v + b * v_stride_b + hk * v_stride_h, v_stride_s, n0, seqlen_k, dim, tid);

  // the queries that can see some key of the block
  int q_first = 0, q_last = seqlen_q;
  if (HAS_HI) q_first = max(n0 - band_hi, 0) / BWD_QUERIES * BWD_QUERIES;
  if (HAS_LO) q_last = min(n0 + BWD_KEYS - 1 - band_lo + 1, seqlen_q);

  FragC dk_acc[D_TILES], dv_acc[D_TILES];
#pragma unroll
  for (int j = 0; j < D_TILES; ++j)
#pragma unroll
    for (int i = 0; i < 8; ++i) dk_acc[j].x[i] = dv_acc[j].x[i] = 0.f;

  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    const __half* q_head = q + b * q_stride_b + h * q_stride_h;
    const __half* do_head = dout + b * do_stride_b + h * do_stride_h;
    const long long row_stats = (static_cast<long long>(b) * heads_kv * group + h) * seqlen_q;
    for (int m0 = q_first; m0 < q_last; m0 += BWD_QUERIES) {
      __syncthreads();  // the previous step is done with Q, dO and the row stats
      load_tile<BWD_QUERIES, HEAD_DIM, LD>(q_s, q_head, q_stride_s, m0, seqlen_q, dim, tid);
      load_tile<BWD_QUERIES, HEAD_DIM, LD>(do_s, do_head, do_stride_s, m0, seqlen_q, dim, tid);
      load_row_stats(lse2, delta_s, lse + row_stats, delta + row_stats, m0, BWD_QUERIES, seqlen_q, tid);
      __syncthreads();
      // S^T = K_w Q^T and dP^T = V_w dO^T for the warp's 16 keys
      warp_gemm_store<BWD_QUERIES, HEAD_DIM, true, LDS, LD, LD>(st_s + wr * LDS, k_s + wr * LD, q_s);
      warp_gemm_store<BWD_QUERIES, HEAD_DIM, true, LDS, LD, LD>(dpt_s + wr * LDS, v_s + wr * LD, do_s);
      __syncwarp();
      softmax_grad<BWD_QUERIES, LDS, true, HAS_LO, HAS_HI>(st_s + wr * LDS, dpt_s + wr * LDS, lse2, delta_s,
                                                          n0 + wr, m0, seqlen_q, seqlen_k, band_lo, band_hi,
                                                          scale_log2, lane);
      // dV += P^T dO, dK += dS^T Q (P^T and dS^T in fp16 over S^T and dP^T: row stride 2 * LDS halves)
      const __half* pt_s = reinterpret_cast<const __half*>(st_s + wr * LDS);
      const __half* dst_s = reinterpret_cast<const __half*>(dpt_s + wr * LDS);
      warp_gemm_acc<HEAD_DIM, BWD_QUERIES, false, 2 * LDS, LD>(dv_acc, pt_s, do_s);
      warp_gemm_acc<HEAD_DIM, BWD_QUERIES, false, 2 * LDS, LD>(dk_acc, dst_s, q_s);
    }
  }
  __syncthreads();  // the tiles are free: they stage the results
  float* stage = reinterpret_cast<float*>(smem_raw);
  store_rows<HEAD_DIM>(dk + b * dk_stride_b + hk * dk_stride_h, dk_stride_s, dk_acc, stage, wr, n0, seqlen_k, dim,
                       scale, lane);
  __syncwarp();
  store_rows<HEAD_DIM>(dv + b * dv_stride_b + hk * dv_stride_h, dv_stride_s, dv_acc, stage, wr, n0, seqlen_k, dim,
                       1.f, lane);
}

// Grid (cdiv(seqlen_q, 64), batch * heads_q). Warp w owns queries [16w, 16w + 16) of the block: dQ
// accumulates in its fragments over the visible key blocks.
template <int HEAD_DIM, bool HAS_LO, bool HAS_HI>
__global__ void __launch_bounds__(128)
flash_bwd_dq_sm70(const __half* q, const __half* k, const __half* v, const __half* dout, const float* lse,
                  const float* delta, __half* dq,
                  long long q_stride_b, long long q_stride_s, long long q_stride_h,
                  long long k_stride_b, long long k_stride_s, long long k_stride_h,
                  long long v_stride_b, long long v_stride_s, long long v_stride_h,
                  long long do_stride_b, long long do_stride_s, long long do_stride_h,
                  long long dq_stride_b, long long dq_stride_s, long long dq_stride_h,
                  int seqlen_q, int seqlen_k, int heads_q, int group, int dim, int band_lo, int band_hi,
                  float scale_log2, float scale) {
  constexpr int LD = HEAD_DIM + 8;
  constexpr int LDS = DQ_KEYS + 4;  // floats per S / dP row
  constexpr int D_TILES = HEAD_DIM / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __half* q_s = reinterpret_cast<__half*>(smem_raw);
  __half* do_s = q_s + DQ_ROWS * LD;
  __half* k_s = do_s + DQ_ROWS * LD;
  __half* v_s = k_s + DQ_KEYS * LD;
  float* s_s = reinterpret_cast<float*>(v_s + DQ_KEYS * LD);
  float* dp_s = s_s + DQ_ROWS * LDS;
  float* lse2 = dp_s + DQ_ROWS * LDS;
  float* delta_s = lse2 + DQ_ROWS;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wr = warp * 16;
  const int m0 = blockIdx.x * DQ_ROWS;
  const int bh = blockIdx.y, b = bh / heads_q, h = bh % heads_q, hk = h / group;
  const __half* k_head = k + b * k_stride_b + hk * k_stride_h;
  const __half* v_head = v + b * v_stride_b + hk * v_stride_h;
  load_tile<DQ_ROWS, HEAD_DIM, LD>(q_s, q + b * q_stride_b + h * q_stride_h, q_stride_s, m0, seqlen_q, dim, tid);
  load_tile<DQ_ROWS, HEAD_DIM, LD>(do_s, dout + b * do_stride_b + h * do_stride_h, do_stride_s, m0, seqlen_q, dim,
                                   tid);
  load_row_stats(lse2, delta_s, lse + static_cast<long long>(bh) * seqlen_q,
                 delta + static_cast<long long>(bh) * seqlen_q, m0, DQ_ROWS, seqlen_q, tid);

  int first = 0, last = seqlen_k;  // the keys this block's queries can see
  if (HAS_LO) first = max(m0 + band_lo, 0) / DQ_KEYS * DQ_KEYS;
  if (HAS_HI) last = min(m0 + DQ_ROWS - 1 + band_hi + 1, seqlen_k);

  FragC dq_acc[D_TILES];
#pragma unroll
  for (int j = 0; j < D_TILES; ++j)
#pragma unroll
    for (int i = 0; i < 8; ++i) dq_acc[j].x[i] = 0.f;

  for (int n0 = first; n0 < last; n0 += DQ_KEYS) {
    __syncthreads();  // the previous step is done with K and V (and Q, dO, the stats are in, the first time)
    load_tile<DQ_KEYS, HEAD_DIM, LD>(k_s, k_head, k_stride_s, n0, seqlen_k, dim, tid);
    load_tile<DQ_KEYS, HEAD_DIM, LD>(v_s, v_head, v_stride_s, n0, seqlen_k, dim, tid);
    __syncthreads();
    warp_gemm_store<DQ_KEYS, HEAD_DIM, true, LDS, LD, LD>(s_s + wr * LDS, q_s + wr * LD, k_s);
    warp_gemm_store<DQ_KEYS, HEAD_DIM, true, LDS, LD, LD>(dp_s + wr * LDS, do_s + wr * LD, v_s);
    __syncwarp();
    softmax_grad<DQ_KEYS, LDS, false, HAS_LO, HAS_HI>(s_s + wr * LDS, dp_s + wr * LDS, lse2 + wr, delta_s + wr,
                                                      m0 + wr, n0, seqlen_q, seqlen_k, band_lo, band_hi,
                                                      scale_log2, lane);
    // dQ += dS K (dS in fp16 over dP)
    warp_gemm_acc<HEAD_DIM, DQ_KEYS, false, 2 * LDS, LD>(dq_acc, reinterpret_cast<const __half*>(dp_s + wr * LDS), k_s);
  }
  __syncthreads();
  store_rows<HEAD_DIM>(dq + b * dq_stride_b + h * dq_stride_h, dq_stride_s, dq_acc, reinterpret_cast<float*>(smem_raw),
                       wr, m0, seqlen_q, dim, scale, lane);
}

}  // namespace portattn_sm70
