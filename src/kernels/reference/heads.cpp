// Reference layout moves between token-major rows and head-major [batch, heads, seq, dim].
#include <vector>

#include "kernels/reference.h"

namespace dsv3::ref {

namespace {
// Index of (b, t, h, i) in each layout.
int64_t tok_index(const ops::HeadCopy& c, int64_t b, int64_t t, int64_t h, int64_t i) {
  return (b * c.seq + t) * c.tok_row_stride + h * c.tok_head_stride + c.tok_offset + i;
}
int64_t head_index(const ops::HeadCopy& c, int64_t b, int64_t t, int64_t h, int64_t i) {
  return ((b * c.heads + h) * c.seq + t) * c.head_dim + c.head_offset + i;
}
}  // namespace

namespace t {

template <typename T>
void tokens_to_heads(const T* tokens, T* heads, const ops::HeadCopy& c) {
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t t = 0; t < c.seq; ++t)
      for (int64_t h = 0; h < c.heads; ++h)
        for (int64_t i = 0; i < c.width; ++i)
          heads[head_index(c, b, t, h, i)] = tokens[tok_index(c, b, t, h, i)];
}

template <typename T>
void heads_to_tokens(const T* heads, T* tokens, const ops::HeadCopy& c, bool accumulate) {
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t t = 0; t < c.seq; ++t) {
      if (c.tok_head_stride == 0) {
        // Every head writes the same vector: it receives their sum.
        for (int64_t i = 0; i < c.width; ++i) {
          double sum = accumulate ? double(tokens[tok_index(c, b, t, 0, i)]) : 0.0;
          for (int64_t h = 0; h < c.heads; ++h) sum += heads[head_index(c, b, t, h, i)];
          tokens[tok_index(c, b, t, 0, i)] = T(sum);
        }
        continue;
      }
      for (int64_t h = 0; h < c.heads; ++h)
        for (int64_t i = 0; i < c.width; ++i) {
          T& dst = tokens[tok_index(c, b, t, h, i)];
          const T src = heads[head_index(c, b, t, h, i)];
          dst = accumulate ? T(double(dst) + src) : src;
        }
    }
}

template <typename T>
void copy_columns(const T* src, int64_t src_cols, int64_t offset, int64_t width, T* dst,
                  int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) dst[r * width + i] = src[r * src_cols + offset + i];
}

template <typename T>
void put_columns(const T* src, int64_t width, T* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) dst[r * dst_cols + offset + i] = src[r * width + i];
}

#define DSV3_INSTANTIATE(T)                                                        \
  template void tokens_to_heads<T>(const T*, T*, const ops::HeadCopy&);            \
  template void heads_to_tokens<T>(const T*, T*, const ops::HeadCopy&, bool);      \
  template void copy_columns<T>(const T*, int64_t, int64_t, int64_t, T*, int64_t); \
  template void put_columns<T>(const T*, int64_t, T*, int64_t, int64_t, int64_t);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace t

void tokens_to_heads(const float* tokens, float* heads, const ops::HeadCopy& c) {
  t::tokens_to_heads(tokens, heads, c);
}
void heads_to_tokens(const float* heads, float* tokens, const ops::HeadCopy& c, bool accumulate) {
  t::heads_to_tokens(heads, tokens, c, accumulate);
}
void copy_columns(const float* src, int64_t src_cols, int64_t offset, int64_t width, float* dst,
                  int64_t rows) {
  t::copy_columns(src, src_cols, offset, width, dst, rows);
}
void put_columns(const float* src, int64_t width, float* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows) {
  t::put_columns(src, width, dst, dst_cols, offset, rows);
}

}  // namespace dsv3::ref
