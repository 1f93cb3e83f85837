#include "infer/convert.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include <fmt/format.h>

#include "model/config.h"
#include "model/safetensors.h"

namespace dsv3::infer {

namespace fs = std::filesystem;

CheckpointFormat parse_checkpoint_format(const std::string& name) {
  if (name == "bf16") return CheckpointFormat::BF16;
  if (name == "fp8") return CheckpointFormat::FP8;
  if (name == "f32") return CheckpointFormat::F32;
  fail("checkpoint format '{}' is not supported (bf16, fp8 or f32)", name);
}

std::pair<Tensor, Tensor> quantize_fp8_blocks(const float* w, int64_t rows, int64_t cols,
                                              int64_t block) {
  const int64_t br = (rows + block - 1) / block, bc = (cols + block - 1) / block;
  Tensor q = Tensor::zeros({rows, cols}, DType::F8E4M3);
  Tensor scale = Tensor::zeros({br, bc});
  uint8_t* qp = static_cast<uint8_t*>(q.data());
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < br * bc; ++b) {
    const int64_t r0 = (b / bc) * block, c0 = (b % bc) * block;
    const int64_t r1 = std::min(rows, r0 + block), c1 = std::min(cols, c0 + block);
    float amax = 0.0f;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
    const float s = amax > 0.0f ? amax / 448.0f : 1.0f;
    scale.f32()[b] = s;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) qp[r * cols + c] = f32_to_f8e4m3(w[r * cols + c] / s);
  }
  return {q, scale};
}

namespace {

bool fp8_candidate(const std::string& name, const Shape& shape) {
  return shape.ndim() == 2 && name.find("_proj") != std::string::npos &&
         name.find("eh_proj") == std::string::npos;
}

// What one source tensor becomes in the output: (name, tensor) pairs.
std::vector<std::pair<std::string, Tensor>> encode(const std::string& name, const Tensor& f32,
                                                   CheckpointFormat to, int64_t block) {
  std::vector<std::pair<std::string, Tensor>> out;
  if (to == CheckpointFormat::FP8 && fp8_candidate(name, f32.shape())) {
    auto [q, s] = quantize_fp8_blocks(f32.f32(), f32.dim(0), f32.dim(1), block);
    out.emplace_back(name, q);
    out.emplace_back(name + "_scale_inv", s);
    return out;
  }
  if (to == CheckpointFormat::F32 || f32.ndim() < 2) {
    out.emplace_back(name, f32);
    return out;
  }
  Tensor b = Tensor::zeros(f32.shape(), DType::BF16);
  convert_from_f32(f32.f32(), DType::BF16, b.data(), size_t(f32.numel()));
  out.emplace_back(name, b);
  return out;
}

size_t encoded_bytes(const std::string& name, const Shape& shape, CheckpointFormat to,
                     int64_t block) {
  const size_t n = size_t(shape.numel());
  if (to == CheckpointFormat::FP8 && fp8_candidate(name, shape))
    return n + size_t((shape[0] + block - 1) / block * ((shape[1] + block - 1) / block)) * 4;
  if (to == CheckpointFormat::F32 || shape.ndim() < 2) return n * 4;
  return n * 2;
}

struct Entry {
  std::string name;
  Shape shape;
};

// Plans shards by size, then materializes and writes one shard at a time.
void write_sharded(const fs::path& out, const std::vector<Entry>& entries,
                   const std::function<Tensor(const Entry&)>& load_f32, CheckpointFormat to,
                   int64_t block, size_t shard_bytes) {
  std::vector<std::vector<size_t>> shards(1);
  size_t current = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    size_t b = encoded_bytes(entries[i].name, entries[i].shape, to, block);
    if (current > 0 && current + b > shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += b;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1
                                 ? std::string("model.safetensors")
                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1,
                                               shards.size());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (size_t i : shards[s])
      for (auto& t : encode(entries[i].name, load_f32(entries[i]), to, block)) {
        weight_map[t.first] = file;
        tensors.push_back(std::move(t));
      }
    write_safetensors((out / file).string(), tensors, {{"format", "pt"}});
  }
  if (shards.size() > 1) {
    nlohmann::json index;
    index["metadata"] = nlohmann::json::object();
    index["weight_map"] = weight_map;
    std::ofstream f(out / "model.safetensors.index.json");
    f << index.dump(2) << "\n";
    DSV3_CHECK(f.good(), "{}: cannot write the shard index", out.string());
  }
}

void write_config(const fs::path& out, nlohmann::json config, CheckpointFormat to, int64_t block) {
  if (to == CheckpointFormat::FP8) {
    config["quantization_config"] = {{"quant_method", "fp8"},
                                     {"fmt", "e4m3"},
                                     {"activation_scheme", "dynamic"},
                                     {"weight_block_size", {block, block}}};
  } else {
    config.erase("quantization_config");
  }
  config["torch_dtype"] = to == CheckpointFormat::F32 ? "float32" : "bfloat16";
  std::ofstream f(out / "config.json");
  f << config.dump(2) << "\n";
  DSV3_CHECK(f.good(), "{}: cannot write config.json", out.string());
}

}  // namespace

void write_checkpoint(const std::string& out_dir, nlohmann::json config,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      CheckpointFormat to, size_t shard_bytes) {
  fs::create_directories(out_dir);
  std::vector<Entry> entries;
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, t] : tensors) {
    entries.push_back({name, t.shape()});
    by_name[name] = t;
  }
  write_sharded(out_dir, entries, [&](const Entry& e) { return by_name.at(e.name); }, to, 128,
                shard_bytes);
  write_config(out_dir, std::move(config), to, 128);
}

void convert_checkpoint(const std::string& in_dir, const std::string& out_dir,
                        CheckpointFormat to, size_t shard_bytes) {
  std::error_code ec;
  DSV3_CHECK(fs::is_directory(in_dir, ec), "convert: {} is not a checkpoint folder", in_dir);
  DSV3_CHECK(fs::exists(fs::path(in_dir) / "config.json", ec), "convert: {} has no config.json",
             in_dir);
  DSV3_CHECK(!fs::exists(out_dir, ec) || !fs::equivalent(in_dir, out_dir, ec),
             "convert: the output folder must differ from the input folder");
  const ModelConfig c = ModelConfig::load(in_dir);
  nlohmann::json raw;
  {
    std::ifstream f(fs::path(in_dir) / "config.json");
    raw = nlohmann::json::parse(f);
  }
  WeightStore store = WeightStore::open(in_dir);
  std::vector<Entry> entries;
  for (const std::string& name : store.names()) {
    if (name.size() > 10 && name.compare(name.size() - 10, 10, "_scale_inv") == 0) continue;
    const TensorInfo& info = store.info(name);
    DSV3_CHECK(info.dtype != DType::I32 && info.dtype != DType::I64,
               "convert: tensor {} has integer dtype {}", name, dtype_name(info.dtype));
    entries.push_back({name, info.shape});
  }
  DSV3_CHECK(c.fp8_block_rows == c.fp8_block_cols,
             "convert: FP8 blocks of {}x{} are not supported (square blocks only)",
             c.fp8_block_rows, c.fp8_block_cols);
  const int64_t block = c.fp8_block_rows;
  auto load_f32 = [&](const Entry& e) -> Tensor {
    Tensor src = store.get(e.name);
    if (src.dtype() != DType::F8E4M3) return src.to_f32();
    const std::string scale_name = e.name + "_scale_inv";
    DSV3_CHECK(store.has(scale_name) && e.shape.ndim() == 2, "{}: FP8 tensor {} has no {}",
               store.where(), e.name, scale_name);
    const int64_t rows = e.shape[0], cols = e.shape[1];
    const int64_t bc = (cols + block - 1) / block;
    Tensor scale = store.get(scale_name, Shape{(rows + block - 1) / block, bc}).to_f32();
    Tensor out = Tensor::zeros(e.shape);
    const uint8_t* q = static_cast<const uint8_t*>(src.data());
    for (int64_t r = 0; r < rows; ++r)
      dequantize_fp8_row(q + r * cols, scale.f32() + (r / block) * bc, cols, block,
                         out.f32() + r * cols);
    return out;
  };
  fs::create_directories(out_dir);
  write_sharded(out_dir, entries, load_f32, to, block, shard_bytes);
  write_config(out_dir, raw, to, block);
  for (const auto& f : fs::directory_iterator(in_dir)) {
    const std::string n = f.path().filename().string();
    if (n == "config.json" || n.find(".safetensors") != std::string::npos) continue;
    if (f.is_regular_file())
      fs::copy_file(f.path(), fs::path(out_dir) / n, fs::copy_options::overwrite_existing);
  }
}

}  // namespace dsv3::infer
