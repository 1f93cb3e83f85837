// The GGUF writer, read back by an independent test-only reader: header, key-values in order,
// tensor infos, alignment and padding, and the bytes of every tensor; errors leave no file.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "gguf_reader.h"
#include "model/gguf_writer.h"

namespace {
using namespace dsv3;
namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "dsv3-gguf-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

gguf::TensorProducer bytes_of(std::vector<char> data, size_t pieces = 1) {
  return [data, pieces](const gguf::TensorSink& sink) {
    const size_t step = (data.size() + pieces - 1) / pieces;
    for (size_t p = 0; p < data.size(); p += step)
      sink(data.data() + p, std::min(step, data.size() - p));
  };
}

template <typename T>
std::vector<char> raw(const std::vector<T>& v) {
  std::vector<char> out(v.size() * sizeof(T));
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

TEST(GgufWriter, HeaderKeyValuesTensorInfosAndData) {
  TempDir tmp;
  gguf::Writer w;
  w.add_string("general.architecture", "test");
  w.add_u32("t.u32", 7);
  w.add_i32("t.i32", -3);
  w.add_u64("t.u64", 1ull << 40);
  w.add_f32("t.f32", 1.5f);
  w.add_bool("t.bool", true);
  w.add_strings("t.strings", {"x", "", "yz"});
  w.add_i32s("t.i32s", {1, -2, 3});
  const std::vector<float> t0 = {1, 2, 3};                           // 12 bytes
  const std::vector<uint16_t> t1 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};  // 20 bytes
  std::vector<float> t2(24);                                         // 96 bytes
  for (size_t i = 0; i < t2.size(); ++i) t2[i] = float(i) * 0.25f;
  w.add_tensor("t0", gguf::TensorType::F32, {3}, bytes_of(raw(t0)));
  w.add_tensor("t1", gguf::TensorType::BF16, {5, 2}, bytes_of(raw(t1), 3));
  w.add_tensor("blk.0.t2", gguf::TensorType::F32, {2, 3, 4}, bytes_of(raw(t2), 5));
  EXPECT_EQ(w.kv_count(), 8u);
  EXPECT_EQ(w.tensor_count(), 3u);
  const std::string path = (tmp.path / "m.gguf").string();
  const uint64_t size = w.write(path);
  EXPECT_EQ(size, fs::file_size(path));

  const test::GgufFile f = test::GgufReader::read(path);
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.key_order,
            (std::vector<std::string>{"general.architecture", "t.u32", "t.i32", "t.u64", "t.f32",
                                      "t.bool", "t.strings", "t.i32s"}));
  EXPECT_EQ(f.kv.at("general.architecture").type, 8u);
  EXPECT_EQ(f.kv.at("general.architecture").s, "test");
  EXPECT_EQ(f.kv.at("t.u32").type, 4u);
  EXPECT_EQ(f.kv.at("t.u32").u, 7u);
  EXPECT_EQ(f.kv.at("t.i32").type, 5u);
  EXPECT_EQ(f.kv.at("t.i32").i, -3);
  EXPECT_EQ(f.kv.at("t.u64").type, 10u);
  EXPECT_EQ(f.kv.at("t.u64").u, 1ull << 40);
  EXPECT_EQ(f.kv.at("t.f32").type, 6u);
  EXPECT_EQ(f.kv.at("t.f32").f, 1.5);
  EXPECT_EQ(f.kv.at("t.bool").type, 7u);
  EXPECT_EQ(f.kv.at("t.bool").u, 1u);
  const test::GgufValue& strings = f.kv.at("t.strings");
  ASSERT_EQ(strings.type, 9u);
  EXPECT_EQ(strings.array_type, 8u);
  ASSERT_EQ(strings.items.size(), 3u);
  EXPECT_EQ(strings.items[0].s, "x");
  EXPECT_EQ(strings.items[1].s, "");
  EXPECT_EQ(strings.items[2].s, "yz");
  const test::GgufValue& ints = f.kv.at("t.i32s");
  EXPECT_EQ(ints.array_type, 5u);
  ASSERT_EQ(ints.items.size(), 3u);
  EXPECT_EQ(ints.items[1].i, -2);

  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors[0].name, "t0");
  EXPECT_EQ(f.tensors[0].ne, (std::vector<uint64_t>{3}));
  EXPECT_EQ(f.tensors[0].type, 0u);
  EXPECT_EQ(f.tensors[0].offset, 0u);
  EXPECT_EQ(f.tensors[1].ne, (std::vector<uint64_t>{5, 2}));
  EXPECT_EQ(f.tensors[1].type, 30u);
  EXPECT_EQ(f.tensors[1].offset, 32u);  // 12 bytes padded to the default alignment of 32
  EXPECT_EQ(f.tensors[2].ne, (std::vector<uint64_t>{2, 3, 4}));
  EXPECT_EQ(f.tensors[2].offset, 64u);
  EXPECT_EQ(f.data_start % 32, 0u);
  EXPECT_EQ(size, f.data_start + 32 + 32 + 96);
  EXPECT_EQ(f.data<float>("t0"), t0);
  EXPECT_EQ(f.data<uint16_t>("t1"), t1);
  EXPECT_EQ(f.data<float>("blk.0.t2"), t2);
  for (uint64_t p = f.data_start + 12; p < f.data_start + 32; ++p) EXPECT_EQ(f.bytes[p], 0);
  for (uint64_t p = f.data_start + 32 + 20; p < f.data_start + 64; ++p) EXPECT_EQ(f.bytes[p], 0);
}

TEST(GgufWriter, CustomAlignment) {
  TempDir tmp;
  gguf::Writer w;
  w.set_alignment(64);
  w.add_tensor("a", gguf::TensorType::F32, {1}, bytes_of(raw(std::vector<float>{4})));
  w.add_tensor("b", gguf::TensorType::F32, {17}, bytes_of(raw(std::vector<float>(17, 2))));
  w.add_tensor("c", gguf::TensorType::F32, {1}, bytes_of(raw(std::vector<float>{5})));
  const std::string path = (tmp.path / "m.gguf").string();
  const uint64_t size = w.write(path);
  const test::GgufFile f = test::GgufReader::read(path);
  EXPECT_EQ(f.kv.at("general.alignment").u, 64u);
  EXPECT_EQ(f.alignment, 64u);
  EXPECT_EQ(f.data_start % 64, 0u);
  EXPECT_EQ(f.tensor("a").offset, 0u);
  EXPECT_EQ(f.tensor("b").offset, 64u);
  EXPECT_EQ(f.tensor("c").offset, 192u);  // 68 bytes padded to 128
  EXPECT_EQ(size, f.data_start + 256);
  EXPECT_EQ(f.data<float>("c"), std::vector<float>{5});
  EXPECT_THROW(gguf::Writer().set_alignment(48), Error);
}

TEST(GgufWriter, RefusesDuplicatesAndBadShapes) {
  gguf::Writer w;
  w.add_u32("k", 1);
  EXPECT_THROW(w.add_string("k", "again"), Error);
  EXPECT_THROW(w.add_u32("", 1), Error);
  auto none = bytes_of({});
  w.add_tensor("t", gguf::TensorType::F32, {1}, bytes_of(raw(std::vector<float>{1})));
  EXPECT_THROW(w.add_tensor("t", gguf::TensorType::F32, {1}, none), Error);
  EXPECT_THROW(w.add_tensor("u", gguf::TensorType::F32, {}, none), Error);
  EXPECT_THROW(w.add_tensor("u", gguf::TensorType::F32, {1, 1, 1, 1, 1}, none), Error);
  EXPECT_THROW(w.add_tensor("u", gguf::TensorType::F32, {4, 0}, none), Error);
  EXPECT_THROW(w.add_tensor("u", gguf::TensorType::F32, {4}, nullptr), Error);
}

// A producer that delivers the wrong number of bytes fails the write, and neither a partial
// file nor a temporary file is left; an earlier file at the path survives.
TEST(GgufWriter, FailedWriteLeavesTheOldFile) {
  TempDir tmp;
  const fs::path path = tmp.path / "m.gguf";
  std::ofstream(path) << "old";
  for (size_t n : {3u, 5u}) {
    gguf::Writer w;
    w.add_tensor("t", gguf::TensorType::F32, {1}, bytes_of(std::vector<char>(n, 'x')));
    try {
      w.write(path.string());
      ADD_FAILURE() << "a tensor of " << n << " bytes for 4 was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tensor 't'"), std::string::npos) << e.what();
    }
  }
  std::ifstream in(path);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "old");
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(tmp.path)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1u);
  gguf::Writer w;
  EXPECT_THROW(w.write((tmp.path / "no-such-folder" / "m.gguf").string()), Error);
}

}  // namespace
