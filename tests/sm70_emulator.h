// The CUDA that the cuda_volta kernels use, on the CPU, so that tests run those kernels without a GPU
// (tests/test_cuda_volta_emulated.py). Included before the kernels' source; a host compiler builds it.
//
// - Every thread of a block is an OS thread; __syncthreads and __syncwarp are barriers, and a warp
//   shuffle goes through a per-warp exchange between two barriers. Blocks run one after another.
// - WMMA m16n16k16 gives each lane a scrambled set of elements (fixed permutations; every A and B
//   element held by two lanes, as on Volta), so a kernel that assumed an element order would fail;
//   with EMU_WMMA_ORDER=1, the order of mma.m16n8k16 instead (cuda_volta/wmma_order.py's mma_order),
//   which the forward's register softmax can use; with 2, that order with each lane's A elements
//   taken from lane ^ 16 (the register softmax then shuffles P into place). The loads check the alignment WMMA requires. The
//   MMA multiplies fp16 values in float.
// - Shared memory is a global array of exactly the launch's size (the address sanitizer flags any
//   access past it), filled with NaN bytes before every block, so a read of what no thread wrote
//   spoils the result.
#pragma once

#include <cuda_fp16.h>
#include <vector_functions.h>

#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#ifndef EMU_WMMA_ORDER
#define EMU_WMMA_ORDER 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__
#define PORTATTN_WMMA_EMULATED 1

struct EmuDim3 {
  unsigned x, y, z;
};
inline thread_local EmuDim3 threadIdx, blockIdx;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "sm70 emulator: %s\n", what);
  std::abort();
}

constexpr int WORDS = 24;  // per lane in a warp's exchange: a WMMA's A, B (8 words each) and C (8)

struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint32_t> exchange;  // warps x 32 lanes x WORDS
  const unsigned char* smem = nullptr;  // the launch's shared memory, [smem, smem + smem_bytes)
  size_t smem_bytes = 0;
};
inline Block* block = nullptr;

inline int lane() { return threadIdx.x % 32; }
inline int warp() { return threadIdx.x / 32; }
inline void warp_barrier() { block->warps[warp()]->arrive_and_wait(); }
inline uint32_t* slot(int w, int l) { return block->exchange.data() + (w * 32 + l) * WORDS; }

// a fixed permutation of 0..255 (Fisher-Yates with an LCG)
inline std::array<int, 256> permutation(uint32_t seed) {
  std::array<int, 256> p{};
  for (int i = 0; i < 256; ++i) p[i] = i;
  for (int i = 255; i > 0; --i) {
    seed = seed * 1664525u + 1013904223u;
    std::swap(p[i], p[(seed >> 8) % (i + 1)]);
  }
  return p;
}
inline const std::array<int, 256> C_ORDER = permutation(11);
inline const std::array<int, 256> A_ORDER[2] = {permutation(23), permutation(37)};
inline const std::array<int, 256> B_ORDER[2] = {permutation(41), permutation(53)};

// slot i (0..7) of lane l of an accumulator, element e (0..15) of an A or B fragment: its position
// row * 16 + col in the 16x16 matrix (B: k * 16 + n)
inline int c_position(int l, int i) {
  if (EMU_WMMA_ORDER >= 1) return (l / 4 + 8 * ((i / 2) % 2)) * 16 + 2 * (l % 4) + i % 2 + 8 * (i / 4);
  return C_ORDER[l * 8 + i];
}
inline int a_position(int l, int e) {
  if (EMU_WMMA_ORDER == 2) l ^= 16;  // as 1, but each lane's A elements are held in lane ^ 16's accumulator
  if (EMU_WMMA_ORDER >= 1) {
    const int q = e % 8;  // elements 8-15 repeat 0-7
    return (l / 4 + 8 * ((q / 2) % 2)) * 16 + 2 * (l % 4) + q % 2 + 8 * (q / 4);
  }
  const int s = l * 16 + e;
  return A_ORDER[s / 256][s % 256];
}
inline int b_position(int l, int e) {
  if (EMU_WMMA_ORDER >= 1) {
    const int q = e % 8, within = q % 4;  // two n-halves of m16n8k16's B, then the same again
    return (2 * (l % 4) + within % 2 + 8 * (within / 2)) * 16 + l / 4 + 8 * (q / 4);
  }
  const int s = l * 16 + e;
  return B_ORDER[s / 256][s % 256];
}

// the kernels' WMMA loads and stores name the .shared state space: each 16x16 fragment must lie in
// the launch's shared memory, its base 32-byte aligned and its leading dimension a multiple of 16 bytes
inline void check_fragment(const void* p, int ld, int bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fail("WMMA fragment base not 32-byte aligned");
  if ((ld * bytes) % 16 != 0) fail("WMMA leading dimension not a multiple of 16 bytes");
  const auto* first = static_cast<const unsigned char*>(p);
  const auto* end = first + (15 * ld + 16) * bytes;
  if (first < block->smem || end > block->smem + block->smem_bytes) fail("WMMA fragment outside shared memory");
}

inline __half get_half(const uint32_t* x, int e) {
  __half h;
  std::memcpy(&h, reinterpret_cast<const char*>(x) + 2 * e, 2);
  return h;
}
inline void set_half(uint32_t* x, int e, __half h) { std::memcpy(reinterpret_cast<char*>(x) + 2 * e, &h, 2); }

// every thread runs `body` for every block of the grid, in order
inline void launch(unsigned grid_x, unsigned grid_y, int threads, unsigned char* smem, size_t smem_bytes,
                   const std::function<void()>& body) {
  if (threads % 32 != 0) fail("block size not a multiple of 32");
  Block b;
  b.all = std::make_unique<std::barrier<>>(threads);
  for (int w = 0; w < threads / 32; ++w) b.warps.push_back(std::make_unique<std::barrier<>>(32));
  b.exchange.assign(static_cast<size_t>(threads) * WORDS, 0);
  b.smem = smem;
  b.smem_bytes = smem_bytes;
  block = &b;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = {static_cast<unsigned>(t), 0, 0};
      for (unsigned y = 0; y < grid_y; ++y) {
        for (unsigned x = 0; x < grid_x; ++x) {
          block->all->arrive_and_wait();  // the previous block is done with shared memory
          if (t == 0) std::memset(smem, 0xff, smem_bytes);  // NaN in fp16 and fp32
          block->all->arrive_and_wait();
          blockIdx = {x, y, 0};
          body();
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  block = nullptr;
}

}  // namespace emu

inline void __syncthreads() { emu::block->all->arrive_and_wait(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) emu::fail("__syncwarp on part of a warp");
  emu::warp_barrier();
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) == 4, "32-bit shuffles");
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync on part of a warp");
  std::memcpy(emu::slot(emu::warp(), emu::lane()), &value, 4);
  emu::warp_barrier();
  T other;
  std::memcpy(&other, emu::slot(emu::warp(), emu::lane() ^ lane_mask), 4);
  emu::warp_barrier();
  return other;
}

namespace portattn_sm70 {

// What common_sm70.cuh leaves to the GPU (templates over its fragment types, declared after this):
// shared-memory addresses (byte offsets from the launch's shared memory), the four fragment accesses
// at a base address plus a constant, and the MMA

inline uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - emu::block->smem);
}
template <class T>
inline T* shared_pointer(uint32_t address) {
  return reinterpret_cast<T*>(const_cast<unsigned char*>(emu::block->smem) + address);
}

template <int OFFSET, class F>
inline void load_a_row_at(F& f, uint32_t base, int ld) {
  const __half* p = shared_pointer<const __half>(base + OFFSET);
  emu::check_fragment(p, ld, 2);
  for (int e = 0; e < 16; ++e) {
    const int pos = emu::a_position(emu::lane(), e);
    emu::set_half(f.x, e, p[(pos / 16) * ld + pos % 16]);
  }
}

template <bool COL, int OFFSET, class F>  // COL: B(k, n) at p[n * ld + k]; else at p[k * ld + n]
inline void load_b_at(F& f, uint32_t base, int ld) {
  const __half* p = shared_pointer<const __half>(base + OFFSET);
  emu::check_fragment(p, ld, 2);
  for (int e = 0; e < 16; ++e) {
    const int pos = emu::b_position(emu::lane(), e), kk = pos / 16, n = pos % 16;
    emu::set_half(f.x, e, COL ? p[n * ld + kk] : p[kk * ld + n]);
  }
}

template <class F>
inline void load_c_row(F& f, const float* p, int ld) {
  emu::check_fragment(p, ld, 4);
  for (int i = 0; i < 8; ++i) {
    const int pos = emu::c_position(emu::lane(), i);
    f.x[i] = p[(pos / 16) * ld + pos % 16];
  }
}

template <int OFFSET, class F>
inline void store_d_row_at(uint32_t base, const F& f, int ld) {
  float* p = shared_pointer<float>(base + OFFSET);
  emu::check_fragment(p, ld, 4);
  for (int i = 0; i < 8; ++i) {
    const int pos = emu::c_position(emu::lane(), i);
    p[(pos / 16) * ld + pos % 16] = f.x[i];
  }
}

template <bool B_COL, class C, class AB>  // d += a b, over the warp
inline void mma(C& d, const AB& a, const AB& b) {
  uint32_t* mine = emu::slot(emu::warp(), emu::lane());
  std::memcpy(mine, a.x, 32);
  std::memcpy(mine + 8, b.x, 32);
  std::memcpy(mine + 16, d.x, 32);
  emu::warp_barrier();
  float am[256], bm[256], cm[256];
  bool a_seen[256] = {}, b_seen[256] = {};
  // an element held by two lanes (or twice by one) must be the same in every copy
  auto put = [](float* m, bool* seen, int pos, float value) {
    if (seen[pos] && std::memcmp(&m[pos], &value, 4) != 0) emu::fail("copies of a WMMA operand element disagree");
    m[pos] = value, seen[pos] = true;
  };
  for (int l = 0; l < 32; ++l) {
    const uint32_t* theirs = emu::slot(emu::warp(), l);
    for (int e = 0; e < 16; ++e) {
      put(am, a_seen, emu::a_position(l, e), __half2float(emu::get_half(theirs, e)));
      put(bm, b_seen, emu::b_position(l, e), __half2float(emu::get_half(theirs + 8, e)));
    }
    for (int i = 0; i < 8; ++i) std::memcpy(&cm[emu::c_position(l, i)], theirs + 16 + i, 4);
  }
  emu::warp_barrier();
  for (int i = 0; i < 8; ++i) {
    const int pos = emu::c_position(emu::lane(), i), r = pos / 16, c = pos % 16;
    float acc = cm[pos];
    for (int kk = 0; kk < 16; ++kk) acc += am[r * 16 + kk] * bm[kk * 16 + c];
    d.x[i] = acc;
  }
}

}  // namespace portattn_sm70
