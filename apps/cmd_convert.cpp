// `dsv3 convert --to bf16|fp8|f32 IN_DIR OUT_DIR`: converts a checkpoint between BF16 and
// DeepSeek's block-scaled FP8 format (see src/infer/convert.h).
#include <cstdio>

#include "command.h"
#include "core/threads.h"
#include "infer/convert.h"

namespace {
struct Options {
  std::string to, in, out;
  double shard_gib = 4.0;
  int threads = 0;
};

dsv3::app::Registrar reg(
    "convert", "Convert a checkpoint between BF16 and block-scaled FP8 (128x128 scales)",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("--to", o->to, "Target format: bf16, fp8 or f32")
          ->required()
          ->check(CLI::IsMember({"bf16", "fp8", "f32"}));
      sub.add_option("in", o->in, "Input checkpoint folder")->required();
      sub.add_option("out", o->out, "Output folder")->required();
      sub.add_option("--shard-gib", o->shard_gib, "Largest shard file in GiB (default 4)");
      dsv3::app::add_threads_option(sub, o->threads);
      return [o]() {
        dsv3::set_num_threads(o->threads);
        DSV3_CHECK(o->shard_gib > 0, "convert: --shard-gib must be > 0");
        dsv3::infer::convert_checkpoint(o->in, o->out, dsv3::infer::parse_checkpoint_format(o->to),
                                        size_t(o->shard_gib * double(size_t(1) << 30)));
        std::printf("wrote %s (%s)\n", o->out.c_str(), o->to.c_str());
        return 0;
      };
    });
}  // namespace
