// `dsv3 parity DIR...`: checks dsv3 against reference fixtures and prints the table.
#include <cstdio>

#include "command.h"
#include "core/threads.h"
#include "infer/decode_parity.h"
#include "model/parity.h"

namespace {
struct Options {
  std::vector<std::string> dirs;
  bool failures_only = false;
  int threads = 0;
  std::string dump;
  bool optimizer = false;
  bool no_decode = false;
  dsv3::Device device = dsv3::Device::CPU;
  std::string precision = "f32";
};

dsv3::app::Registrar reg(
    "parity", "Check logits, losses, routing, gradients and an optimizer step against fixtures",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("dirs", o->dirs,
                     "Fixture folders (config.json, model/batch/expected.safetensors)")
          ->required();
      sub.add_flag("--failures-only", o->failures_only, "Print only the failing rows");
      sub.add_option(
          "--dump", o->dump,
          "Write the computed logits and gradients to this safetensors file (one fixture)");
      sub.add_flag("--optimizer", o->optimizer,
                   "Also check grad_norm, one AdamW step and the bias update");
      sub.add_flag("--no-decode", o->no_decode,
                   "Skip the inference checks (token-by-token decode through the latent cache)");
      dsv3::app::add_threads_option(sub, o->threads);
      dsv3::app::add_device_option(sub, o->device);
      sub.add_option("--precision", o->precision,
                     "f32 (default: the fixtures' tolerances), f64 (the whole step in float64 "
                     "through the reference kernels, tighter tolerances; cpu) or bf16 (cuda: "
                     "mixed precision, wider documented tolerances)")
          ->check(CLI::IsMember({"f32", "f64", "bf16"}));
      return [o]() {
        dsv3::set_num_threads(o->threads);
        bool ok = true;
        for (const auto& dir : o->dirs) {
          const dsv3::DType precision = o->precision == "f64"
                                            ? dsv3::DType::F64
                                            : dsv3::app::resolve_precision(o->precision, o->device);
          dsv3::ParityReport r = dsv3::run_parity(dir, o->dump, o->optimizer, o->device, precision);
          // The decode checks run the inference engine on the same device as the model.
          if (!o->no_decode) dsv3::infer::add_decode_parity(dir, r, o->device);
          std::fputs(r.table(o->failures_only).c_str(), stdout);
          ok &= r.all_pass();
        }
        return ok ? 0 : 1;
      };
    });
}  // namespace
