// safetensors reader, writer, shard index and the validation of malformed files.
#include "model/safetensors.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kRef = std::string(DSV3_TEST_DATA) + "/reference";

// A fresh, empty folder per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("dsv3_st_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A file made of an arbitrary header text and `data_size` zero bytes of data.
std::string make_file(const std::string& header, size_t data_size) {
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char(uint8_t(n >> (8 * i)));
  return bytes + header + std::string(data_size, '\0');
}

Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::zeros(shape, dtype);
  std::mt19937 rng(seed);
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
  return t;
}

// Expects `fn` to throw a dsv3::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error was raised";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "message '" << msg << "' lacks '" << part
                                                   << "'";
  }
}

TEST_F(SafetensorsTest, RoundTripEveryDtype) {
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a.f32", random_tensor({3, 5}, DType::F32, 1)},
      {"b.bf16", random_tensor({7}, DType::BF16, 2)},
      {"c.f16", random_tensor({2, 3, 5}, DType::F16, 3)},
      {"d.f8", random_tensor({9, 3}, DType::F8E4M3, 4)},
      {"e.i32", random_tensor({4}, DType::I32, 5)},
      {"f.i64", random_tensor({2, 2}, DType::I64, 6)},
      {"g.scalar", random_tensor({}, DType::F32, 7)},
      {"h.empty", random_tensor({0, 4}, DType::BF16, 8)},
      {"i.odd_f8", random_tensor({5}, DType::F8E4M3, 9)},
      {"j.six_dims", random_tensor({1, 2, 1, 2, 1, 3}, DType::I64, 10)},
      {"k.f64", random_tensor({3, 2}, DType::F64, 11)},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "round trip"}};
  write_safetensors(path("rt.safetensors"), tensors, meta);

  // The file is self-consistent by the format's rules: the header is padded to 8 bytes and the
  // data section is covered exactly.
  std::string bytes = read_bytes(path("rt.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  size_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  EXPECT_EQ(bytes.size(), 8 + n + total);

  auto file = SafetensorsFile::open(path("rt.safetensors"));
  EXPECT_EQ(file->metadata(), meta);
  EXPECT_EQ(file->tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(file->has(name)) << name;
    Tensor r = file->get(name);
    EXPECT_EQ(r.dtype(), t.dtype()) << name;
    EXPECT_EQ(r.shape(), t.shape()) << name;
    ASSERT_EQ(r.nbytes(), t.nbytes()) << name;
    if (t.nbytes()) {
      EXPECT_EQ(std::memcmp(r.data(), t.data(), t.nbytes()), 0) << name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data()) % dtype_size(r.dtype()), 0u) << name;
    }
  }
  // Tensors keep the mapping alive after the file object is gone.
  Tensor kept = file->get("a.f32");
  std::weak_ptr<SafetensorsFile> weak = file;
  file.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(std::memcmp(kept.data(), tensors[0].second.data(), kept.nbytes()), 0);
  kept = Tensor();
  EXPECT_TRUE(weak.expired());
}

// Float64 tensors read as float32 rounded to nearest (a float64 checkpoint loads like any other).
TEST_F(SafetensorsTest, Float64ConvertsToFloat32) {
  Tensor t = Tensor::zeros({4}, DType::F64);
  const double values[4] = {1.0 / 3.0, -2.5, 1e-40, 3.0e38};
  for (int i = 0; i < 4; ++i) t.f64()[i] = values[i];
  write_safetensors(path("f64.safetensors"), {{"w", t}});
  Tensor r = SafetensorsFile::open(path("f64.safetensors"))->get("w").to_f32();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r.f32()[i], float(values[i])) << i;
}

TEST_F(SafetensorsTest, MappedTensorsAreWritableWithoutTouchingTheFile) {
  Tensor t = random_tensor({16}, DType::F32, 11);
  write_safetensors(path("w.safetensors"), {{"w", t}});
  std::string before = read_bytes(path("w.safetensors"));
  {
    auto file = SafetensorsFile::open(path("w.safetensors"));
    Tensor v = file->get("w");
    v.f32()[3] = 42.0f;
    EXPECT_EQ(file->get("w").f32()[3], 42.0f);
  }
  EXPECT_EQ(read_bytes(path("w.safetensors")), before);
}

TEST_F(SafetensorsTest, ReadsReferenceFixtures) {
  {
    WeightStore ws = WeightStore::open(kRef + "/tiny-v3");
    EXPECT_EQ(ws.names().size(), 205u);
    Tensor emb = ws.get("model.embed_tokens.weight", {512, 64});
    EXPECT_EQ(emb.dtype(), DType::F32);
    EXPECT_EQ(ws.info("model.layers.0.mlp.down_proj.weight").shape, Shape({64, 128}));
    EXPECT_EQ(ws.info("lm_head.weight").begin, 0u);
    EXPECT_EQ(ws.info("lm_head.weight").end, 131072u);
    // Real weights: finite and not all zero.
    double sum = 0;
    for (int64_t i = 0; i < emb.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(emb.f32()[i]));
      sum += std::abs(emb.f32()[i]);
    }
    EXPECT_GT(sum, 0.0);
  }
  {
    auto batch = SafetensorsFile::open(kRef + "/tiny-v3/batch.safetensors");
    EXPECT_EQ(batch->info("tokens").dtype, DType::I32);
    EXPECT_EQ(batch->info("tokens").shape, Shape({2, 24}));
    Tensor tokens = batch->get("tokens");
    for (int64_t i = 0; i < tokens.numel(); ++i) {
      EXPECT_GE(tokens.i32()[i], 0);
      EXPECT_LT(tokens.i32()[i], 512);
    }
  }
  {
    WeightStore ws = WeightStore::open(kRef + "/tiny-v3-bf16/model.safetensors");
    EXPECT_EQ(ws.info("lm_head.weight").dtype, DType::BF16);
    EXPECT_EQ(ws.info("model.layers.0.input_layernorm.weight").dtype, DType::F32);
  }
  {
    WeightStore ws = WeightStore::open(kRef + "/wide-v3-fp8");
    EXPECT_EQ(ws.info("model.layers.0.mlp.down_proj.weight").dtype, DType::F8E4M3);
    EXPECT_EQ(ws.info("model.layers.0.mlp.down_proj.weight").shape, Shape({160, 320}));
    Tensor scale = ws.get("model.layers.0.mlp.down_proj.weight_scale_inv", {2, 3});
    EXPECT_EQ(scale.dtype(), DType::F32);
    EXPECT_EQ(ws.info("model.embed_tokens.weight").dtype, DType::BF16);
  }
  {
    WeightStore ws = WeightStore::open(kRef + "/tiny-v2lite");
    EXPECT_TRUE(ws.has("model.layers.0.self_attn.q_proj.weight"));
    EXPECT_FALSE(ws.has("model.layers.0.self_attn.q_a_proj.weight"));
  }
  // Every fixture file opens, and every tensor's view covers its bytes.
  for (const char* c : {"tiny-v3", "tiny-v2lite", "tiny-v3-bf16", "wide-v3-fp8"}) {
    for (const char* f : {"model", "batch", "expected"}) {
      auto file = SafetensorsFile::open(kRef + "/" + c + "/" + f + ".safetensors");
      EXPECT_FALSE(file->tensors().empty()) << c << "/" << f;
      for (const TensorInfo& t : file->tensors())
        EXPECT_EQ(file->get(t.name).nbytes(), t.end - t.begin) << t.name;
    }
  }
}

TEST_F(SafetensorsTest, RewritingAFixtureIsByteIdenticalInContent) {
  auto src = SafetensorsFile::open(kRef + "/wide-v3-fp8/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> all;
  for (const TensorInfo& t : src->tensors()) all.emplace_back(t.name, src->get(t.name));
  write_safetensors(path("copy.safetensors"), all);
  auto copy = SafetensorsFile::open(path("copy.safetensors"));
  ASSERT_EQ(copy->tensors().size(), src->tensors().size());
  for (const TensorInfo& t : src->tensors()) {
    Tensor a = src->get(t.name), b = copy->get(t.name);
    EXPECT_EQ(a.dtype(), b.dtype());
    EXPECT_EQ(a.shape(), b.shape());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << t.name;
  }
}

TEST_F(SafetensorsTest, ShardedFolder) {
  Tensor a = random_tensor({4, 4}, DType::F32, 21), b = random_tensor({8}, DType::BF16, 22),
         c = random_tensor({3}, DType::I64, 23);
  write_safetensors(path("model-00001-of-00002.safetensors"), {{"a", a}, {"b", b}});
  write_safetensors(path("model-00002-of-00002.safetensors"), {{"c", c}});
  json index = {{"metadata", {{"total_size", 100}}},
                {"weight_map",
                 {{"a", "model-00001-of-00002.safetensors"},
                  {"b", "model-00001-of-00002.safetensors"},
                  {"c", "model-00002-of-00002.safetensors"}}}};
  write_bytes(path("model.safetensors.index.json"), index.dump());
  WeightStore ws = WeightStore::open(dir_.string());
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(std::memcmp(ws.get("a", {4, 4}).data(), a.data(), a.nbytes()), 0);
  EXPECT_EQ(std::memcmp(ws.get("b").data(), b.data(), b.nbytes()), 0);
  EXPECT_EQ(std::memcmp(ws.get("c", {3}).data(), c.data(), c.nbytes()), 0);

  expect_error([&] { ws.get("zzz"); }, {"zzz", "model.safetensors.index.json"});
  expect_error([&] { ws.get("a", {2, 8}); }, {"'a'", "[4, 4]", "[2, 8]",
                                              "model-00001-of-00002.safetensors"});
  expect_error([&] { ws.info("zzz"); }, {"zzz"});

  // A tensor listed in the index but missing from its shard.
  index["weight_map"]["d"] = "model-00002-of-00002.safetensors";
  write_bytes(path("model.safetensors.index.json"), index.dump());
  expect_error([&] { WeightStore::open(dir_.string()); },
               {"'d'", "model-00002-of-00002.safetensors"});
  // A shard that does not exist.
  index["weight_map"].erase("d");
  index["weight_map"]["e"] = "model-00003-of-00002.safetensors";
  write_bytes(path("model.safetensors.index.json"), index.dump());
  expect_error([&] { WeightStore::open(dir_.string()); },
               {"'e'", "model-00003-of-00002.safetensors", "does not exist"});
  // An index without a weight map, and one that is not JSON.
  write_bytes(path("model.safetensors.index.json"), R"({"metadata": {}})");
  expect_error([&] { WeightStore::open(dir_.string()); },
               {"model.safetensors.index.json", "weight_map"});
  write_bytes(path("model.safetensors.index.json"), R"({"weight_map": {"a": 3}})");
  expect_error([&] { WeightStore::open(dir_.string()); },
               {"model.safetensors.index.json", "'a'"});
  write_bytes(path("model.safetensors.index.json"), "{not json");
  expect_error([&] { WeightStore::open(dir_.string()); }, {"model.safetensors.index.json"});
}

TEST_F(SafetensorsTest, FolderWithoutCheckpoint) {
  expect_error([&] { WeightStore::open(dir_.string()); }, {dir_.string(), "model.safetensors"});
  expect_error([&] { WeightStore::open(path("nope")); }, {"nope"});
  Tensor a = random_tensor({2}, DType::F32, 31);
  write_safetensors(path("model.safetensors"), {{"a", a}});
  WeightStore ws = WeightStore::open(dir_.string());
  expect_error([&] { ws.get("b"); }, {"'b'", "model.safetensors"});
}

// Each malformed file is refused with an Error naming the file and, where one is to blame, the
// tensor.
TEST_F(SafetensorsTest, MalformedFiles) {
  struct Case {
    std::string label;
    std::string bytes;
    std::string tensor;  // expected in the message when not empty
    std::string what;    // a phrase expected in the message
  };
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  auto one = [](const std::string& entry) { return R"({"t":{)" + entry + "}}"; };
  std::string huge_len(8, '\0');
  huge_len[4] = 1;  // 2^32 bytes of header
  std::string over_len = make_file("{}", 0);
  over_len[0] = 100;

  std::vector<Case> cases = {
      {"empty", "", "", "too short"},
      {"seven bytes", std::string(7, '\0'), "", "too short"},
      {"absurd header length", huge_len + "{}", "", "larger than"},
      {"header past the end", over_len, "", "past the end"},
      {"not json", make_file("{\"t\": ", 8), "", "not valid JSON"},
      {"not an object", make_file("[1, 2]", 8), "", "not a JSON object"},
      {"trailing garbage", make_file("{} x", 8), "", "not valid JSON"},
      {"entry not an object", make_file(R"({"t": 3})", 8), "t", "not a JSON object"},
      {"missing dtype", make_file(one(R"("shape":[2],"data_offsets":[0,8])"), 8), "t",
       "missing 'dtype'"},
      {"missing shape", make_file(one(R"("dtype":"F32","data_offsets":[0,8])"), 8), "t",
       "missing 'shape'"},
      {"missing offsets", make_file(one(R"("dtype":"F32","shape":[2])"), 8), "t",
       "missing 'data_offsets'"},
      {"dtype not string", make_file(one(R"("dtype":1,"shape":[2],"data_offsets":[0,8])"), 8), "t",
       "dtype"},
      {"unknown dtype", make_file(one(R"("dtype":"F8_E5M2","shape":[8],"data_offsets":[0,8])"), 8),
       "t", "F8_E5M2"},
      {"shape not array", make_file(one(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), 8),
       "t", "'shape'"},
      {"negative dim", make_file(one(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), 8),
       "t", "non-negative integer"},
      {"float dim", make_file(one(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), 8), "t",
       "non-negative integer"},
      {"string dim", make_file(one(R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])"), 8),
       "t", "non-negative integer"},
      {"huge dim", make_file(one(R"("dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8])"), 8),
       "t", "non-negative integer"},
      {"too many dims",
       make_file(one(R"("dtype":"F32","shape":[1,1,1,1,1,1,2],"data_offsets":[0,8])"), 8), "t",
       "dimensions"},
      {"overflowing shape",
       make_file(one(R"("dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8])"), 8),
       "t", "overflow"},
      {"overflow wrapping to the right size",
       // 2^62 * 4 bytes wraps to 0 in 64 bits; with [0,0] offsets this must still be refused.
       make_file(one(R"("dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0])"), 8),
       "t", "overflow"},
      {"offsets not array", make_file(one(R"("dtype":"F32","shape":[2],"data_offsets":8)"), 8),
       "t", "data_offsets"},
      {"offsets of three", make_file(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8,8])"), 8),
       "t", "data_offsets"},
      {"negative offset", make_file(one(R"("dtype":"F32","shape":[2],"data_offsets":[-8,0])"), 8),
       "t", "data_offsets"},
      {"begin after end", make_file(one(R"("dtype":"F32","shape":[0],"data_offsets":[8,0])"), 8),
       "t", "end before"},
      {"end past data", make_file(one(R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"), 8),
       "t", "past the end"},
      {"size mismatch", make_file(one(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), 16),
       "t", "needs 12 bytes"},
      {"unexpected key", make_file(one(ok_entry + R"(,"extra":1)"), 8), "t", "extra"},
      {"overlap",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 16),
       "b", "overlap"},
      {"identical ranges",
       make_file(R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                 8),
       "a", "overlap"},
      {"metadata not object", make_file(R"({"__metadata__": [1]})", 0), "", "__metadata__"},
      {"metadata value not string", make_file(R"({"__metadata__": {"k": 1}})", 0), "k",
       "not a string"},
      {"duplicate tensor",
       make_file(R"({"t":{)" + ok_entry + R"(},"t":{)" + ok_entry + "}}", 8), "t",
       "more than once"},
      {"duplicate field", make_file(one(ok_entry + R"(,"dtype":"I32")"), 8), "dtype",
       "more than once"},
      {"deep nesting", make_file(R"({"__metadata__":)" + std::string(200, '[') +
                                     std::string(200, ']') + "}",
                                 0),
       "", "deeper"},
      {"control character in a name", make_file(R"({"a\nb": 3})", 0), "a\\x0ab",
       "not a JSON object"},
      {"invalid utf-8", make_file("{\"\xff\":{" + ok_entry + "}}", 8), "", "not valid JSON"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    std::string file = path("bad.safetensors");
    write_bytes(file, c.bytes);
    std::vector<std::string> parts = {file, c.what};
    if (!c.tensor.empty()) parts.push_back("'" + c.tensor + "'");
    try {
      SafetensorsFile::open(file);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      std::string msg = e.what();
      for (const std::string& p : parts)
        EXPECT_NE(msg.find(p), std::string::npos) << "message '" << msg << "' lacks '" << p << "'";
      for (char ch : msg)
        EXPECT_TRUE(uint8_t(ch) >= 0x20 && uint8_t(ch) < 0x7f) << "unprintable byte in: " << msg;
    }
    // The same through WeightStore, and through the in-memory entry point.
    EXPECT_THROW(WeightStore::open(file), Error);
    EXPECT_THROW(parse_safetensors(c.bytes, "mem"), Error);
  }
}

TEST_F(SafetensorsTest, LenientWhereTheFormatAllows) {
  // A gap between tensors, trailing spaces after the header, empty tensors anywhere, and
  // a file with no tensors at all are accepted.
  std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
      R"("e":{"dtype":"I64","shape":[0,3],"data_offsets":[2,2]},)"
      R"("__metadata__":{"format":"pt"}}   )";
  write_bytes(path("gap.safetensors"), make_file(header, 16));
  auto f = SafetensorsFile::open(path("gap.safetensors"));
  EXPECT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->get("e").numel(), 0);
  EXPECT_EQ(f->metadata().at("format"), "pt");

  write_bytes(path("none.safetensors"), make_file("{}", 0));
  EXPECT_TRUE(SafetensorsFile::open(path("none.safetensors"))->tensors().empty());
}

TEST_F(SafetensorsTest, MisalignedTensorIsCopiedAligned) {
  // The data section starts 8-byte aligned; the tensor begins one byte into it.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes = make_file(header, 9);
  float vals[2] = {1.5f, -2.25f};
  std::memcpy(&bytes[8 + header.size() + 1], vals, 8);
  write_bytes(path("mis.safetensors"), bytes);
  auto f = SafetensorsFile::open(path("mis.safetensors"));
  Tensor x = f->get("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data()) % 4, 0u);
  EXPECT_EQ(x.f32()[0], 1.5f);
  EXPECT_EQ(x.f32()[1], -2.25f);
}

TEST_F(SafetensorsTest, TruncatedFixtureIsRefused) {
  std::string bytes = read_bytes(kRef + "/tiny-v3/model.safetensors");
  write_bytes(path("trunc.safetensors"), bytes.substr(0, bytes.size() - 100));
  // The last tensor in the data section now runs past the end.
  expect_error([&] { SafetensorsFile::open(path("trunc.safetensors")); },
               {path("trunc.safetensors"), "past the end"});
}

TEST_F(SafetensorsTest, WriterRefusesBadInput) {
  Tensor a = random_tensor({2}, DType::F32, 41);
  expect_error([&] { write_safetensors(path("x.safetensors"), {{"a", a}, {"a", a}}); },
               {"x.safetensors", "'a'", "twice"});
  expect_error([&] { write_safetensors(path("x.safetensors"), {{"__metadata__", a}}); },
               {"__metadata__"});
  EXPECT_FALSE(fs::exists(path("x.safetensors")));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
}

TEST_F(SafetensorsTest, AtomicWriteKeepsOldFileOnFailure) {
  Tensor old_t = random_tensor({4}, DType::F32, 51);
  write_safetensors(path("ckpt.safetensors"), {{"w", old_t}});
  const std::string old_bytes = read_bytes(path("ckpt.safetensors"));

  // A folder that does not exist.
  expect_error([&] { write_safetensors(path("missing/ckpt.safetensors"), {{"w", old_t}}); },
               {"missing/ckpt.safetensors"});

  // The target is a folder: everything is written, the rename fails, the temp file goes.
  fs::create_directories(path("adir"));
  expect_error([&] { write_safetensors(path("adir"), {{"w", old_t}}); }, {"adir"});

  // A disk that fills up mid-write, simulated with a file size limit (EFBIG, as ENOSPC would be).
  Tensor big = random_tensor({1 << 16}, DType::F32, 52);
  struct rlimit saved {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  try {
    write_safetensors(path("ckpt.safetensors"), {{"w", big}});
    ADD_FAILURE() << "write past the size limit succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ckpt.safetensors"), std::string::npos) << e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, old_handler);

  EXPECT_EQ(read_bytes(path("ckpt.safetensors")), old_bytes);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir_)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"adir", "ckpt.safetensors"}));

  // And a successful overwrite replaces it, even while the old file is mapped.
  auto mapped = SafetensorsFile::open(path("ckpt.safetensors"));
  Tensor view = mapped->get("w");
  write_safetensors(path("ckpt.safetensors"), {{"w", big}});
  EXPECT_EQ(SafetensorsFile::open(path("ckpt.safetensors"))->info("w").shape, Shape({1 << 16}));
  EXPECT_EQ(std::memcmp(view.data(), old_t.data(), old_t.nbytes()), 0);
}

TEST_F(SafetensorsTest, FuzzSeedsAreValid) {
  // The fuzz target's seed corpus must hold valid files, or the fuzzer starts from nothing.
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(DSV3_TEST_DATA) + "/fuzz/safetensors")) {
    EXPECT_NO_THROW(SafetensorsFile::open(e.path().string())) << e.path();
    ++n;
  }
  EXPECT_GE(n, 3);
}

TEST_F(SafetensorsTest, CorruptedBytesGiveErrorsOnly) {
  // A small in-process fuzz over a real file's header, for builds without libFuzzer: every
  // corruption either still parses into in-bounds tensors or raises dsv3::Error.
  std::string good = read_bytes(kRef + "/tiny-v3/batch.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  std::mt19937 rng(1234);
  int refused = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = good;
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t at = rng() % (8 + header_len);
      bytes[at] = char(rng() % 3 == 0 ? "0123456789[]{}\",:-e."[rng() % 20] : rng());
    }
    if (rng() % 8 == 0) bytes.resize(rng() % bytes.size());
    try {
      SafetensorsLayout layout = parse_safetensors(bytes, "corrupt");
      for (const TensorInfo& t : layout.tensors) {
        ASSERT_LE(t.begin, t.end);
        ASSERT_LE(t.end, layout.data_size);
        ASSERT_EQ(size_t(t.shape.numel()) * dtype_size(t.dtype), t.end - t.begin);
      }
    } catch (const Error& e) {
      ++refused;
      ASSERT_EQ(std::string(e.what()).rfind("corrupt: ", 0), 0u) << e.what();
    }
  }
  EXPECT_GT(refused, 1000);
}

}  // namespace
}  // namespace dsv3
