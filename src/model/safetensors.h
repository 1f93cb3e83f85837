#pragma once
// Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
// data. Files are memory-mapped and tensors are views into the mapping (never copied). The
// header is validated completely before any tensor is handed out; a malformed file is refused
// with an Error that names the file and, where one is to blame, the tensor.
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dsv3 {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  size_t begin = 0;  // byte offsets relative to the start of the data section
  size_t end = 0;
};

// Parses and validates a header (the JSON text between the length prefix and the data) for a
// data section of `data_size` bytes. `where` names the file in errors. Exposed for fuzzing.
std::vector<TensorInfo> parse_safetensors_header(std::string_view header_json, size_t data_size,
                                                 const std::string& where,
                                                 std::map<std::string, std::string>* metadata);

// A whole file's layout: where the data section starts and what it holds.
struct SafetensorsLayout {
  std::vector<TensorInfo> tensors;  // in name order
  std::map<std::string, std::string> metadata;
  size_t data_offset = 0;  // byte offset of the data section in the file (8 + header length)
  size_t data_size = 0;
};

// Validates the bytes of a whole safetensors file held in memory (length prefix, header, and
// every tensor's place in the data section). SafetensorsFile::open uses it on the mapping; the
// fuzz target calls it directly. `where` names the file in errors.
SafetensorsLayout parse_safetensors(std::string_view bytes, const std::string& where);

class SafetensorsFile {
 public:
  // Maps and validates the file; throws Error on any problem.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  // A view into the mapping that keeps the file mapped while it lives.
  Tensor get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  std::weak_ptr<SafetensorsFile> self_;
};

// All tensors of a checkpoint: one .safetensors file, or a folder with one file or with shards
// listed in model.safetensors.index.json ({"weight_map": {name: file}}).
class WeightStore {
 public:
  static WeightStore open(const std::string& file_or_dir);
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;
  const TensorInfo& info(const std::string& name) const;
  Tensor get(const std::string& name) const;
  // Like get, but checks the shape and names the tensor and file on a mismatch.
  Tensor get(const std::string& name, const Shape& expected) const;
  const std::string& where() const { return where_; }

 private:
  std::string where_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_of_;
};

// Writes tensors (CPU, any dtype) to `path` atomically: a temporary file beside it, fsync,
// rename, fsync of the folder. A failure (full disk, ...) leaves any earlier file untouched.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dsv3
