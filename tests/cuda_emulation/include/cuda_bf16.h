#pragma once
// The CPU emulation of CUDA (see cuda_emulation.h).
#include "cuda_emulation.h"
