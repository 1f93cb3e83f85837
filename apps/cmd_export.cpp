// `dsv3 export --gguf OUT.gguf DIR`: writes a checkpoint as a GGUF file for llama.cpp's deepseek2
// architecture (see src/infer/gguf_export.h).
#include <cstdio>

#include "command.h"
#include "infer/gguf_export.h"

namespace {
struct Options {
  std::string gguf, in, dtype = "bf16";
  bool no_vocab = false;
};

dsv3::app::Registrar reg(
    "export", "Export a checkpoint to GGUF for llama.cpp (deepseek2; MTP layers are left out)",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("--gguf", o->gguf, "Output GGUF file")->required();
      sub.add_option("in", o->in, "Checkpoint folder (config.json + safetensors)")->required();
      sub.add_option("--dtype", o->dtype, "Matrix type in the file: bf16 (default) or f32")
          ->check(CLI::IsMember({"bf16", "f32"}));
      sub.add_flag("--no-vocab", o->no_vocab,
                   "Leave tokenizer.json out (write llama.cpp's id-only \"none\" vocabulary)");
      return [o]() {
        using namespace dsv3;
        infer::GgufExportOptions eo;
        eo.dtype = o->dtype == "f32" ? gguf::TensorType::F32 : gguf::TensorType::BF16;
        eo.vocab = !o->no_vocab;
        const infer::GgufExportReport r = infer::export_gguf(o->in, o->gguf, eo);
        std::printf("wrote %s (deepseek2, %s, %zu tensors, %.1f MiB; tokenizer: %s)\n",
                    o->gguf.c_str(), o->dtype.c_str(), r.tensors, double(r.bytes) / 1048576.0,
                    r.tokenizer.c_str());
        if (r.mtp_layers_skipped > 0)
          std::printf("left out %d MTP layer(s): llama.cpp's deepseek2 does not run them\n",
                      r.mtp_layers_skipped);
        return 0;
      };
    });
}  // namespace
