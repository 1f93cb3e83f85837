// libFuzzer target for the safetensors parser: the input is a whole file held in memory. Any
// input must either parse into tensors that lie inside the data section, or raise dsv3::Error;
// a crash, a sanitizer report or another exception type is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    dsv3::SafetensorsLayout layout = dsv3::parse_safetensors(bytes, "fuzz.safetensors");
    // Touch every byte of every tensor so that AddressSanitizer sees any range that escapes
    // the input, and recheck the invariants the parser promises.
    uint32_t sum = 0;
    for (const dsv3::TensorInfo& t : layout.tensors) {
      if (t.begin > t.end || t.end > layout.data_size) std::abort();
      if (size_t(t.shape.numel()) * dsv3::dtype_size(t.dtype) != t.end - t.begin) std::abort();
      for (size_t i = t.begin; i < t.end; ++i) sum += uint8_t(bytes[layout.data_offset + i]);
    }
    if (layout.data_offset + layout.data_size != size) std::abort();
    volatile uint32_t sink = sum;
    (void)sink;
  } catch (const dsv3::Error&) {
  }
  return 0;
}
