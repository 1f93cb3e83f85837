#include "core/threads.h"

#include <malloc.h>
#include <omp.h>

namespace dsv3 {
void set_num_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}
int num_threads() { return omp_get_max_threads(); }
void configure_runtime() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}
}  // namespace dsv3
