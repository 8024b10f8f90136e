// CPU emulation of the small CUDA subset csrc/chain_kernels.cu uses — test-only.
//
// Lets the real kernel source compile with g++ (-DLRK_EMULATE) and run on the CPU, so its
// index math, masking, strides, tiling, synchronization structure and host-side planning
// are tested on machines without a GPU (tests/test_csrc_compile.py). Never part of _C.
//
// Model: one std::thread per CUDA thread of a block; the blocks run one after another.
// __syncthreads is a std::barrier over the block, __syncwarp one over the warp, and a
// mismatched barrier deadlocks (the test runs under a timeout). Dynamic shared memory is
// a 128-byte aligned buffer poisoned with 0xFF bytes (NaN for every float type) before each
// block, so reads of shared memory no thread wrote show up as NaN.
//
// WMMA: each lane holds the whole 16x16 tile in fp32 (loads/mma are replicated per lane,
// stores are split across the lanes like the hardware's, so a missing __syncwarp after a
// store is a visible race); loads/stores check the documented 256-bit pointer alignment
// and ldm rules. mma accumulates in fp32 like the tensor cores.
#pragma once

#include <math.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define LRK_EMULATE 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define LRK_HD
#define LRK_UNROLL

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 2 };
enum cudaDeviceAttr {
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor,
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

namespace emu {

struct DeviceConfig {
  int cc_major = 9;
  int cc_minor = 0;
  int num_sms = 132;
  int max_smem_optin = 227 * 1024;
};
inline DeviceConfig device;

struct ThreadState {
  dim3 thread_idx, block_idx;
  unsigned char* smem = nullptr;
  std::barrier<>* block_barrier = nullptr;
  std::vector<std::unique_ptr<std::barrier<>>>* warp_barriers = nullptr;
};
inline thread_local ThreadState tls;
inline dim3 grid_dim, block_dim;
inline cudaError_t last_error = cudaSuccess;
inline std::string last_error_message;
inline std::map<const void*, int> max_dynamic_smem;  // cudaFuncSetAttribute records

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "EMULATION ERROR: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline unsigned char* dynamic_smem() { return tls.smem; }

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes, Args... args) {
  const int limit = max_dynamic_smem.count(reinterpret_cast<const void*>(kernel))
                        ? max_dynamic_smem[reinterpret_cast<const void*>(kernel)]
                        : 48 * 1024;
  if (smem_bytes > static_cast<size_t>(limit) ||
      smem_bytes > static_cast<size_t>(device.max_smem_optin) || block.x > 1024 ||
      block.y != 1 || block.z != 1 || grid.y > 65535 || grid.x == 0) {
    last_error = cudaErrorInvalidValue;
    last_error_message = "invalid launch: smem " + std::to_string(smem_bytes) + " > limit " +
                         std::to_string(limit) + " or bad grid/block";
    return;
  }
  grid_dim = grid;
  block_dim = block;
  const unsigned threads = block.x;
  const unsigned blocks = grid.x * grid.y;
  // operator new with alignment: the kernels rely on 128-byte aligned dynamic smem.
  auto* smem = static_cast<unsigned char*>(
      ::operator new(smem_bytes + 128, std::align_val_t{128}));
  std::memset(smem, 0xFF, smem_bytes + 128);
  // The same threads run every block in turn; between blocks (all threads arrived at
  // `next_block`) shared memory is poisoned again.
  std::barrier<> block_barrier(threads);
  auto repoison = [&]() noexcept { std::memset(smem, 0xFF, smem_bytes + 128); };
  std::barrier<decltype(repoison)> next_block(threads, repoison);
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  for (unsigned w = 0; w < (threads + 31) / 32; ++w) {
    warp_barriers.push_back(
        std::make_unique<std::barrier<>>(std::min<unsigned>(32, threads - 32 * w)));
  }
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      tls.thread_idx = dim3(t);
      tls.smem = smem;
      tls.block_barrier = &block_barrier;
      tls.warp_barriers = &warp_barriers;
      for (unsigned blk = 0; blk < blocks; ++blk) {
        tls.block_idx = dim3(blk % grid.x, blk / grid.x);
        kernel(args...);
        next_block.arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
  ::operator delete(smem, std::align_val_t{128});
}

}  // namespace emu

#define threadIdx (::emu::tls.thread_idx)
#define blockIdx (::emu::tls.block_idx)
#define gridDim (::emu::grid_dim)
#define blockDim (::emu::block_dim)
#define LRK_DYNAMIC_SMEM(name) unsigned char* name = ::emu::dynamic_smem()
#define LRK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::emu::launch(kernel, grid, block, smem, __VA_ARGS__))

inline void __syncthreads() { ::emu::tls.block_barrier->arrive_and_wait(); }
inline void __syncwarp() { (*::emu::tls.warp_barriers)[threadIdx.x / 32]->arrive_and_wait(); }
[[noreturn]] inline void __trap() { ::emu::fail("__trap() reached"); }

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::emu::last_error;
  ::emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = ::emu::device.cc_major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = ::emu::device.cc_minor; break;
    case cudaDevAttrMultiProcessorCount: *value = ::emu::device.num_sms; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = ::emu::device.max_smem_optin; break;
  }
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute, int value) {
  if (value > ::emu::device.max_smem_optin) return cudaErrorInvalidValue;
  ::emu::max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}

#define C10_CUDA_CHECK(expr)                                                            \
  do {                                                                                  \
    const cudaError_t lrk_err = (expr);                                                 \
    if (lrk_err != cudaSuccess) {                                                       \
      throw std::runtime_error("CUDA error " + std::to_string(lrk_err) + " in " #expr   \
                               ": " + ::emu::last_error_message);                       \
    }                                                                                   \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())

// ---- 16-bit float types: storage only, explicit round-to-nearest-even conversions ----

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);  // IEEE round-to-nearest-even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  __nv_bfloat16 h;
  if (std::isnan(x)) {
    h.bits = 0x7FC0;
  } else {
    h.bits = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
  return h;
}

namespace emu {
inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

inline void check_wmma_pointer(const void* ptr, unsigned ldm, unsigned elem_bytes) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0) fail("WMMA pointer not 256-bit aligned");
  if ((ldm * elem_bytes) % 16 != 0) fail("WMMA ldm not a multiple of 16 bytes");
}
}  // namespace emu

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emulation supports m16n16k16 only");
  float v[256];
};

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float x) {
  for (float& e : f.v) e = x;
}

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads need a layout");
  emu::check_wmma_pointer(p, ldm, sizeof(T));
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) f.v[i * 16 + j] = emu::to_float(row ? p[i * ldm + j] : p[i + j * ldm]);
  }
}

template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float tmp[256];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float s = c.v[i * 16 + j];
      for (int k = 0; k < 16; ++k) s = std::fma(a.v[i * 16 + k], b.v[k * 16 + j], s);
      tmp[i * 16 + j] = s;
    }
  }
  std::memcpy(d.v, tmp, sizeof(tmp));
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  emu::check_wmma_pointer(p, ldm, sizeof(float));
  // Lane l writes elements 8l .. 8l + 7 (not the lane-strided set a reader is likely to
  // use), and odd lanes write late: reading another lane's part before __syncwarp then
  // sees stale data or the NaN poison.
  const unsigned lane = threadIdx.x % 32;
  if (lane % 2 == 1) std::this_thread::sleep_for(std::chrono::microseconds(20));
  for (unsigned e = 8 * lane; e < 8 * lane + 8; ++e) {
    const unsigned i = e / 16, j = e % 16;
    p[layout == mem_row_major ? i * ldm + j : i + j * ldm] = f.v[e];
  }
}
}  // namespace wmma
}  // namespace nvcuda
