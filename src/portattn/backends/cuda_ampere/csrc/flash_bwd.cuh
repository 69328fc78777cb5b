// FlashAttention-2 backward for sm80+, by recomputation from lse (and delta = rowsum(dO * O)):
// flash_bwd_dkdv over key blocks (each sums over its K/V head's query heads and every query block
// that sees it: no atomics, deterministic) and flash_bwd_dq over query blocks. Both reuse the
// forward's MMA loops (mma_a_bt, mma_p_x); 4 warps, each owning 16 rows of the block's own axis.
//
// Tensors as in the forward; dout like out; lse and delta float32 (batch, heads_q, seqlen_q), lse
// natural-log with -inf for rows that see no key. dq, dk, dv like q, k, v.
#pragma once

#include "common.cuh"

namespace portattn {

// P and dS of one 16 x (N_TILES * 8) block in registers: s holds raw q.k, dp holds dO.v; rows and
// columns are queries or keys as the caller lays them out. `rows(j, e, lse2, delta)` sets element (j, e)'s
// query's lse (base 2, +inf for a query that sees nothing) and delta; where the block is not wholly
// visible (`masked`), `visible(j, e)` says whether the element is. On return s holds P and dp holds
// dS = P * (dP - delta) (times the softcap's derivative).
template <int N_TILES, bool HAS_SOFTCAP, typename Rows, typename Visible>
__device__ __forceinline__ void softmax_grad(float (&s)[1][N_TILES][4], float (&dp)[1][N_TILES][4], Rows rows,
                                             bool masked, Visible visible_at, float scale_log2, float softcap_log2,
                                             float scale_over_cap) {
#pragma unroll
  for (int j = 0; j < N_TILES; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float lse2, delta, pr, dcap = 1.f;
      rows(j, e, lse2, delta);
      if (HAS_SOFTCAP) {
        const float t = tanhf(s[0][j][e] * scale_over_cap);
        pr = exp2f(softcap_log2 * t - lse2);
        dcap = 1.f - t * t;
      } else {
        pr = exp2f(fmaf(s[0][j][e], scale_log2, -lse2));
      }
      if (masked && !visible_at(j, e)) pr = 0.f;
      s[0][j][e] = pr;
      dp[0][j][e] = pr * (dp[0][j][e] - delta) * dcap;
    }
  }
}

// The backward's first pass, for 64 queries of one (batch, query head): delta = rowsum(dout * out) into
// `delta` and the forward's lse in base 2 (+inf for a query that sees nothing: P = 0) into `lse2`, both
// float32 (batch, heads_q, seqlen_q); when `dq_acc` is given, those queries' rows of the float32 dQ
// zeroed for the one-kernel backward to add into. HEAD_DIM / 8 threads per row, 16 bytes each.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(256)
flash_bwd_delta(const void* out, const void* dout, const float* lse, float* delta, float* lse2, float* dq_acc,
                long long o_stride_b, long long o_stride_s, long long o_stride_h,
                long long do_stride_b, long long do_stride_s, long long do_stride_h,
                long long dq_stride_b, long long dq_stride_s, long long dq_stride_h,
                int seqlen_q, int heads_q, int dim, int dim_v) {
  constexpr int CHUNKS = HEAD_DIM / 8;
  constexpr int ROWS_PER_PASS = 256 / CHUNKS;
  const int b = blockIdx.y / heads_q;
  const int h = blockIdx.y % heads_q;
  const int col = (threadIdx.x % CHUNKS) * 8;
  const T* o_head = static_cast<const T*>(out) + b * o_stride_b + h * o_stride_h;
  const T* do_head = static_cast<const T*>(dout) + b * do_stride_b + h * do_stride_h;
#pragma unroll
  for (int pass = 0; pass < 64 / ROWS_PER_PASS; ++pass) {
    const int row = blockIdx.x * 64 + pass * ROWS_PER_PASS + threadIdx.x / CHUNKS;
    float sum = 0.f;
    if (row < seqlen_q && col < dim_v) {
      const uint4 o = *reinterpret_cast<const uint4*>(o_head + row * o_stride_s + col);
      const uint4 g = *reinterpret_cast<const uint4*>(do_head + row * do_stride_s + col);
      const T* ot = reinterpret_cast<const T*>(&o);
      const T* gt = reinterpret_cast<const T*>(&g);
#pragma unroll
      for (int i = 0; i < 8; ++i) sum += static_cast<float>(ot[i]) * static_cast<float>(gt[i]);
    }
#pragma unroll
    for (int m = 1; m < CHUNKS; m *= 2) sum += __shfl_xor_sync(0xffffffff, sum, m);  // the row's threads
    if (row < seqlen_q) {
      if (col == 0) {
        const long long i = static_cast<long long>(blockIdx.y) * seqlen_q + row;
        delta[i] = sum;
        lse2[i] = lse[i] == -INFINITY ? INFINITY : lse[i] * 1.4426950408889634f;
      }
      if (dq_acc != nullptr && col < dim) {
        float4* dst = reinterpret_cast<float4*>(dq_acc + b * dq_stride_b + h * dq_stride_h + row * dq_stride_s + col);
        dst[0] = dst[1] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  }
}

// lse and delta of BLOCK_M queries (from row `m0` of a (batch, head) row of length seqlen_q) into shared
// memory by 4-byte cp.async, zero past seqlen_q (those queries are masked out by `visible`).
template <int BLOCK_M, int THREADS>
__device__ __forceinline__ void load_rows_async(float* lse_s, float* dlt_s, const float* lse, const float* delta,
                                                long long row_base, int m0, int seqlen_q, int tid) {
  static_assert(2 * BLOCK_M <= THREADS, "one thread per value");
  if (tid < 2 * BLOCK_M) {
    const int i = tid % BLOCK_M;
    const bool valid = m0 + i < seqlen_q;
    const float* src = (tid < BLOCK_M ? lse : delta) + row_base + (valid ? m0 + i : 0);
    cp_async_4(smem_addr(tid < BLOCK_M ? lse_s : dlt_s, i), src, valid);
  }
}

// *dst += (a, b) in float32 where `pred`: one predicated reduction (red.global.add.v2.f32 on sm90, two
// scalar ones elsewhere), so that a run of them is straight-line code with immediate address offsets.
__device__ __forceinline__ void red_add_f32x2(float* dst, float a, float b, bool pred) {
#if __CUDA_ARCH__ >= 900
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p red.global.add.v2.f32 [%0], {%1, %2};\n}\n"
               ::"l"(dst), "f"(a), "f"(b), "r"(static_cast<int>(pred)) : "memory");
#else
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p red.global.add.f32 [%0], %1;\n"
               " @p red.global.add.f32 [%0+4], %2;\n}\n"
               ::"l"(dst), "f"(a), "f"(b), "r"(static_cast<int>(pred)) : "memory");
#endif
}

// dQ += tile (16 rows from `row`, N_TILES * 8 columns from `col`) in float32, by atomics: one address per row,
// the columns at immediate offsets from it.
template <int N_TILES>
__device__ __forceinline__ void atomic_add_rows(float* head, long long row_stride, const float (&acc)[1][N_TILES][4],
                                                int row, int col, int seqlen_q, int dim, int lane) {
  const int row_t = row + lane / 4;
  const int col_t = col + (lane % 4) * 2;
  float* dst = head + static_cast<long long>(row_t) * row_stride + col_t;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool row_in = row_t + r * 8 < seqlen_q;
#pragma unroll
    for (int j = 0; j < N_TILES; ++j) {
      red_add_f32x2(dst + r * 8 * row_stride + j * 8, acc[0][j][2 * r], acc[0][j][2 * r + 1],
                    row_in && col_t + j * 8 < dim);
    }
  }
}

// One block: BLOCK_N = 16 * WARPS keys of one (batch, K/V head); warps split the keys. For every query head
// of the group and every visible query block: S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T, dS^T,
// dK += dS^T Q. dK and dV stay in registers (no atomics).
// DQ_ATOMIC: also dQ += dS K for the query block, from dS^T staged in shared memory, the warps splitting
// dQ's rows and columns, added in float32 to `dq_acc` (batch, seqlen_q, heads_q, dim) by atomics, already
// scaled (FlashAttention-2's one-kernel backward; not deterministic). Without it flash_bwd_dq computes dQ.
template <typename T, int HEAD_DIM, int BLOCK_M, int WARPS, bool DQ_ATOMIC, bool HAS_LO, bool HAS_HI,
          bool HAS_SOFTCAP>
__global__ void __launch_bounds__(WARPS * 32, 1)
flash_bwd_dkdv(const void* q, const void* k, const void* v, const void* dout, const float* lse2, const float* delta,
               void* dk, void* dv, float* dq_acc,
               long long q_stride_b, long long q_stride_s, long long q_stride_h,
               long long k_stride_b, long long k_stride_s, long long k_stride_h,
               long long v_stride_b, long long v_stride_s, long long v_stride_h,
               long long do_stride_b, long long do_stride_s, long long do_stride_h,
               long long dk_stride_b, long long dk_stride_s, long long dk_stride_h,
               long long dv_stride_b, long long dv_stride_s, long long dv_stride_h,
               long long dq_stride_b, long long dq_stride_s, long long dq_stride_h,
               int seqlen_q, int seqlen_k, int heads_kv, int group, int dim, int dim_v, int band_lo, int band_hi,
               float scale_log2, float softcap_log2, float scale_over_cap, float scale) {
  constexpr int THREADS = WARPS * 32;
  constexpr int BLOCK_N = WARPS * 16;
  constexpr int M_TILES = BLOCK_M / 8;   // 8-query column tiles of S^T
  constexpr int D_TILES = HEAD_DIM / 8;  // 8-dim column tiles of dK, dV
  // dQ's warp grid: DQ_WM warps over 16-row tiles of the query block, DQ_WD over its columns
  constexpr int DQ_WM = BLOCK_M / 16;
  constexpr int DQ_WD = WARPS / DQ_WM;
  constexpr int DQ_TILES = D_TILES / DQ_WD;
  static_assert(!DQ_ATOMIC || (DQ_WM * DQ_WD == WARPS && DQ_TILES % 2 == 0), "dQ's warp grid covers the block");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* k_smem = reinterpret_cast<T*>(aligned_smem(smem_raw));
  T* v_smem = k_smem + BLOCK_N * HEAD_DIM;
  T* q_smem = v_smem + BLOCK_N * HEAD_DIM;       // 2 buffers
  T* do_smem = q_smem + 2 * BLOCK_M * HEAD_DIM;  // 2 buffers
  float* lse_smem = reinterpret_cast<float*>(do_smem + 2 * BLOCK_M * HEAD_DIM);  // 2 buffers
  float* dlt_smem = lse_smem + 2 * BLOCK_M;                                       // 2 buffers
  T* ds_smem = reinterpret_cast<T*>(dlt_smem + 2 * BLOCK_M);  // dS^T, BLOCK_N x BLOCK_M (DQ_ATOMIC only)

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int n0 = blockIdx.x * BLOCK_N;
  const int b = blockIdx.y / heads_kv;
  const int hk = blockIdx.y % heads_kv;
  const int heads_q = heads_kv * group;
  const int key0 = n0 + warp * 16 + lane / 4;  // this thread's keys: key0 and key0 + 8

  // the query rows that can see these keys: key - hi <= query <= key - lo
  int first = 0, last = seqlen_q;
  if (HAS_HI) first = max(n0 - band_hi, 0) / BLOCK_M * BLOCK_M;
  if (HAS_LO) last = min(n0 + BLOCK_N - 1 - band_lo + 1, seqlen_q);
  const int tiles = last > first ? (last - first + BLOCK_M - 1) / BLOCK_M : 0;

  load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(
      k_smem, static_cast<const T*>(k) + b * k_stride_b + hk * k_stride_h, k_stride_s, n0, seqlen_k, dim, tid);
  load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(
      v_smem, static_cast<const T*>(v) + b * v_stride_b + hk * v_stride_h, v_stride_s, n0, seqlen_k, dim_v, tid);

  float dk_acc[1][D_TILES][4], dv_acc[1][D_TILES][4];
#pragma unroll
  for (int j = 0; j < D_TILES; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[0][j][e] = dv_acc[0][j][e] = 0.f;
  }

  // work item i: query head h0 + i / tiles, query block first + (i % tiles) * BLOCK_M, walked by counters
  // (no divisions); one pipeline over all of them so that the next tile always streams in behind the current one
  const int items = tiles * group;
  const int m_end = first + tiles * BLOCK_M;
  int h = hk * group, m0 = first;  // the item being computed
  auto issue = [&](int h_i, int m_i, int buf) {  // the loads of item (h_i, m_i)
    load_tile_async<T, BLOCK_M, HEAD_DIM, THREADS>(
        q_smem + buf * BLOCK_M * HEAD_DIM, static_cast<const T*>(q) + b * q_stride_b + h_i * q_stride_h, q_stride_s,
        m_i, seqlen_q, dim, tid);
    load_tile_async<T, BLOCK_M, HEAD_DIM, THREADS>(
        do_smem + buf * BLOCK_M * HEAD_DIM, static_cast<const T*>(dout) + b * do_stride_b + h_i * do_stride_h,
        do_stride_s, m_i, seqlen_q, dim_v, tid);
    load_rows_async<BLOCK_M, THREADS>(lse_smem + buf * BLOCK_M, dlt_smem + buf * BLOCK_M, lse2, delta,
                                      (static_cast<long long>(b) * heads_q + h_i) * seqlen_q, m_i, seqlen_q, tid);
  };
  // at d<=64 each warp keeps its K and V rows' fragments in registers (32 of them): the S^T and dP^T
  // products then read only Q and dO from shared memory
  constexpr bool KV_IN_REGS = HEAD_DIM <= 64;
  u32 k_frags[HEAD_DIM / 16][1][4], v_frags[HEAD_DIM / 16][1][4];
  if (KV_IN_REGS) cp_async_commit();  // K and V alone
  if (items > 0) issue(h, m0, 0);
  cp_async_commit();  // (K, V and) the first Q, dO
  if (KV_IN_REGS) {
    cp_async_wait<1>();
    __syncthreads();
    load_a_frags<T, HEAD_DIM>(k_frags, k_smem, warp * 16, lane);
    load_a_frags<T, HEAD_DIM>(v_frags, v_smem, warp * 16, lane);
  }

  for (int item = 0; item < items; ++item) {
    const int buf = item % 2;
    int h_next = h, m_next = m0 + BLOCK_M;  // the item after this one, loaded while this one runs
    if (m_next == m_end) m_next = first, ++h_next;
    if (item + 1 < items) issue(h_next, m_next, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* q_buf = q_smem + buf * BLOCK_M * HEAD_DIM;
    const T* do_buf = do_smem + buf * BLOCK_M * HEAD_DIM;

    float st[1][M_TILES][4], dpt[1][M_TILES][4];
#pragma unroll
    for (int j = 0; j < M_TILES; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st[0][j][e] = dpt[0][j][e] = 0.f;
    }
    if (KV_IN_REGS) {
      mma_frags_bt<T, HEAD_DIM, M_TILES>(st, k_frags, q_buf, lane);    // S^T = K Q^T
      mma_frags_bt<T, HEAD_DIM, M_TILES>(dpt, v_frags, do_buf, lane);  // dP^T = V dO^T
    } else {
      mma_a_bt<T, HEAD_DIM, 1, M_TILES>(st, k_smem, warp * 16, q_buf, lane);
      mma_a_bt<T, HEAD_DIM, 1, M_TILES>(dpt, v_smem, warp * 16, do_buf, lane);
    }
    // this thread's queries are S^T's columns j * 8 + (lane % 4) * 2 + {0, 1}: lse2 and delta read from shared
    // memory where used (held for the whole item, they would take 32 registers)
    const float* lse_row = lse_smem + buf * BLOCK_M + (lane % 4) * 2;
    const float* dlt_row = dlt_smem + buf * BLOCK_M + (lane % 4) * 2;
    auto rows = [&](int j, int e, float& lse2_e, float& dlt_e) {  // the same pair for e = 0..3: one load
      const float2 lse_pair = *reinterpret_cast<const float2*>(lse_row + j * 8);
      const float2 dlt_pair = *reinterpret_cast<const float2*>(dlt_row + j * 8);
      lse2_e = e % 2 ? lse_pair.y : lse_pair.x;
      dlt_e = e % 2 ? dlt_pair.y : dlt_pair.x;
    };
    auto visible_at = [&](int j, int e) {
      const int query = m0 + j * 8 + (lane % 4) * 2 + e % 2;
      return visible<HAS_LO, HAS_HI>(query, key0 + (e / 2) * 8, seqlen_q, seqlen_k, band_lo, band_hi);
    };
    const bool masked = tile_partial<BLOCK_M, BLOCK_N, HAS_LO, HAS_HI>(m0, n0, seqlen_q, seqlen_k, band_lo, band_hi);
    softmax_grad<M_TILES, HAS_SOFTCAP>(st, dpt, rows, masked, visible_at, scale_log2, softcap_log2, scale_over_cap);
    mma_p_x<T, HEAD_DIM, 1, M_TILES>(dv_acc, st, do_buf, lane);  // dV += P^T dO
    mma_p_x<T, HEAD_DIM, 1, M_TILES>(dk_acc, dpt, q_buf, lane);  // dK += dS^T Q
    if (DQ_ATOMIC) {  // this warp's 16 rows of dS^T, scaled, for dQ
#pragma unroll
      for (int j = 0; j < M_TILES; ++j) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = warp * 16 + lane / 4 + r * 8;
          *reinterpret_cast<u32*>(ds_smem + swizzle<BLOCK_M>(row, j * 8 + (lane % 4) * 2)) =
              pack2<T>(dpt[0][j][2 * r] * scale, dpt[0][j][2 * r + 1] * scale);
        }
      }
    }
    // DQ_ATOMIC: dS^T is complete. Either way every warp is done with this item's Q and dO buffers,
    // which the next item's loads overwrite.
    __syncthreads();
    if (DQ_ATOMIC) {
      const int wm = warp % DQ_WM;
      const int wd = warp / DQ_WM;
      float dq_tile[1][DQ_TILES][4];
#pragma unroll
      for (int j = 0; j < DQ_TILES; ++j) dq_tile[0][j][0] = dq_tile[0][j][1] = dq_tile[0][j][2] = dq_tile[0][j][3] = 0.f;
      mma_at_x<T, BLOCK_M, HEAD_DIM, DQ_TILES, BLOCK_N / 16>(dq_tile, ds_smem, wm * 16, k_smem, wd * DQ_TILES * 8,
                                                             lane);  // dQ = dS K
      atomic_add_rows<DQ_TILES>(dq_acc + b * dq_stride_b + h * dq_stride_h, dq_stride_s, dq_tile, m0 + wm * 16,
                                wd * DQ_TILES * 8, seqlen_q, dim, lane);
    }
    h = h_next, m0 = m_next;
  }
  cp_async_wait<0>();

  T* dk_head = static_cast<T*>(dk) + b * dk_stride_b + hk * dk_stride_h;
  T* dv_head = static_cast<T*>(dv) + b * dv_stride_b + hk * dv_stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key0 + r * 8;
    if (key >= seqlen_k) continue;
#pragma unroll
    for (int j = 0; j < D_TILES; ++j) {
      const int col = j * 8 + (lane % 4) * 2;
      if (col < dim) {
        *reinterpret_cast<u32*>(dk_head + key * dk_stride_s + col) =
            pack2<T>(dk_acc[0][j][2 * r] * scale, dk_acc[0][j][2 * r + 1] * scale);
      }
      if (col < dim_v) {
        *reinterpret_cast<u32*>(dv_head + key * dv_stride_s + col) =
            pack2<T>(dv_acc[0][j][2 * r], dv_acc[0][j][2 * r + 1]);
      }
    }
  }
}

// One block: BLOCK_M query rows of one (batch, query head); warps split the rows. For every visible
// key block: S = Q K^T, P, dP = dO V^T, dS, dQ += dS K.
template <typename T, int HEAD_DIM, int BLOCK_M, int BLOCK_N, bool HAS_LO, bool HAS_HI, bool HAS_SOFTCAP>
__global__ void __launch_bounds__(128)
flash_bwd_dq(const void* q, const void* k, const void* v, const void* dout, const float* lse2, const float* delta,
             void* dq,
             long long q_stride_b, long long q_stride_s, long long q_stride_h,
             long long k_stride_b, long long k_stride_s, long long k_stride_h,
             long long v_stride_b, long long v_stride_s, long long v_stride_h,
             long long do_stride_b, long long do_stride_s, long long do_stride_h,
             long long dq_stride_b, long long dq_stride_s, long long dq_stride_h,
             int seqlen_q, int seqlen_k, int heads_q, int group, int dim, int dim_v, int band_lo, int band_hi,
             float scale_log2, float softcap_log2, float scale_over_cap, float scale) {
  constexpr int THREADS = 128;
  constexpr int N_TILES = BLOCK_N / 8;
  constexpr int D_TILES = HEAD_DIM / 8;
  static_assert(BLOCK_M == 64, "4 warps of 16 queries");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* q_smem = reinterpret_cast<T*>(aligned_smem(smem_raw));
  T* do_smem = q_smem + BLOCK_M * HEAD_DIM;
  T* k_smem = do_smem + BLOCK_M * HEAD_DIM;     // 2 buffers
  T* v_smem = k_smem + 2 * BLOCK_N * HEAD_DIM;  // 2 buffers

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int m0 = blockIdx.x * BLOCK_M;
  const int bh = blockIdx.y;
  const int b = bh / heads_q;
  const int h = bh % heads_q;
  const int hk = h / group;
  const int row0 = m0 + warp * 16 + lane / 4;  // this thread's queries: row0 and row0 + 8

  int first = 0, last = seqlen_k;
  if (HAS_LO) first = max(m0 + band_lo, 0) / BLOCK_N * BLOCK_N;
  if (HAS_HI) last = min(m0 + BLOCK_M - 1 + band_hi + 1, seqlen_k);

  const T* k_head = static_cast<const T*>(k) + b * k_stride_b + hk * k_stride_h;
  const T* v_head = static_cast<const T*>(v) + b * v_stride_b + hk * v_stride_h;
  load_tile_async<T, BLOCK_M, HEAD_DIM, THREADS>(q_smem, static_cast<const T*>(q) + b * q_stride_b + h * q_stride_h,
                                                 q_stride_s, m0, seqlen_q, dim, tid);
  load_tile_async<T, BLOCK_M, HEAD_DIM, THREADS>(
      do_smem, static_cast<const T*>(dout) + b * do_stride_b + h * do_stride_h, do_stride_s, m0, seqlen_q, dim_v, tid);
  auto issue = [&](int n, int buf) {
    load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(k_smem + buf * BLOCK_N * HEAD_DIM, k_head, k_stride_s, n,
                                                   seqlen_k, dim, tid);
    load_tile_async<T, BLOCK_N, HEAD_DIM, THREADS>(v_smem + buf * BLOCK_N * HEAD_DIM, v_head, v_stride_s, n,
                                                   seqlen_k, dim_v, tid);
  };
  if (first < last) issue(first, 0);
  cp_async_commit();

  float lse2_r[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + r * 8;
    const bool in = row < seqlen_q;
    lse2_r[r] = in ? lse2[static_cast<long long>(bh) * seqlen_q + row] : INFINITY;
    dlt[r] = in ? delta[static_cast<long long>(bh) * seqlen_q + row] : 0.f;
  }
  float dq_acc[1][D_TILES][4];
#pragma unroll
  for (int j = 0; j < D_TILES; ++j) dq_acc[0][j][0] = dq_acc[0][j][1] = dq_acc[0][j][2] = dq_acc[0][j][3] = 0.f;

  int buf = 0;
  for (int n0 = first; n0 < last; n0 += BLOCK_N, buf ^= 1) {
    if (n0 + BLOCK_N < last) issue(n0 + BLOCK_N, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* k_buf = k_smem + buf * BLOCK_N * HEAD_DIM;
    const T* v_buf = v_smem + buf * BLOCK_N * HEAD_DIM;

    float s[1][N_TILES][4], dp[1][N_TILES][4];
#pragma unroll
    for (int j = 0; j < N_TILES; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][j][e] = dp[0][j][e] = 0.f;
    }
    mma_a_bt<T, HEAD_DIM, 1, N_TILES>(s, q_smem, warp * 16, k_buf, lane);    // S = Q K^T
    mma_a_bt<T, HEAD_DIM, 1, N_TILES>(dp, do_smem, warp * 16, v_buf, lane);  // dP = dO V^T
    auto rows = [&](int j, int e, float& lse2_e, float& dlt_e) {  // S's rows are queries
      lse2_e = lse2_r[e / 2];
      dlt_e = dlt[e / 2];
    };
    auto visible_at = [&](int j, int e) {
      const int key = n0 + j * 8 + (lane % 4) * 2 + e % 2;
      return visible<HAS_LO, HAS_HI>(row0 + (e / 2) * 8, key, seqlen_q, seqlen_k, band_lo, band_hi);
    };
    const bool masked = tile_partial<BLOCK_M, BLOCK_N, HAS_LO, HAS_HI>(m0, n0, seqlen_q, seqlen_k, band_lo, band_hi);
    softmax_grad<N_TILES, HAS_SOFTCAP>(s, dp, rows, masked, visible_at, scale_log2, softcap_log2, scale_over_cap);
    mma_p_x<T, HEAD_DIM, 1, N_TILES>(dq_acc, dp, k_buf, lane);  // dQ += dS K
    __syncthreads();  // the next block's loads overwrite this buffer
  }
  cp_async_wait<0>();

  T* dq_head = static_cast<T*>(dq) + b * dq_stride_b + h * dq_stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + r * 8;
    if (row >= seqlen_q) continue;
#pragma unroll
    for (int j = 0; j < D_TILES; ++j) {
      const int col = j * 8 + (lane % 4) * 2;
      if (col < dim) {
        *reinterpret_cast<u32*>(dq_head + row * dq_stride_s + col) =
            pack2<T>(dq_acc[0][j][2 * r] * scale, dq_acc[0][j][2 * r + 1] * scale);
      }
    }
  }
}

}  // namespace portattn
