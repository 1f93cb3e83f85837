// `dsv3 bench attention`: times causal attention in the lse form (ops::attention_forward_lse,
// then ops::attention_backward_lse) at given shapes, forward alone and forward + backward. The
// other side of bench/attention_vs_sdpa.sh, which times PyTorch's scaled_dot_product_attention
// at the same shapes: one `key=value` line per shape, so a script can read it. --dtype bf16
// runs the BF16 tensor-core kernels (q, k, v, d_o and o in BF16; lse and gradients float32).
//
// On CUDA each repeat is timed with CUDA events around it (device time, not the host clock);
// on the CPU with the host clock. The median over the repeats after the warm-up is reported.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "command.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/threads.h"
#include "kernels/op_cases.h"
#include "kernels/ops.h"

namespace {
struct Options {
  std::string device = "cuda";
  std::string dtype = "f32";
  int64_t batch = 1, heads = 16, qk_dim = 192, v_dim = 128;
  std::string seqs = "1024,2048,4096";
  int warmup = 3, reps = 10, threads = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

dsv3::app::Registrar reg(
    "bench attention",
    "Time causal attention (lse form) forward and forward+backward at given shapes",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("--device", o->device, "cuda or cpu (default cuda)");
      sub.add_option("--dtype", o->dtype,
                     "f32 or bf16: q, k, v, d_o (and o) in that dtype; lse and the gradients are "
                     "float32 either way (default f32)");
      sub.add_option("--batch", o->batch, "Batch size (default 1)")->check(dsv3::app::at_least(1));
      sub.add_option("--heads", o->heads, "Heads (default 16)")->check(dsv3::app::at_least(1));
      sub.add_option("--seq", o->seqs,
                     "Sequence lengths, comma-separated (default 1024,2048,4096)");
      sub.add_option("--qk-dim", o->qk_dim, "q/k head dim (default 192)")
          ->check(dsv3::app::at_least(1));
      sub.add_option("--v-dim", o->v_dim, "v head dim (default 128)")
          ->check(dsv3::app::at_least(1));
      sub.add_option("--warmup", o->warmup, "Untimed calls first (default 3)")
          ->check(dsv3::app::at_least(0));
      sub.add_option("--reps", o->reps, "Timed repeats; the median is reported (default 10)")
          ->check(dsv3::app::at_least(1));
      dsv3::app::add_threads_option(sub, o->threads);
      return [o]() {
        using namespace dsv3;
        const bool cuda = o->device == "cuda";
        DSV3_CHECK(cuda || o->device == "cpu", "bench attention: --device is cuda or cpu, not {}",
                   o->device);
        DSV3_CHECK(o->dtype == "f32" || o->dtype == "bf16",
                   "bench attention: --dtype is f32 or bf16, not {}", o->dtype);
        DSV3_CHECK(cuda || o->dtype == "f32", "bench attention: --dtype bf16 needs --device cuda");
        const DType dt = o->dtype == "bf16" ? DType::BF16 : DType::F32;
        // Inputs in the benchmarked dtype: rounded on the host, then moved to the device.
        auto input = [&](const Tensor& t) {
          if (dt == DType::F32) return t.to(cuda ? Device::CUDA : Device::CPU);
          Tensor b = Tensor::zeros(t.shape(), DType::BF16);
          convert_from_f32(t.f32(), DType::BF16, b.data(), size_t(t.numel()));
          return b.to(Device::CUDA);
        };
        if (cuda) device::require_cuda("bench attention");
        set_num_threads(o->threads);
        const Device dev = cuda ? Device::CUDA : Device::CPU;
        // Seconds of one call of f: device time on CUDA, host time on the CPU.
        auto time_ms = [&](const std::function<void()>& f) {
          if (cuda) return device::cuda_elapsed_ms(f);
          auto t0 = std::chrono::steady_clock::now();
          f();
          return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
              .count();
        };
        auto measure = [&](const std::function<void()>& f) {
          for (int i = 0; i < o->warmup; ++i) f();
          device::synchronize(dev);
          std::vector<double> ms;
          for (int i = 0; i < o->reps; ++i) ms.push_back(time_ms(f));
          return median(ms);
        };
        const int64_t b = o->batch, h = o->heads, dq = o->qk_dim, dv = o->v_dim;
        const float scale = float(1.0 / std::sqrt(double(dq)));
        for (int64_t t : app::parse_int_list("--seq", o->seqs, 1)) {
          optest::Rng rng{uint64_t(t)};
          const Tensor q = input(optest::randn({b, h, t, dq}, rng));
          const Tensor k = input(optest::randn({b, h, t, dq}, rng));
          const Tensor v = input(optest::randn({b, h, t, dv}, rng));
          const Tensor d_o = input(optest::randn({b, h, t, dv}, rng));
          Tensor out = Tensor::zeros({b, h, t, dv}, dt, dev);
          Tensor lse = Tensor::zeros({b, h, t}, DType::F32, dev);
          Tensor d_q = Tensor::zeros(q.shape(), DType::F32, dev);
          Tensor d_k = Tensor::zeros(k.shape(), DType::F32, dev);
          Tensor d_v = Tensor::zeros(v.shape(), DType::F32, dev);
          auto forward = [&] { ops::attention_forward_lse(q, k, v, scale, lse, out); };
          const double fwd_ms = measure(forward);
          const double fwd_bwd_ms = measure([&] {
            forward();
            ops::attention_backward_lse(q, k, v, out, lse, d_o, scale, d_q, d_k, d_v);
          });
          // Causal FLOPs as attention papers count them: 2 (t^2 / 2) (dq + dv) per head forward,
          // 2.5 times that backward.
          const double fwd_flops = double(b) * h * t * t * (dq + dv);
          std::printf(
              "attention device=%s dtype=%s batch=%lld heads=%lld seq=%lld qk_dim=%lld v_dim=%lld "
              "fwd_ms=%.4f fwd_bwd_ms=%.4f fwd_tflops=%.3f fwd_bwd_tflops=%.3f\n",
              o->device.c_str(), o->dtype.c_str(), (long long)b, (long long)h, (long long)t, (long long)dq,
              (long long)dv, fwd_ms, fwd_bwd_ms, fwd_flops / fwd_ms * 1e-9,
              3.5 * fwd_flops / fwd_bwd_ms * 1e-9);
          std::fflush(stdout);
        }
        return 0;
      };
    });
}  // namespace
