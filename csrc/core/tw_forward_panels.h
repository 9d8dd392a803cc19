// The fused CPU forward's weight operand, shared by the AVX2 and AVX-512
// kernels: for every tile, panels of FW outputs (the kernel's register-tile
// width) stored [kt][FW], zero-padded past the tile's width. Built from the
// values alone, so a caller may keep it while the values are unchanged
// (inference: the panel cache of ops/tw_linear_cpu.cpp). Panels packed by one
// kernel are only valid for that kernel's forward_packed.
#pragma once

#include <cstdint>
#include <vector>

namespace tilesparse::core {

struct ForwardPanels {
  std::vector<float> data;
  std::vector<int64_t> offsets;  // num_tiles + 1 starts into data
  int64_t bytes() const { return static_cast<int64_t>(data.size() * sizeof(float) + offsets.size() * 8); }
};

}  // namespace tilesparse::core
