#pragma once
// Subcommand registration: each apps/cmd_*.cpp adds its subcommand to the `dsv3` app with
//   static dsv3::app::Registrar reg("name", [](CLI::App& sub) { ...options...; return run; });
// so that a new command is one new file and main.cpp never grows a switch.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/tensor.h"

namespace dsv3::app {

using Runner = std::function<int()>;
using Setup = std::function<Runner(CLI::App& sub)>;

struct Registrar {
  Registrar(std::string name, std::string description, Setup setup);
};

// Adds `--device cpu|cuda` (default cpu) to a subcommand, writing into `device`.
void add_device_option(CLI::App& sub, Device& device);
// Adds `--threads N` (CPU threads; 0, the default, is every core; negative counts are refused).
void add_threads_option(CLI::App& sub, int& threads);
// Adds `--precision auto|f32|bf16` (GEMM operand precision of training); resolve it with the
// device: auto is BF16 mixed precision on a GPU and float32 on the CPU.
void add_precision_option(CLI::App& sub, std::string& precision);
DType resolve_precision(const std::string& precision, Device device);

// A check for a whole-number option: `->check(at_least(1))` refuses `--batch 0` with
// "--batch: must be at least 1, not 0" (CLI11's PositiveNumber prints its range as 0 to 1.8e308).
CLI::Validator at_least(int64_t least);
// The whole numbers of a comma-separated list option (`--seq 1024,2048`), each from `least` to
// `most`; anything else fails naming the option and the item.
std::vector<int64_t> parse_int_list(const std::string& option, const std::string& text,
                                    int64_t least, int64_t most = INT64_MAX);

}  // namespace dsv3::app
