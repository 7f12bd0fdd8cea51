// Orthonormal Walsh-Hadamard rotations of K/V rows before they are quantized.
//
// A few channels of keys carry most of their magnitude (outliers), and a per-block scale sized
// for them leaves the other channels a handful of levels. Rotating every head's K and Q by the
// same orthonormal matrix H leaves each score unchanged, (Hq).(Hk) = q.k, while spreading the
// outliers over the whole block (the incoherence processing of QuaRot, Ashkboos et al. 2024,
// which llama.cpp applies to quantized KV caches too). Values rotated by H give the output
// H * sum_j p_j v_j, rotated back by H again (H is symmetric and H H = I).
//
// H of size n (a power of two) is Sylvester's Hadamard matrix scaled by 1/sqrt(n), applied in
// O(n log n) by the fast Walsh-Hadamard transform.
#pragma once

#include <cstdint>

namespace peregrine {

// x[n] <- H x[n], n a power of two.
void hadamard_rotate(float* x, int64_t n);
// Every block of `block` values of x[n] (n a multiple of block).
void hadamard_rotate_blocks(float* x, int64_t n, int64_t block);

}  // namespace peregrine
