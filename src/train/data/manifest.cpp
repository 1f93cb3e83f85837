#include "train/data/manifest.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "train/data/atomic_file.h"
#include "train/data/hash.h"

namespace dsv3 {

using nlohmann::json;

json DataManifest::to_json() const {
  json splits_json = json::object();
  for (const auto& [name, split] : splits) {
    json shards = json::array();
    for (const auto& s : split.shards) shards.push_back({{"file", s.file}, {"documents", s.documents}, {"tokens", s.tokens}});
    splits_json[name] = {{"documents", split.documents}, {"tokens", split.tokens}, {"shards", shards}};
  }
  return {{"format", kManifestFormat},
          {"version", kManifestVersion},
          {"vocab_size", vocab_size},
          {"tokenizer",
           {{"hash", hash_to_hex(tokenizer_hash)},
            {"source", tokenizer_source},
            {"bos_id", bos_id < 0 ? json(nullptr) : json(bos_id)},
            {"eos_id", eos_id < 0 ? json(nullptr) : json(eos_id)},
            {"bos_per_document", bos_per_document}}},
          {"splits", splits_json},
          {"provenance", extra}};
}

DataManifest DataManifest::from_json(const json& j, const std::string& where) {
  DataManifest m;
  try {
    DSV3_CHECK(j.is_object() && j.value("format", "") == kManifestFormat, "{}: not a dsv3 data manifest", where);
    int version = j.at("version").get<int>();
    DSV3_CHECK(version == kManifestVersion, "{}: manifest version {} is not supported (this build reads {})", where,
               version, kManifestVersion);
    m.vocab_size = j.at("vocab_size").get<int64_t>();
    DSV3_CHECK(m.vocab_size > 0, "{}: vocab_size must be positive", where);
    const json& t = j.at("tokenizer");
    m.tokenizer_hash = hash_from_hex(t.at("hash").get<std::string>(), where + " tokenizer.hash");
    m.tokenizer_source = t.value("source", "");
    m.bos_id = t.at("bos_id").is_null() ? -1 : t.at("bos_id").get<int64_t>();
    m.eos_id = t.at("eos_id").is_null() ? -1 : t.at("eos_id").get<int64_t>();
    m.bos_per_document = t.at("bos_per_document").get<bool>();
    for (const auto& [name, s] : j.at("splits").items()) {
      ManifestSplit split;
      split.documents = s.at("documents").get<int64_t>();
      split.tokens = s.at("tokens").get<int64_t>();
      int64_t documents = 0, tokens = 0;
      for (const auto& sh : s.at("shards")) {
        ManifestShard shard{sh.at("file").get<std::string>(), sh.at("documents").get<int64_t>(),
                            sh.at("tokens").get<int64_t>()};
        DSV3_CHECK(!shard.file.empty() && shard.file.find('/') == std::string::npos && shard.file[0] != '.',
                   "{}: shard name \"{}\" must be a plain file name in the data folder", where, shard.file);
        documents += shard.documents;
        tokens += shard.tokens;
        split.shards.push_back(std::move(shard));
      }
      DSV3_CHECK(documents == split.documents && tokens == split.tokens,
                 "{}: split \"{}\" totals ({} documents, {} tokens) disagree with its shards ({}, {})", where, name,
                 split.documents, split.tokens, documents, tokens);
      m.splits[name] = std::move(split);
    }
    if (j.contains("provenance")) m.extra = j.at("provenance");
  } catch (const json::exception& e) {
    fail("{}: malformed manifest: {}", where, e.what());
  }
  return m;
}

DataManifest DataManifest::load(const std::string& data_dir) {
  const std::string path = (std::filesystem::path(data_dir) / "manifest.json").string();
  DSV3_CHECK(std::filesystem::is_directory(data_dir), "{}: no such data folder", data_dir);
  std::ifstream in(path, std::ios::binary);
  DSV3_CHECK(in.good(), "{}: missing; {} is not a finished `dsv3 prepare` output", path, data_dir);
  std::stringstream text;
  text << in.rdbuf();
  json j;
  try {
    j = json::parse(text.str());
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  return from_json(j, path);
}

void DataManifest::save(const std::string& data_dir) const {
  write_file_atomically((std::filesystem::path(data_dir) / "manifest.json").string(),
                        to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

const ManifestSplit& DataManifest::split(const std::string& name, const std::string& where) const {
  auto it = splits.find(name);
  DSV3_CHECK(it != splits.end(), "{}: no split \"{}\" (the manifest has train and validation)", where, name);
  return it->second;
}

}  // namespace dsv3
