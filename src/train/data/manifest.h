#pragma once
// manifest.json: the table of contents of a prepared data folder. It is written last (atomically),
// so a folder without one is an unfinished `dsv3 prepare`. Loaders trust only shards it lists.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3 {

inline constexpr const char* kManifestFormat = "dsv3-token-shards";
inline constexpr int kManifestVersion = 1;

struct ManifestShard {
  std::string file;  // relative to the data folder
  int64_t documents = 0, tokens = 0;
};

struct ManifestSplit {
  std::vector<ManifestShard> shards;
  int64_t documents = 0, tokens = 0;
};

struct DataManifest {
  int64_t vocab_size = 0;
  uint64_t tokenizer_hash = 0;
  std::string tokenizer_source;  // the tokenizer.json it was made with (informational)
  int64_t bos_id = -1, eos_id = -1;
  bool bos_per_document = false;
  std::map<std::string, ManifestSplit> splits;  // "train", "validation"
  nlohmann::json extra = nlohmann::json::object();  // provenance: inputs, seed, fractions

  nlohmann::json to_json() const;
  static DataManifest from_json(const nlohmann::json& j, const std::string& where);
  // Reads <dir>/manifest.json; a missing file says the folder is not a finished prepare.
  static DataManifest load(const std::string& data_dir);
  void save(const std::string& data_dir) const;  // atomically
  const ManifestSplit& split(const std::string& name, const std::string& where) const;
};

}  // namespace dsv3
