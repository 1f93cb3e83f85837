#pragma once
// A small GGUF reader for tests only: reads back what src/model/gguf_writer.h writes and checks
// the layout on the way (magic, version, every offset aligned, data inside the file). Written
// from the format description, independently of the writer's code.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace dsv3::test {

struct GgufValue {
  uint32_t type = 0;  // GGUF value type; for arrays, array_type is the element type
  uint32_t array_type = 0;
  uint64_t u = 0;                // unsigned integers and bool
  int64_t i = 0;                 // signed integers
  double f = 0;                  // floats
  std::string s;                 // strings
  std::vector<GgufValue> items;  // arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  uint64_t offset = 0;  // relative to the data section
};

struct GgufFile {
  uint32_t version = 0;
  std::vector<std::string> key_order;
  std::map<std::string, GgufValue> kv;
  std::vector<GgufTensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_start = 0;
  std::string bytes;  // the whole file

  const GgufTensorInfo& tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name);
  }
  bool has_tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return true;
    return false;
  }
  // A tensor's bytes as values of type T.
  template <typename T>
  std::vector<T> data(const std::string& name, size_t element_size = sizeof(T)) const {
    const GgufTensorInfo& t = tensor(name);
    uint64_t n = 1;
    for (uint64_t d : t.ne) n *= d;
    if (data_start + t.offset + n * element_size > bytes.size())
      throw std::runtime_error(name + ": data past the end of the file");
    std::vector<T> out(n);
    std::memcpy(out.data(), bytes.data() + data_start + t.offset, n * sizeof(T));
    return out;
  }
};

class GgufReader {
 public:
  static GgufFile read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    GgufReader r(ss.str());
    return r.parse();
  }

 private:
  explicit GgufReader(std::string bytes) { f_.bytes = std::move(bytes); }

  template <typename T>
  T get() {
    if (pos_ + sizeof(T) > f_.bytes.size()) throw std::runtime_error("truncated GGUF");
    T v;
    std::memcpy(&v, f_.bytes.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    const uint64_t n = get<uint64_t>();
    if (pos_ + n > f_.bytes.size()) throw std::runtime_error("truncated GGUF string");
    std::string s = f_.bytes.substr(pos_, n);
    pos_ += n;
    return s;
  }
  GgufValue value(uint32_t type) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case 0:
        v.u = get<uint8_t>();
        break;
      case 1:
        v.i = get<int8_t>();
        break;
      case 2:
        v.u = get<uint16_t>();
        break;
      case 3:
        v.i = get<int16_t>();
        break;
      case 4:
        v.u = get<uint32_t>();
        break;
      case 5:
        v.i = get<int32_t>();
        break;
      case 6:
        v.f = get<float>();
        break;
      case 7:
        v.u = get<uint8_t>();
        break;
      case 8:
        v.s = str();
        break;
      case 9: {
        v.array_type = get<uint32_t>();
        const uint64_t n = get<uint64_t>();
        for (uint64_t k = 0; k < n; ++k) v.items.push_back(value(v.array_type));
        break;
      }
      case 10:
        v.u = get<uint64_t>();
        break;
      case 11:
        v.i = get<int64_t>();
        break;
      case 12:
        v.f = get<double>();
        break;
      default:
        throw std::runtime_error("unknown GGUF value type " + std::to_string(type));
    }
    return v;
  }

  GgufFile parse() {
    if (get<uint32_t>() != 0x46554747) throw std::runtime_error("not a GGUF file (magic)");
    f_.version = get<uint32_t>();
    const uint64_t n_tensors = get<uint64_t>(), n_kv = get<uint64_t>();
    for (uint64_t k = 0; k < n_kv; ++k) {
      std::string key = str();
      const uint32_t type = get<uint32_t>();
      if (f_.kv.count(key)) throw std::runtime_error("duplicate key " + key);
      f_.kv[key] = value(type);
      f_.key_order.push_back(key);
    }
    if (f_.kv.count("general.alignment")) f_.alignment = f_.kv["general.alignment"].u;
    for (uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensorInfo t;
      t.name = str();
      const uint32_t n_dims = get<uint32_t>();
      for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(get<uint64_t>());
      t.type = get<uint32_t>();
      t.offset = get<uint64_t>();
      if (t.offset % f_.alignment != 0) throw std::runtime_error(t.name + ": unaligned offset");
      f_.tensors.push_back(t);
    }
    f_.data_start = (pos_ + f_.alignment - 1) / f_.alignment * f_.alignment;
    for (uint64_t p = pos_; p < f_.data_start; ++p)
      if (f_.bytes[p] != 0) throw std::runtime_error("non-zero padding before the data");
    return f_;
  }

  GgufFile f_;
  size_t pos_ = 0;
};

}  // namespace dsv3::test
