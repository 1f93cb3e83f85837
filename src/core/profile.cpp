#include "core/profile.h"

#include <cstring>

#include "core/device.h"

namespace dsv3::profile {

namespace {
bool g_on = false;
std::vector<Entry>& table() {
  static std::vector<Entry> t;
  return t;
}
}  // namespace

void enable(bool on) { g_on = on; }
bool enabled() { return g_on; }

void add(const char* name, double seconds) {
  for (Entry& e : table())
    if (e.name == name) {
      e.seconds += seconds;
      ++e.calls;
      return;
    }
  table().push_back({name, seconds, 1});
}

std::vector<Entry> entries() { return table(); }
void reset() { table().clear(); }

Phase::Phase(const char* name, Device device) : name_(name), device_(device), on_(g_on) {
  if (!on_) return;
  device::synchronize(device_);
  start_ = std::chrono::steady_clock::now();
}

Phase::~Phase() {
  if (!on_) return;
  device::synchronize(device_);
  add(name_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
}

}  // namespace dsv3::profile
