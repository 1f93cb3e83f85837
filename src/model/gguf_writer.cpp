#include "model/gguf_writer.h"

#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "train/data/atomic_file.h"

namespace dsv3::gguf {

namespace {

// Appends the little-endian bytes of a number (dsv3 runs on little-endian hosts only).
template <typename T>
void put(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.append(s.data(), s.size());
}

uint64_t padded(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

}  // namespace

DType dtype_of(TensorType type) {
  switch (type) {
    case TensorType::F32:
      return DType::F32;
    case TensorType::F16:
      return DType::F16;
    case TensorType::BF16:
      return DType::BF16;
  }
  fail("gguf: unknown tensor type {}", uint32_t(type));
}

size_t type_size(TensorType type) { return dtype_size(dtype_of(type)); }

std::string_view type_name(TensorType type) { return dtype_name(dtype_of(type)); }

void Writer::begin_key(const std::string& key, ValueType type) {
  DSV3_CHECK(!key.empty(), "gguf: a key must not be empty");
  DSV3_CHECK(keys_.insert(key).second, "gguf: key '{}' given twice", key);
  put_string(kv_, key);
  put<uint32_t>(kv_, uint32_t(type));
  ++kv_count_;
}

void Writer::add_u32(const std::string& key, uint32_t value) {
  begin_key(key, ValueType::U32);
  put(kv_, value);
}

void Writer::add_i32(const std::string& key, int32_t value) {
  begin_key(key, ValueType::I32);
  put(kv_, value);
}

void Writer::add_u64(const std::string& key, uint64_t value) {
  begin_key(key, ValueType::U64);
  put(kv_, value);
}

void Writer::add_f32(const std::string& key, float value) {
  begin_key(key, ValueType::F32);
  put(kv_, value);
}

void Writer::add_bool(const std::string& key, bool value) {
  begin_key(key, ValueType::Bool);
  put<uint8_t>(kv_, value ? 1 : 0);
}

void Writer::add_string(const std::string& key, std::string_view value) {
  begin_key(key, ValueType::String);
  put_string(kv_, value);
}

void Writer::add_strings(const std::string& key, const std::vector<std::string>& values) {
  begin_key(key, ValueType::Array);
  put<uint32_t>(kv_, uint32_t(ValueType::String));
  put<uint64_t>(kv_, values.size());
  for (const std::string& v : values) put_string(kv_, v);
}

void Writer::add_i32s(const std::string& key, const std::vector<int32_t>& values) {
  begin_key(key, ValueType::Array);
  put<uint32_t>(kv_, uint32_t(ValueType::I32));
  put<uint64_t>(kv_, values.size());
  for (int32_t v : values) put(kv_, v);
}

void Writer::set_alignment(uint32_t alignment) {
  DSV3_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0,
             "gguf: alignment {} is not a power of two", alignment);
  add_u32("general.alignment", alignment);
  alignment_ = alignment;
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> ne,
                        TensorProducer produce) {
  DSV3_CHECK(!name.empty(), "gguf: a tensor name must not be empty");
  DSV3_CHECK(tensor_names_.insert(name).second, "gguf: tensor '{}' given twice", name);
  DSV3_CHECK(!ne.empty() && ne.size() <= 4, "gguf: tensor '{}' has {} dimensions (1 to 4)", name,
             ne.size());
  uint64_t n = 1;
  for (int64_t d : ne) {
    DSV3_CHECK(d > 0, "gguf: tensor '{}' has a dimension of {}", name, d);
    n *= uint64_t(d);
  }
  DSV3_CHECK(produce != nullptr, "gguf: tensor '{}' has no producer", name);
  tensors_.push_back({name, type, std::move(ne), n * type_size(type), std::move(produce)});
}

uint64_t Writer::write(const std::string& path) const {
  std::string head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, kVersion);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_count_);
  head += kv_;
  uint64_t offset = 0;
  for (const TensorEntry& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    offset += padded(t.nbytes, alignment_);
  }
  head.append(padded(head.size(), alignment_) - head.size(), '\0');

  AtomicFile file(path);
  file.write(head.data(), head.size());
  const std::string zeros(alignment_, '\0');
  for (const TensorEntry& t : tensors_) {
    const size_t start = file.size();
    t.produce([&](const void* data, size_t size) {
      DSV3_CHECK(file.size() - start + size <= t.nbytes,
                 "gguf: tensor '{}' produced more than its {} bytes", t.name, t.nbytes);
      file.write(data, size);
    });
    DSV3_CHECK(file.size() - start == t.nbytes, "gguf: tensor '{}' produced {} bytes, expected {}",
               t.name, file.size() - start, t.nbytes);
    file.write(zeros.data(), padded(t.nbytes, alignment_) - t.nbytes);
  }
  const uint64_t size = file.size();
  file.commit();
  return size;
}

}  // namespace dsv3::gguf
