// `dsv3 init-model CONFIG OUT_DIR`: a randomly initialised checkpoint of a config (for
// benchmarks and tests): normal(0, std) matrices, unit norms, zero biases.
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "command.h"
#include "core/threads.h"
#include "infer/convert.h"
#include "model/weights.h"

namespace {
struct Options {
  std::string config, out, dtype = "bf16";
  uint64_t seed = 1;
  float std = 0.02f;
};

dsv3::app::Registrar reg(
    "init-model", "Write a randomly initialised checkpoint for a config.json", [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("config", o->config, "config.json")->required();
      sub.add_option("out", o->out, "Output folder")->required();
      sub.add_option("--dtype", o->dtype, "bf16 (default), fp8 or f32")
          ->check(CLI::IsMember({"bf16", "fp8", "f32"}));
      sub.add_option("--seed", o->seed, "Random seed");
      sub.add_option("--std", o->std, "Standard deviation of the matrices (default 0.02)");
      return [o]() {
        using namespace dsv3;
        ModelConfig c = ModelConfig::load(o->config);
        nlohmann::json raw;
        {
          std::ifstream f(o->config);
          raw = nlohmann::json::parse(f);
        }
        auto w = std::make_unique<ModelWeights>(c);
        w->init_random(o->seed, o->std);
        infer::write_checkpoint(o->out, raw, w->named_tensors(),
                                infer::parse_checkpoint_format(o->dtype));
        std::printf("wrote %s (%lld parameters, %s)\n", o->out.c_str(), c.parameter_count(),
                    o->dtype.c_str());
        return 0;
      };
    });
}  // namespace
