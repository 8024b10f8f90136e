// Runs csrc/chain_kernels.cu on the CPU under cuda_emulation.h and checks every output
// against a float64 reference computed here. Test-only (tests/test_csrc_compile.py builds
// and runs it); never part of _C.
//
//   g++ -std=c++20 -O1 -pthread -I csrc csrc/emu/emulate_chain.cpp -o emulate_chain
//   ./emulate_chain            # prints one line per case, exit status 0 iff all pass
//
// Every operand lives inside a buffer whose unused elements (row padding, the gaps of a
// strided bias, 64 guard elements on each side) are NaN, so a read outside the logical
// tensor turns the result into NaN; out and z start as a canary bit pattern, so a missing
// write shows as a non-finite value and a write outside the tensor changes a guard.

#include "cuda_emulation.h"
// The real kernel source, compiled against the shim above.
#include "../chain_kernels.cu"

#include <chrono>
#include <cmath>
#include <cinttypes>
#include <cstdio>
#include <vector>

using lowrank_kernels::ChainArgs;
using lowrank_kernels::ChainDeviceInfo;
using lowrank_kernels::ChainDType;
using lowrank_kernels::ChainPlan;

namespace {

constexpr int64_t kGuard = 64;

uint64_t rng_state = 0x9E3779B97F4A7C15ull;
double uniform() {  // [-1, 1)
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return static_cast<double>(rng_state >> 11) / static_cast<double>(1ull << 52) - 1.0;
}

template <typename T>
T from_double(double x);
template <>
float from_double<float>(double x) { return static_cast<float>(x); }
template <>
__half from_double<__half>(double x) { return __float2half_rn(static_cast<float>(x)); }
template <>
__nv_bfloat16 from_double<__nv_bfloat16>(double x) {
  return __float2bfloat16_rn(static_cast<float>(x));
}
template <typename T>
double to_double(T x) { return static_cast<double>(emu::to_float(x)); }

template <typename T>
T nan_value() {
  T v;
  std::memset(&v, 0xFF, sizeof(T));
  return v;
}
template <typename T>
T canary_value() {  // a NaN payload no kernel computes
  T v;
  std::memset(&v, 0xFF, sizeof(T));
  reinterpret_cast<unsigned char*>(&v)[0] = 0xA5;
  return v;
}
template <typename T>
bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

// A [rows, cols] matrix stored with arbitrary strides inside a NaN-filled buffer.
template <typename T>
struct Strided {
  std::vector<T> buffer;
  int64_t rows = 0, cols = 0, s0 = 0, s1 = 0;
  std::vector<double> values;  // row-major logical values (as T, widened)

  Strided(int64_t rows_, int64_t cols_, bool col_major, int64_t pad) : rows(rows_), cols(cols_) {
    if (col_major) {
      s0 = 1;
      s1 = rows + pad;
    } else {
      s0 = cols + pad;
      s1 = 1;
    }
    const int64_t span = rows > 0 && cols > 0 ? (rows - 1) * s0 + (cols - 1) * s1 + 1 : 0;
    buffer.assign(static_cast<size_t>(span + 2 * kGuard), nan_value<T>());
    values.resize(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const T v = from_double<T>(uniform());
        buffer[static_cast<size_t>(kGuard + i * s0 + j * s1)] = v;
        values[static_cast<size_t>(i * cols + j)] = to_double(v);
      }
    }
  }
  const T* data() const { return buffer.data() + kGuard; }
  double at(int64_t i, int64_t j) const { return values[static_cast<size_t>(i * cols + j)]; }
};

struct Case {
  const char* name;
  ChainDType dtype;
  int64_t M, K, N, R;
  bool bias;
  bool write_z;
  unsigned layout;  // 1: A col-major, 2: B col-major, 4: C col-major, 8: padded strides
  ChainDeviceInfo device;
  bool expect_fused;
  int expect_block_m;  // 0: any
  int expect_split;    // 0: any
};

double rel_error(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <typename T>
bool run_case(const Case& cs, double tol) {
  const bool col_a = cs.layout & 1u, col_b = cs.layout & 2u, col_c = cs.layout & 4u;
  const int64_t pad = (cs.layout & 8u) ? 3 : 0;
  Strided<T> a(cs.M, cs.K, col_a, pad), b(cs.K, cs.R, col_b, pad), c(cs.R, cs.N, col_c, pad);
  // bias with stride 2: its gaps are NaN too.
  Strided<T> bias(cs.N, 1, false, 1);

  std::vector<T> out(static_cast<size_t>(cs.M * cs.N + 2 * kGuard), canary_value<T>());
  std::vector<T> z(static_cast<size_t>(cs.M * cs.R + 2 * kGuard), canary_value<T>());

  ChainArgs args;
  args.a = a.data();
  args.b = b.data();
  args.c = c.data();
  args.bias = cs.bias ? bias.data() : nullptr;
  args.out = out.data() + kGuard;
  args.z = cs.write_z ? z.data() + kGuard : nullptr;
  args.M = cs.M;
  args.K = cs.K;
  args.N = cs.N;
  args.R = cs.R;
  args.stride_am = a.s0;
  args.stride_ak = a.s1;
  args.stride_bk = b.s0;
  args.stride_br = b.s1;
  args.stride_cr = c.s0;
  args.stride_cn = c.s1;
  args.stride_bias = bias.s0;

  emu::device.cc_major = cs.device.cc_major;
  emu::device.cc_minor = cs.device.cc_minor;
  emu::device.num_sms = cs.device.num_sms;
  emu::device.max_smem_optin = static_cast<int>(cs.device.max_smem_optin);
  const ChainDeviceInfo info = lowrank_kernels::query_current_device();
  const ChainPlan plan = lowrank_kernels::plan_chain(cs.M, cs.N, cs.R, cs.dtype, info);

  std::printf("case %-34s plan fused=%d tc=%d block_m=%d split=%d r_pad=%" PRId64
              " smem=%zu",
              cs.name, plan.fused, plan.tensor_cores, plan.block_m, plan.split, plan.r_pad,
              plan.smem_bytes);
  bool ok = plan.fused == cs.expect_fused &&
            (cs.expect_block_m == 0 || plan.block_m == cs.expect_block_m) &&
            (cs.expect_split == 0 || plan.split == cs.expect_split);
  if (!ok) {
    std::printf(" FAIL: unexpected plan\n");
    return false;
  }
  bool launched;
  const auto start = std::chrono::steady_clock::now();
  try {
    launched = lowrank_kernels::launch_chain(args, cs.dtype, plan, nullptr);
  } catch (const std::exception& e) {
    std::printf(" FAIL: %s\n", e.what());
    return false;
  }
  std::printf(" %.2fs", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (launched != plan.fused) {
    std::printf(" FAIL: launch_chain returned %d\n", launched);
    return false;
  }
  if (!plan.fused) {
    for (const T& v : out) ok = ok && same_bits(v, canary_value<T>());
    std::printf(" %s (not launched)\n", ok ? "ok" : "FAIL: wrote output");
    return ok;
  }

  // float64 reference; Z is rounded to T where the kernel (and PyTorch's chain) rounds it.
  const bool round_z = cs.dtype != ChainDType::kFloat32;
  std::vector<double> z_ref(static_cast<size_t>(cs.M * cs.R));
  for (int64_t i = 0; i < cs.M; ++i) {
    for (int64_t j = 0; j < cs.R; ++j) {
      double s = 0;
      for (int64_t k = 0; k < cs.K; ++k) s += a.at(i, k) * b.at(k, j);
      z_ref[static_cast<size_t>(i * cs.R + j)] = round_z ? to_double(from_double<T>(s)) : s;
    }
  }
  std::vector<double> out_ref(static_cast<size_t>(cs.M * cs.N)), out_got(out_ref.size());
  bool finite = true;
  for (int64_t i = 0; i < cs.M; ++i) {
    for (int64_t n = 0; n < cs.N; ++n) {
      double s = cs.bias ? bias.at(n, 0) : 0.0;
      for (int64_t j = 0; j < cs.R; ++j) s += z_ref[static_cast<size_t>(i * cs.R + j)] * c.at(j, n);
      const size_t idx = static_cast<size_t>(i * cs.N + n);
      out_ref[idx] = s;
      out_got[idx] = to_double(out[static_cast<size_t>(kGuard) + idx]);
      finite = finite && std::isfinite(out_got[idx]);
    }
  }
  const double err_out = rel_error(out_got, out_ref);
  double err_z = 0;
  if (cs.write_z) {
    std::vector<double> z_got(z_ref.size());
    for (size_t idx = 0; idx < z_got.size(); ++idx) {
      z_got[idx] = to_double(z[static_cast<size_t>(kGuard) + idx]);
      finite = finite && std::isfinite(z_got[idx]);
    }
    err_z = rel_error(z_got, z_ref);
  }
  bool guards = true;
  for (int64_t g = 0; g < kGuard; ++g) {
    guards = guards && same_bits(out[static_cast<size_t>(g)], canary_value<T>()) &&
             same_bits(out[out.size() - 1 - static_cast<size_t>(g)], canary_value<T>()) &&
             same_bits(z[static_cast<size_t>(g)], canary_value<T>()) &&
             same_bits(z[z.size() - 1 - static_cast<size_t>(g)], canary_value<T>());
  }
  if (!cs.write_z) {  // nothing may be written to z at all
    for (const T& v : z) guards = guards && same_bits(v, canary_value<T>());
  }
  ok = finite && guards && err_out <= tol && err_z <= tol;
  std::printf(" err_out=%.3g err_z=%.3g tol=%.3g %s%s%s\n", err_out, err_z, tol,
              ok ? "ok" : "FAIL", finite ? "" : " (non-finite values)",
              guards ? "" : " (guard overwritten)");
  return ok;
}

// One +inf in row 1 of A with every entry of B and C positive: in exact arithmetic every
// output of row 1 is +inf and every other row finite. Padded rank lanes of Z must stay
// zero (an inf·0 = NaN there would turn row 1 into NaN through C's zero padded rows).
template <typename T>
bool run_inf_case(const char* name, ChainDType dtype, int64_t R, ChainDeviceInfo device) {
  const int64_t M = 4, K = 24, N = 40;
  std::vector<T> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * R)),
      c(static_cast<size_t>(R * N)), out(static_cast<size_t>(M * N));
  for (auto& v : a) v = from_double<T>(uniform());
  for (auto& v : b) v = from_double<T>(0.1 + std::fabs(uniform()));
  for (auto& v : c) v = from_double<T>(0.1 + std::fabs(uniform()));
  a[static_cast<size_t>(1 * K + 7)] = from_double<T>(INFINITY);
  ChainArgs args;
  args.a = a.data();
  args.b = b.data();
  args.c = c.data();
  args.out = out.data();
  args.M = M;
  args.K = K;
  args.N = N;
  args.R = R;
  args.stride_am = K;
  args.stride_ak = 1;
  args.stride_bk = R;
  args.stride_br = 1;
  args.stride_cr = N;
  args.stride_cn = 1;
  emu::device.cc_major = device.cc_major;
  emu::device.num_sms = device.num_sms;
  emu::device.max_smem_optin = static_cast<int>(device.max_smem_optin);
  const ChainPlan plan =
      lowrank_kernels::plan_chain(M, N, R, dtype, lowrank_kernels::query_current_device());
  bool ok = plan.fused && plan.r_pad > R && lowrank_kernels::launch_chain(args, dtype, plan, nullptr);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t n = 0; n < N; ++n) {
      const double v = to_double(out[static_cast<size_t>(i * N + n)]);
      ok = ok && (i == 1 ? (std::isinf(v) && v > 0) : std::isfinite(v));
    }
  }
  std::printf("case %-34s r_pad=%" PRId64 " %s\n", name, plan.r_pad, ok ? "ok" : "FAIL");
  return ok;
}

ChainDeviceInfo dev(int cc_major, int sms, int smem_kib) {
  ChainDeviceInfo d;
  d.cc_major = cc_major;
  d.num_sms = sms;
  d.max_smem_optin = static_cast<size_t>(smem_kib) * 1024;
  return d;
}

}  // namespace

int main() {
  using D = ChainDType;
  const ChainDeviceInfo h100 = dev(9, 132, 227), a100 = dev(8, 108, 163);
  const ChainDeviceInfo ada = dev(8, 4, 99), small_smem = dev(8, 4, 64), turing = dev(7, 40, 64);
  const Case cases[] = {
      // name, dtype, M, K, N, R, bias, write_z, layout, device, fused, block_m, split
      {"fp16 odd shapes backward layout", D::kFloat16, 130, 37, 45, 33, true, true, 2 | 4, h100, true, 128, 1},
      {"fp16 col-major A padded", D::kFloat16, 70, 40, 23, 5, true, true, 1 | 8, a100, true, 128, 1},
      {"fp16 small M splits over N", D::kFloat16, 5, 20, 300, 5, true, true, 0, h100, true, 32, 5},
      {"fp16 exact tiles no bias", D::kFloat16, 64, 16, 64, 16, false, false, 0, h100, true, 64, 1},
      {"fp16 rank 1", D::kFloat16, 33, 19, 17, 1, true, true, 8, h100, true, 64, 1},
      {"fp16 rank 512", D::kFloat16, 40, 24, 70, 512, true, true, 2 | 4, h100, true, 64, 2},
      {"fp16 rank 512 on 64 KiB smem", D::kFloat16, 40, 24, 70, 512, false, true, 0, small_smem, true, 32, 2},
      {"fp16 huge rank falls back", D::kFloat16, 40, 24, 20, 8192, true, true, 0, h100, false, 0, 0},
      {"bf16 two rank chunks split", D::kBFloat16, 130, 40, 150, 130, true, true, 1 | 2 | 4 | 8, dev(8, 8, 163), true, 64, 3},
      {"bf16 odd shapes", D::kBFloat16, 5, 37, 45, 33, true, true, 0, ada, true, 32, 1},
      {"bf16 needs sm80", D::kBFloat16, 5, 37, 45, 33, true, true, 0, turing, false, 0, 0},
      {"fp16 runs on sm75", D::kFloat16, 5, 37, 45, 33, true, true, 0, turing, true, 32, 1},
      {"fp16 K=0 gives bias", D::kFloat16, 20, 0, 30, 4, true, true, 0, h100, true, 32, 1},
      {"fp16 N=0 still writes z", D::kFloat16, 20, 12, 0, 4, true, true, 0, h100, true, 32, 1},
      {"fp32 odd shapes backward layout", D::kFloat32, 130, 37, 45, 33, true, true, 2 | 4, h100, true, 64, 1},
      {"fp32 two rank chunks split", D::kFloat32, 100, 33, 130, 70, true, true, 1 | 8, h100, true, 64, 3},
      {"fp32 M=1", D::kFloat32, 1, 37, 45, 5, true, true, 0, h100, true, 16, 1},
      {"fp32 rank 1 no bias", D::kFloat32, 20, 5, 9, 1, false, false, 1 | 2 | 4, h100, true, 32, 1},
      {"fp32 rank 512 on 99 KiB smem", D::kFloat32, 40, 24, 70, 512, true, true, 2 | 4, ada, true, 32, 2},
      {"fp32 K=0 gives bias", D::kFloat32, 3, 0, 30, 4, true, true, 0, h100, true, 16, 1},
  };
  int failures = 0;
  for (const Case& cs : cases) {
    bool ok = false;
    switch (cs.dtype) {
      case D::kFloat32:
        ok = run_case<float>(cs, 1e-5);
        break;
      case D::kFloat16:
        ok = run_case<__half>(cs, 2e-3);
        break;
      case D::kBFloat16:
        ok = run_case<__nv_bfloat16>(cs, 1.5e-2);
        break;
    }
    failures += ok ? 0 : 1;
  }
  const ChainDeviceInfo h100_inf = dev(9, 132, 227);
  failures += run_inf_case<float>("fp32 inf in x, padded rank", D::kFloat32, 5, h100_inf) ? 0 : 1;
  failures += run_inf_case<__half>("fp16 inf in x, padded rank", D::kFloat16, 5, h100_inf) ? 0 : 1;
  failures +=
      run_inf_case<__nv_bfloat16>("bf16 inf in x, padded rank", D::kBFloat16, 21, h100_inf) ? 0 : 1;
  const size_t total = sizeof(cases) / sizeof(cases[0]) + 3;
  std::printf("%d of %zu cases failed\n", failures, total);
  return failures == 0 ? 0 : 1;
}
