#pragma once
// Writing GGUF version 3, the model file format of llama.cpp and ggml. Everything is
// little-endian:
//   header       "GGUF" (u32 0x46554747), u32 version = 3, u64 tensor count, u64 key-value count
//   key-values   key (string), u32 value type, value. A string is a u64 byte count and the UTF-8
//                bytes; an array is a u32 element type, a u64 count and the elements.
//   tensor infos name (string), u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset of the
//                tensor's bytes from the start of the data section
//   padding      zeros up to a multiple of the alignment (`general.alignment`, 32 by default)
//   data         every tensor at its offset, a multiple of the alignment, zero padding between
//                tensors and after the last one.
// ne[0] is the contiguous (innermost) dimension: a row-major [rows, cols] matrix has
// ne = {cols, rows}, and a stack of E such matrices ne = {cols, rows, E}.
//
// Tensors are declared first, with their shape and type, and their bytes are produced later,
// one tensor at a time and in declaration order, straight into the file: a model is streamed to
// disk, never held in memory. The file is written atomically (see train/data/atomic_file.h).
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace dsv3::gguf {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;

enum class ValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// The ggml element types dsv3 writes (ggml's type ids).
enum class TensorType : uint32_t { F32 = 0, F16 = 1, BF16 = 30 };
DType dtype_of(TensorType type);  // the dsv3 dtype with the same bytes
size_t type_size(TensorType type);
std::string_view type_name(TensorType type);  // "F32", "F16", "BF16"

// Receives a tensor's bytes, in order, in pieces of any size.
using TensorSink = std::function<void(const void* data, size_t size)>;
// Produces one tensor's bytes into the sink; the writer checks that exactly the declared number
// of bytes arrived.
using TensorProducer = std::function<void(const TensorSink& sink)>;

class Writer {
 public:
  // Key-values, written in the order they are added; a key given twice is an error.
  void add_u32(const std::string& key, uint32_t value);
  void add_i32(const std::string& key, int32_t value);
  void add_u64(const std::string& key, uint64_t value);
  void add_f32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string(const std::string& key, std::string_view value);
  void add_strings(const std::string& key, const std::vector<std::string>& values);
  void add_i32s(const std::string& key, const std::vector<int32_t>& values);
  // Sets the data alignment (a power of two) and records it as `general.alignment`.
  void set_alignment(uint32_t alignment);

  // Declares a tensor of shape `ne` (innermost first, 1 to 4 dimensions); `produce` is called
  // once, during write(), to stream its bytes.
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> ne,
                  TensorProducer produce);

  size_t tensor_count() const { return tensors_.size(); }
  size_t kv_count() const { return kv_count_; }
  uint32_t alignment() const { return alignment_; }

  // Writes the file (header, key-values, tensor infos, then each tensor's bytes as its producer
  // streams them) atomically to `path`; returns the file size in bytes.
  uint64_t write(const std::string& path) const;

 private:
  struct TensorEntry {
    std::string name;
    TensorType type;
    std::vector<int64_t> ne;
    uint64_t nbytes;
    TensorProducer produce;
  };
  void begin_key(const std::string& key, ValueType type);

  std::string kv_;  // the encoded key-value section
  size_t kv_count_ = 0;
  std::set<std::string> keys_, tensor_names_;
  std::vector<TensorEntry> tensors_;
  uint32_t alignment_ = kDefaultAlignment;
};

}  // namespace dsv3::gguf
