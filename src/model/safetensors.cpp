#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

namespace dsv3 {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// A header larger than this is refused before it is read: real checkpoints have headers of a
// few megabytes at most (DeepSeek-V3's largest shard header is well under 1 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Containers nested deeper than this cannot be part of a valid header.
constexpr int kMaxJsonDepth = 8;

std::string errno_text() { return std::strerror(errno); }

// Error messages are one printable line even when a header holds control characters in a name
// or bytes that are not UTF-8 (the JSON parser quotes the offending input).
std::string escape(std::string_view text, bool escape_non_ascii) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    auto u = uint8_t(c);
    if (u < 0x20 || u == 0x7f || (escape_non_ascii && u >= 0x80))
      out += fmt::format("\\x{:02x}", u);
    else
      out += c;
  }
  return out;
}

// Reads a non-negative JSON integer that fits in `limit`; false for anything else (floats,
// negatives, strings, ...).
bool as_count(const json& v, uint64_t limit, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    *out = uint64_t(s);
  } else {
    return false;
  }
  return *out <= limit;
}

std::string supported_dtypes() {
  std::string s;
  for (DType d : {DType::F32, DType::BF16, DType::F16, DType::F8E4M3, DType::I32, DType::I64}) {
    s += (s.empty() ? "" : ", ") + std::string(dtype_name(d));
  }
  return s;
}

TensorInfo parse_entry(const std::string& name, const json& entry, uint64_t data_size,
                       const std::string& where) {
  auto bad = [&](const std::string& what) -> Error {
    return Error(fmt::format("{}: tensor '{}': {}", where, name, what));
  };
  if (!entry.is_object()) throw bad("header entry is not a JSON object");
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw bad(fmt::format("unexpected key '{}' (expected dtype, shape, data_offsets)", key));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) throw bad(fmt::format("missing '{}'", key));
  }

  TensorInfo info;
  info.name = name;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw bad("'dtype' is not a string");
  const std::string& dtype_str = dtype.get_ref<const std::string&>();
  if (!dtype_from_name(dtype_str, &info.dtype))
    throw bad(fmt::format("unsupported dtype '{}' (supported: {})", dtype_str,
                          supported_dtypes()));

  const json& shape = entry["shape"];
  if (!shape.is_array()) throw bad("'shape' is not an array");
  if (shape.size() > size_t(Shape::kMaxDims))
    throw bad(fmt::format("shape has {} dimensions, more than the {} supported", shape.size(),
                          Shape::kMaxDims));
  // The element count is computed in 64 bits with an overflow check; any count whose byte size
  // does not fit the data section is refused below anyway.
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : shape) {
    uint64_t dim = 0;
    if (!as_count(d, uint64_t(std::numeric_limits<int64_t>::max()), &dim))
      throw bad(fmt::format("shape {} has a dimension that is not a non-negative integer",
                            shape.dump()));
    info.shape.push_back(int64_t(dim));
    if (__builtin_mul_overflow(numel, dim, &numel)) overflow = true;
  }
  uint64_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(numel, uint64_t(dtype_size(info.dtype)), &nbytes))
    throw bad(fmt::format("shape {} is too large (its byte size overflows 64 bits)",
                          shape.dump()));
  // A zero dimension makes the tensor empty whatever the others say.
  if (numel == 0) nbytes = 0;

  const json& offsets = entry["data_offsets"];
  uint64_t begin = 0, end = 0;
  if (!offsets.is_array() || offsets.size() != 2 ||
      !as_count(offsets[0], std::numeric_limits<uint64_t>::max(), &begin) ||
      !as_count(offsets[1], std::numeric_limits<uint64_t>::max(), &end))
    throw bad(fmt::format("'data_offsets' {} is not [begin, end] with non-negative integers",
                          offsets.dump()));
  if (begin > end)
    throw bad(fmt::format("data_offsets [{}, {}] end before they begin", begin, end));
  if (end > data_size)
    throw bad(fmt::format("data_offsets [{}, {}] reach past the end of the {}-byte data section",
                          begin, end, data_size));
  if (end - begin != nbytes)
    throw bad(fmt::format("{} x shape {} needs {} bytes but data_offsets [{}, {}] hold {}",
                          dtype_str, info.shape.str(), nbytes, begin, end, end - begin));
  info.begin = size_t(begin);
  info.end = size_t(end);
  return info;
}

}  // namespace

namespace {

std::vector<TensorInfo> parse_header(std::string_view header_json, size_t data_size,
                                     const std::string& where,
                                     std::map<std::string, std::string>* metadata) {
  // nlohmann keeps the last of duplicate keys; a parser callback sees every key, so duplicates
  // (at any level) and absurd nesting are caught here and reported after the parse.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool too_deep = false;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        [[fallthrough]];
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) too_deep = true;
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get_ref<const std::string&>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };

  json header;
  try {
    header = json::parse(header_json.begin(), header_json.end(), callback);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON ({})", where, escape(e.what(), true));
  }
  if (too_deep) fail("{}: header nests JSON deeper than {} levels", where, kMaxJsonDepth);
  if (!duplicate.empty()) fail("{}: header has the key '{}' more than once", where, duplicate);
  if (!header.is_object()) fail("{}: header is not a JSON object", where);

  std::vector<TensorInfo> infos;
  infos.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: __metadata__ is not a JSON object", where);
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          fail("{}: __metadata__ value of '{}' is not a string", where, key);
        if (metadata) (*metadata)[key] = value.get<std::string>();
      }
      continue;
    }
    infos.push_back(parse_entry(name, entry, data_size, where));
  }

  // No two tensors may share a byte. Empty tensors occupy no bytes and are left out; gaps
  // between tensors are allowed (some writers align tensors).
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : infos)
    if (t.end > t.begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    if (b.begin < a.end)
      fail("{}: tensor '{}': data_offsets [{}, {}] overlap those of tensor '{}' [{}, {}]", where,
           b.name, b.begin, b.end, a.name, a.begin, a.end);
  }
  return infos;
}

}  // namespace

std::vector<TensorInfo> parse_safetensors_header(std::string_view header_json, size_t data_size,
                                                 const std::string& where,
                                                 std::map<std::string, std::string>* metadata) {
  try {
    return parse_header(header_json, data_size, where, metadata);
  } catch (const Error& e) {
    throw Error(escape(e.what(), false));
  }
}

SafetensorsLayout parse_safetensors(std::string_view bytes, const std::string& where) {
  if (bytes.size() < 8)
    fail("{}: file is {} bytes, too short for a safetensors header length (8 bytes)", where,
         bytes.size());
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(bytes[size_t(i)]);
  if (header_len > kMaxHeaderBytes)
    fail("{}: header length {} is larger than the {} bytes allowed", where, header_len,
         kMaxHeaderBytes);
  if (header_len > bytes.size() - 8)
    fail("{}: header length {} runs past the end of the {}-byte file (truncated?)", where,
         header_len, bytes.size());
  SafetensorsLayout layout;
  layout.data_offset = 8 + size_t(header_len);
  layout.data_size = bytes.size() - layout.data_offset;
  layout.tensors = parse_safetensors_header(bytes.substr(8, size_t(header_len)),
                                            layout.data_size, where, &layout.metadata);
  return layout;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->self_ = file;
  file->path_ = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string err = errno_text();
    ::close(fd);
    fail("{}: cannot stat: {}", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("{}: file is {} bytes, too short for a safetensors header length (8 bytes)", path, size);
  }
  // A private writable mapping: tensors may be modified in place (copy-on-write pages) without
  // ever touching the file.
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail("{}: cannot map {} bytes: {}", path, size, std::strerror(map_errno));
  file->mapping_ = map;
  file->mapping_size_ = size;

  SafetensorsLayout layout =
      parse_safetensors(std::string_view(static_cast<const char*>(map), size), path);
  file->data_ = static_cast<const char*>(map) + layout.data_offset;
  file->tensors_ = std::move(layout.tensors);
  file->metadata_ = std::move(layout.metadata);
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(mapping_, mapping_size_);
}

bool SafetensorsFile::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("{}: no tensor '{}' in this file", path_, name);
  return tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  char* p = const_cast<char*>(data_) + t.begin;
  // Files written by other tools may place a tensor at an offset that is not a multiple of its
  // element size; such a tensor is copied into aligned memory rather than handed out misaligned.
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(t.dtype) != 0) {
    Tensor copy = Tensor::zeros(t.shape, t.dtype);
    std::memcpy(copy.data(), p, t.end - t.begin);
    return copy;
  }
  std::shared_ptr<const SafetensorsFile> keep = self_.lock();
  return Tensor::view(p, t.shape, t.dtype, Device::CPU,
                      std::const_pointer_cast<SafetensorsFile>(keep));
}

// ---------------------------------------------------------------------------------------------
// WeightStore

WeightStore WeightStore::open(const std::string& file_or_dir) {
  WeightStore store;
  store.where_ = file_or_dir;
  std::error_code ec;
  fs::file_status status = fs::status(file_or_dir, ec);
  if (ec || !fs::exists(status)) fail("{}: no such file or folder", file_or_dir);

  auto add_file = [&](const std::string& path) {
    store.files_.push_back(SafetensorsFile::open(path));
    return store.files_.size() - 1;
  };

  if (!fs::is_directory(status)) {
    size_t f = add_file(file_or_dir);
    for (const TensorInfo& t : store.files_[f]->tensors()) store.file_of_[t.name] = f;
    return store;
  }

  fs::path dir(file_or_dir);
  fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    const std::string where = index_path.string();
    store.where_ = where;
    json index;
    try {
      std::ifstream in(index_path);
      if (!in) fail("{}: cannot open", where);
      index = json::parse(in);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", where, e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: no \"weight_map\" object", where);
    const json& weight_map = index["weight_map"];
    if (weight_map.empty()) fail("{}: \"weight_map\" lists no tensors", where);
    std::map<std::string, size_t> shard_index;
    for (const auto& [name, shard] : weight_map.items()) {
      if (!shard.is_string() || shard.get_ref<const std::string&>().empty())
        fail("{}: tensor '{}': shard file name is not a non-empty string", where, name);
      const std::string& shard_name = shard.get_ref<const std::string&>();
      if (fs::path(shard_name).is_absolute())
        fail("{}: tensor '{}': shard '{}' must be a path relative to the folder", where, name,
             shard_name);
      auto it = shard_index.find(shard_name);
      if (it == shard_index.end()) {
        fs::path shard_path = dir / shard_name;
        if (!fs::exists(shard_path, ec))
          fail("{}: tensor '{}': shard file '{}' does not exist", where, name,
               shard_path.string());
        it = shard_index.emplace(shard_name, add_file(shard_path.string())).first;
      }
      const SafetensorsFile& f = *store.files_[it->second];
      if (!f.has(name))
        fail("{}: tensor '{}' is listed in {} but is not in that file", f.path(), name, where);
      store.file_of_[name] = it->second;
    }
    return store;
  }

  fs::path single = dir / "model.safetensors";
  if (!fs::exists(single, ec))
    fail("{}: folder has neither model.safetensors nor model.safetensors.index.json",
         file_or_dir);
  store.where_ = single.string();
  size_t f = add_file(single.string());
  for (const TensorInfo& t : store.files_[f]->tensors()) store.file_of_[t.name] = f;
  return store;
}

bool WeightStore::has(const std::string& name) const { return file_of_.count(name) != 0; }

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(file_of_.size());
  for (const auto& [name, f] : file_of_) out.push_back(name);
  return out;
}

const TensorInfo& WeightStore::info(const std::string& name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) fail("{}: no tensor '{}' in the checkpoint", where_, name);
  return files_[it->second]->info(name);
}

Tensor WeightStore::get(const std::string& name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) fail("{}: no tensor '{}' in the checkpoint", where_, name);
  return files_[it->second]->get(name);
}

Tensor WeightStore::get(const std::string& name, const Shape& expected) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) fail("{}: no tensor '{}' in the checkpoint", where_, name);
  const SafetensorsFile& f = *files_[it->second];
  const TensorInfo& t = f.info(name);
  if (t.shape != expected)
    fail("{}: tensor '{}' has shape {}, expected {}", f.path(), name, t.shape.str(),
         expected.str());
  return f.get(name);
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

void write_all(int fd, const void* data, size_t size, const std::string& where) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, std::min(size, size_t(1) << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", where, errno_text());
    }
    p += n;
    size -= size_t(n);
  }
}

// Removes the temporary file unless the write got as far as renaming it.
struct TempFile {
  std::string path;
  int fd = -1;
  bool renamed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!renamed && !path.empty()) ::unlink(path.c_str());
  }
};

}  // namespace

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Tensors are laid out by decreasing element size so that, with the header padded to a
  // multiple of 8 bytes, every tensor is aligned to its element size with no gaps between them
  // (readers such as the reference safetensors library refuse gaps).
  std::vector<size_t> order(tensors.size());
  std::set<std::string> seen;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    if (name == "__metadata__") fail("{}: '__metadata__' cannot name a tensor", path);
    if (!seen.insert(name).second) fail("{}: tensor '{}' given twice", path, name);
    if (t.device() != Device::CPU)
      fail("{}: tensor '{}' is on {}; copy it to the CPU before saving", path, name,
           device_name(t.device()));
    if (t.data() == nullptr && t.nbytes() > 0)
      fail("{}: tensor '{}' has no data", path, name);
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });

  json header = json::object();
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    json shape = json::array();
    for (int d = 0; d < t.ndim(); ++d) shape.push_back(t.dim(d));
    header[name] = {{"dtype", std::string(dtype_name(t.dtype()))},
                    {"shape", shape},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  fs::path target(path);
  fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  TempFile tmp;
  std::string pattern = path + ".tmp.XXXXXX";
  tmp.fd = ::mkstemp(pattern.data());
  if (tmp.fd < 0) fail("{}: cannot create a temporary file beside it: {}", path, errno_text());
  tmp.path = pattern;
  if (::fchmod(tmp.fd, 0644) != 0) fail("{}: cannot set permissions: {}", tmp.path, errno_text());

  write_all(tmp.fd, prefix, 8, tmp.path);
  write_all(tmp.fd, text.data(), text.size(), tmp.path);
  for (size_t i : order) {
    const Tensor& t = tensors[i].second;
    if (t.nbytes() > 0) write_all(tmp.fd, t.data(), t.nbytes(), tmp.path);
  }
  if (::fsync(tmp.fd) != 0) fail("{}: fsync failed: {}", tmp.path, errno_text());
  int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0) fail("{}: close failed: {}", tmp.path, errno_text());
  if (::rename(tmp.path.c_str(), path.c_str()) != 0)
    fail("{}: cannot rename {} over it: {}", path, tmp.path, errno_text());
  tmp.renamed = true;

  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail("{}: cannot open its folder to sync it: {}", path, errno_text());
  int rc = ::fsync(dfd);
  int sync_errno = errno;
  ::close(dfd);
  if (rc != 0) fail("{}: fsync of its folder failed: {}", path, std::strerror(sync_errno));
}

}  // namespace dsv3
