#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "model/safetensors.h"
#include "train/data/atomic_file.h"

namespace dsv3 {

namespace fs = std::filesystem;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", (long long)step);
  return buf;
}

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  DSV3_CHECK(in.good(), "{}: cannot read", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step,
                            const CheckpointContents& c, int keep_last) {
  DSV3_CHECK(c.weights != nullptr, "save_checkpoint: no weights");
  const fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = step_name(step);
  const fs::path final_dir = root / name;
  const fs::path tmp = root / ("." + name + ".tmp");
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp / "trainer_state");
    // The model, as Hugging Face names it.
    nlohmann::json config = c.weights->config().to_json();
    config["torch_dtype"] = "float32";
    write_file_atomically((tmp / "config.json").string(), config.dump(2) + "\n");
    auto named = c.weights->named_tensors();
    for (auto& [name, t] : named) t = t.to(Device::CPU);  // a GPU run's weights: host copies
    write_safetensors((tmp / "model.safetensors").string(), named, {{"format", "pt"}});
    if (!c.tokenizer_dir.empty()) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        fs::path src = fs::path(c.tokenizer_dir) / f;
        if (fs::exists(src)) write_file_atomically((tmp / f).string(), read_file(src));
      }
    }
    // The training state.
    if (c.optimizer) {
      std::vector<std::pair<std::string, Tensor>> moments;
      auto& params = const_cast<ModelWeights*>(c.weights)->params();
      auto& m = const_cast<AdamW*>(c.optimizer)->first_moments();
      auto& v = const_cast<AdamW*>(c.optimizer)->second_moments();
      for (size_t i = 0; i < params.size(); ++i) {
        moments.emplace_back("exp_avg." + params[i].name, m[i].to(Device::CPU));
        moments.emplace_back("exp_avg_sq." + params[i].name, v[i].to(Device::CPU));
      }
      write_safetensors((tmp / "trainer_state" / "optimizer.safetensors").string(), moments);
    }
    nlohmann::json state = c.state;
    state["step"] = step;
    if (c.optimizer) state["optimizer_steps"] = c.optimizer->steps();
    write_file_atomically((tmp / "trainer_state" / "state.json").string(), state.dump(2) + "\n");
    fsync_path(tmp / "trainer_state");
    fsync_path(tmp);
    // Publish: rename the finished folder into place, then move the pointer.
    fs::remove_all(final_dir, ec);
    fs::rename(tmp, final_dir);
    fsync_path(root);
    write_file_atomically((root / "latest").string(), name + "\n");
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    fail("saving checkpoint {} failed (the previous checkpoint is intact): {}",
         final_dir.string(), e.what());
  }
  // Keep the newest `keep_last` complete checkpoints.
  if (keep_last > 0) {
    std::vector<std::string> steps;
    for (const auto& entry : fs::directory_iterator(root))
      if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0)
        steps.push_back(entry.path().filename().string());
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + size_t(keep_last) < steps.size(); ++i)
      fs::remove_all(root / steps[i], ec);
  }
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::exists(root)) return std::nullopt;
  // The pointer names the newest published folder; fall back to scanning if it is missing.
  if (fs::exists(root / "latest")) {
    std::string name = read_file(root / "latest");
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    if (fs::is_directory(root / name)) return (root / name).string();
  }
  std::vector<std::string> steps;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0)
      steps.push_back(entry.path().filename().string());
  if (steps.empty()) return std::nullopt;
  std::sort(steps.begin(), steps.end());
  return (root / steps.back()).string();
}

void load_checkpoint(const std::string& dir, ModelWeights& weights, AdamW* optimizer,
                     nlohmann::json* state) {
  const fs::path p(dir);
  ModelConfig saved = ModelConfig::load(dir);
  nlohmann::json a = saved.to_json(), b = weights.config().to_json();
  for (auto* j : {&a, &b}) j->erase("torch_dtype");
  if (a != b) {
    std::string key;
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!a.contains(it.key()) || a[it.key()] != it.value()) {
        key = it.key();
        break;
      }
    fail("{}: the checkpoint is from a different model config (key \"{}\": checkpoint {}, run {})",
         dir, key, a.contains(key) ? a[key].dump() : "absent", b[key].dump());
  }
  weights.load(WeightStore::open((p / "model.safetensors").string()));
  if (optimizer) {
    WeightStore moments = WeightStore::open((p / "trainer_state" / "optimizer.safetensors").string());
    auto& params = weights.params();
    for (size_t i = 0; i < params.size(); ++i) {
      const Shape& shape = params[i].param->value.shape();
      Tensor m = moments.get("exp_avg." + params[i].name, shape);
      Tensor v = moments.get("exp_avg_sq." + params[i].name, shape);
      optimizer->first_moments()[i].copy_from(m);
      optimizer->second_moments()[i].copy_from(v);
    }
  }
  if (state) {
    try {
      *state = nlohmann::json::parse(read_file(p / "trainer_state" / "state.json"));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: malformed trainer_state/state.json: {}", dir, e.what());
    }
    if (optimizer && state->contains("optimizer_steps"))
      optimizer->set_steps((*state)["optimizer_steps"].get<int64_t>());
  }
}

}  // namespace dsv3
