// The visibility band, shared by the kernels of the CuPy-compiled backends (cuda_ampere, cuda_volta).
#pragma once

namespace portattn_band {

// Whether query `query` sees key `key` under the band lo <= key - query <= hi (HAS_LO / HAS_HI off =
// unbounded), both inside their sequences.
template <bool HAS_LO, bool HAS_HI>
__device__ __forceinline__ bool visible(int query, int key, int seqlen_q, int seqlen_k, int lo, int hi) {
  bool ok = query < seqlen_q && key < seqlen_k;
  if (HAS_LO) ok = ok && key - query >= lo;
  if (HAS_HI) ok = ok && key - query <= hi;
  return ok;
}

}  // namespace portattn_band
