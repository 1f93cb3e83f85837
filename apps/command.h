#pragma once
// Subcommand registration: each apps/cmd_*.cpp adds its subcommand to the `dsv3` app with
//   static dsv3::app::Registrar reg("name", [](CLI::App& sub) { ...options...; return run; });
// so that a new command is one new file and main.cpp never grows a switch.
#include <functional>
#include <string>

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
// Adds `--precision auto|f32|bf16` (GEMM operand precision of training); resolve it with the
// device: auto is BF16 mixed precision on a GPU and float32 on the CPU.
void add_precision_option(CLI::App& sub, std::string& precision);
DType resolve_precision(const std::string& precision, Device device);

}  // namespace dsv3::app
