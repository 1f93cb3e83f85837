#include "infer/kv_cache.h"

#include <omp.h>

#include <algorithm>

#include <cstring>

namespace dsv3::infer {

LatentCache::LatentCache(const ModelConfig& c, int layers, int capacity, DType dtype,
                         Device device)
    : layers_(layers),
      capacity_(capacity),
      width_(c.kv_lora_rank + c.qk_rope_head_dim),
      rank_(c.kv_lora_rank) {
  DSV3_CHECK(dtype == DType::F32 || dtype == DType::BF16,
             "latent cache: dtype {} is not supported (F32 or BF16)", dtype_name(dtype));
  DSV3_CHECK(capacity > 0 && layers > 0, "latent cache: needs layers > 0 and capacity > 0, got {} and {}",
             layers, capacity);
  data_ = Tensor::zeros({layers, capacity, width_}, dtype, device);
}

void LatentCache::write(int layer, int pos, const float* c_kv_norm, const float* k_pe) {
  DSV3_CHECK(device() == Device::CPU, "latent cache: write() is for host caches");
  DSV3_CHECK(pos >= 0 && pos < capacity_,
             "latent cache: position {} is past the cache capacity of {} positions", pos, capacity_);
  const size_t row = (size_t(layer) * size_t(capacity_) + size_t(pos)) * size_t(width_);
  const size_t es = dtype_size(data_.dtype());
  char* dst = static_cast<char*>(data_.data()) + row * es;
  convert_from_f32(c_kv_norm, data_.dtype(), dst, size_t(rank_));
  convert_from_f32(k_pe, data_.dtype(), dst + size_t(rank_) * es, size_t(width_ - rank_));
}

const float* LatentCache::read(int layer, int end, float* scratch) const {
  DSV3_CHECK(device() == Device::CPU, "latent cache: read() is for host caches");
  const size_t row = size_t(layer) * size_t(capacity_) * size_t(width_);
  if (data_.dtype() == DType::F32) return data_.f32() + row;
  // Widened in blocks of 64 positions shared out over the threads: at every decoded token each
  // layer reads its whole window, which is worth more than one thread.
  const uint16_t* src = data_.bf16() + row;
  const int64_t blocks = (int64_t(end) + 63) / 64;
#pragma omp parallel for schedule(static) if (blocks > 1 && !omp_in_parallel())
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t first = size_t(b) * 64 * size_t(width_);
    const size_t count = size_t(std::min<int64_t>(64, int64_t(end) - b * 64)) * size_t(width_);
    convert_to_f32(DType::BF16, src + first, scratch + first, count);
  }
  return scratch;
}

void LatentCache::set_len(int n) {
  DSV3_CHECK(n >= 0 && n <= capacity_, "latent cache: length {} outside [0, {}]", n, capacity_);
  len_ = n;
}

void LatentCache::truncate(int n) {
  DSV3_CHECK(n >= 0 && n <= len_, "latent cache: cannot truncate to {} (length {})", n, len_);
  len_ = n;
}

}  // namespace dsv3::infer
