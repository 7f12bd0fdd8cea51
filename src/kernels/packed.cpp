#include "kernels/packed.h"

#include <cstdlib>
#include <cstring>

#include "quant/fp16.h"
#include "quant/kquants.h"
#include "quant/type_table.h"

namespace peregrine {
namespace {

// Row r's 32-value sub-block b of a K-quant row as the panel stores it: effective scales
// (two for Q6_K's halves) and bytes (Q4_K: GGUF-style nibble pairs; Q6_K: q + 32).
struct KSub {
  float d0, d1_or_m;
  float m0 = 0, m1 = 0;  // Q2_K's mins per half
  uint8_t qs[kQK];
  int qs_bytes;
};

KSub k_sub_block(GgmlType t, const uint8_t* row, int64_t b) {
  KSub out{};
  int8_t q[kQK_K];
  const int64_t i = b / 8, k = b % 8;
  if (t == GgmlType::Q2_K || t == GgmlType::Q3_K) {  // sub-blocks of 16: j = 2k, 2k + 1
    if (t == GgmlType::Q2_K) {
      const BlockQ2K& blk = reinterpret_cast<const BlockQ2K*>(row)[i];
      unpack_q2_k(blk, q);
      const float d = fp16_to_f32(blk.d), dmin = fp16_to_f32(blk.dmin);
      out.d0 = d * float(blk.scales[2 * k] & 15);
      out.d1_or_m = d * float(blk.scales[2 * k + 1] & 15);
      out.m0 = -(dmin * float(blk.scales[2 * k] >> 4));
      out.m1 = -(dmin * float(blk.scales[2 * k + 1] >> 4));
      for (int j = 0; j < kQK; ++j) out.qs[j] = uint8_t(q[32 * k + j]);
    } else {
      const BlockQ3K& blk = reinterpret_cast<const BlockQ3K*>(row)[i];
      unpack_q3_k(blk, q);
      const float d = fp16_to_f32(blk.d);
      out.d0 = d * float(q3k_scale(blk.scales, int(2 * k)));
      out.d1_or_m = d * float(q3k_scale(blk.scales, int(2 * k + 1)));
      for (int j = 0; j < kQK; ++j) out.qs[j] = uint8_t(q[32 * k + j] + 4);
    }
    out.qs_bytes = kQK;
  } else if (t == GgmlType::Q5_1) {  // a 32-value block is one sub-block: d * q + m
    const BlockQ5_1& blk = reinterpret_cast<const BlockQ5_1*>(row)[b];
    unpack_5bit(blk.qs, blk.qh, out.qs);
    out.d0 = fp16_to_f32(blk.d);
    out.d1_or_m = fp16_to_f32(blk.m);
    out.qs_bytes = kQK;
  } else if (t == GgmlType::Q5_K) {
    const BlockQ5K& blk = reinterpret_cast<const BlockQ5K*>(row)[i];
    unpack_q5_k(blk, q);
    int sc, m;
    k4_scale_min(blk.scales, int(k), &sc, &m);
    out.d0 = fp16_to_f32(blk.d) * float(sc);
    out.d1_or_m = -(fp16_to_f32(blk.dmin) * float(m));
    for (int j = 0; j < kQK; ++j) out.qs[j] = uint8_t(q[32 * k + j]);
    out.qs_bytes = kQK;
  } else if (t == GgmlType::Q4_K) {
    const BlockQ4K& blk = reinterpret_cast<const BlockQ4K*>(row)[i];
    unpack_q4_k(blk, q);
    int sc, m;
    k4_scale_min(blk.scales, int(k), &sc, &m);
    out.d0 = fp16_to_f32(blk.d) * float(sc);
    out.d1_or_m = -(fp16_to_f32(blk.dmin) * float(m));
    for (int j = 0; j < kQK / 2; ++j)
      out.qs[j] = uint8_t(q[32 * k + j] | (q[32 * k + 16 + j] << 4));
    out.qs_bytes = kQK / 2;
  } else {
    const BlockQ6K& blk = reinterpret_cast<const BlockQ6K*>(row)[i];
    unpack_q6_k(blk, q);
    out.d0 = fp16_to_f32(blk.d) * float(blk.scales[2 * k]);
    out.d1_or_m = fp16_to_f32(blk.d) * float(blk.scales[2 * k + 1]);
    for (int j = 0; j < kQK; ++j) out.qs[j] = uint8_t(q[32 * k + j] + 32);
    out.qs_bytes = kQK;
  }
  return out;
}

// The scale, offset and quant bytes of one GGUF block.
struct BlockView {
  uint16_t d, m;
  const uint8_t* qs;
  int qs_bytes;
};

BlockView view_block(GgmlType t, const uint8_t* row, int64_t b) {
  switch (t) {
    case GgmlType::Q4_0: {
      auto* blk = reinterpret_cast<const BlockQ4_0*>(row) + b;
      return {blk->d, 0, blk->qs, kQK / 2};
    }
    case GgmlType::Q4_1: {
      auto* blk = reinterpret_cast<const BlockQ4_1*>(row) + b;
      return {blk->d, blk->m, blk->qs, kQK / 2};
    }
    case GgmlType::Q5_0: {  // widened into `widened` (one block at a time)
      auto* blk = reinterpret_cast<const BlockQ5_0*>(row) + b;
      thread_local int8_t widened[kQK];
      unpack_q5_0(*blk, widened);
      return {blk->d, 0, reinterpret_cast<const uint8_t*>(widened), kQK};
    }
    default: {
      auto* blk = reinterpret_cast<const BlockQ8_0*>(row) + b;
      return {blk->d, 0, reinterpret_cast<const uint8_t*>(blk->qs), kQK};
    }
  }
}

// Panel p of a ternary matrix (layout in quant/panel_format.h): codes of every
// super-block column, then their fp16 scales. Missing rows stay zero.
void pack_ternary_panel(GgmlType t, const uint8_t* src, int64_t rows, size_t row_bytes, int64_t p,
                        int64_t nbk, uint8_t* out) {
  uint8_t* scales = out + size_t(nbk) * panel::kTernaryCodes;  // [nbk][16] fp16
  int8_t q[kQK_K];
  for (int r = 0; r < kPanelRows && p * kPanelRows + r < rows; ++r) {
    const uint8_t* row = src + size_t(p * kPanelRows + r) * row_bytes;
    for (int64_t i = 0; i < nbk; ++i) {
      uint16_t d;
      if (t == GgmlType::TQ1_0) {
        const BlockTQ1_0& b = reinterpret_cast<const BlockTQ1_0*>(row)[i];
        unpack_tq1_0(b, q);
        d = b.d;
      } else {
        const BlockTQ2_0& b = reinterpret_cast<const BlockTQ2_0*>(row)[i];
        unpack_tq2_0(b, q);
        d = b.d;
      }
      std::memcpy(scales + size_t(i) * panel::kScales + 2 * r, &d, 2);
      uint8_t* codes = out + size_t(i) * panel::kTernaryCodes;
      for (int s = 0; s < kQK_K / kQK; ++s)      // sub-blocks of 32
        for (int g = 0; g < 2; ++g)               // groups of 16 values
          for (int j = 0; j < 4; ++j) {           // byte j holds values 4k + j, k < 4
            const int8_t* v = q + kQK * s + 16 * g + j;
            codes[((2 * s + g) * kPanelRows + r) * 4 + j] = uint8_t(v[0] | v[4] << 2 | v[8] << 4 | v[12] << 6);
          }
    }
  }
}

}  // namespace

const PanelFormat* panel_format(GgmlType type) {
  const TypeInfo* info = find_type_info(uint32_t(type));
  return info ? info->panel : nullptr;
}

Result<PackedMatrix> pack_matrix(GgmlType type, const uint8_t* src, int64_t rows, int64_t cols,
                                 size_t row_bytes) {
  const PanelFormat* f = panel_format(type);
  if (f == nullptr) return make_error("no panel layout for type {}", type_name(type));
  // K-quant super-blocks of 256 are split into panel blocks of 32 values each; Q5_1's
  // blocks of 32 take Q5_K's layout as they are (f32 scale and offset, quants as bytes).
  const uint32_t block_elems = type_info(type).block_elems;
  const bool kquant = block_elems == kQK_K || type == GgmlType::Q5_1;
  const int64_t multiple = block_elems == kQK_K ? kQK_K : kQK;
  if (rows <= 0 || cols <= 0 || cols % multiple != 0)
    return make_error("cannot pack a [{}, {}] matrix: columns must be a positive multiple of {}",
                      rows, cols, multiple);
  PackedMatrix pm;
  pm.format = f;
  pm.rows = rows;
  pm.cols = cols;
  pm.nb = cols / kQK;
  pm.n_panels = (rows + kPanelRows - 1) / kPanelRows;
  pm.panel_bytes = f->block_bytes * size_t(pm.nb);
  const size_t bytes = pm.bytes();
  void* mem = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (mem == nullptr) return make_error("out of memory packing {} bytes of weights", bytes);
  pm.data = {static_cast<uint8_t*>(mem), std::free};
  std::memset(mem, 0, bytes);  // padding rows: zero scales and quants

  for (int64_t p = 0; p < pm.n_panels; ++p) {
    if (f == &panel::kTernary) {
      pack_ternary_panel(type, src, rows, row_bytes, p, cols / kQK_K, pm.data.get() + size_t(p) * pm.panel_bytes);
      continue;
    }
    for (int64_t b = 0; b < pm.nb; ++b) {
      uint8_t* out = pm.data.get() + size_t(p) * pm.panel_bytes + size_t(b) * f->block_bytes;
      if (f->is_float) {  // element [k][r]
        const size_t e = f->elem_bytes;
        for (int r = 0; r < kPanelRows && p * kPanelRows + r < rows; ++r) {
          const uint8_t* src_row = src + size_t(p * kPanelRows + r) * row_bytes + size_t(b) * kQK * e;
          for (int k = 0; k < kQK; ++k) std::memcpy(out + (size_t(k) * kPanelRows + r) * e, src_row + k * e, e);
        }
        continue;
      }
      uint8_t* qs = out + f->qs_offset;
      if (kquant) {
        auto* d0 = reinterpret_cast<float*>(out);
        auto* d1 = reinterpret_cast<float*>(out + f->m_offset);
        for (int r = 0; r < kPanelRows && p * kPanelRows + r < rows; ++r) {
          const KSub ks = k_sub_block(type, src + size_t(p * kPanelRows + r) * row_bytes, b);
          d0[r] = ks.d0;
          d1[r] = ks.d1_or_m;
          if (type == GgmlType::Q2_K) {
            reinterpret_cast<float*>(out + 2 * panel::kScales32)[r] = ks.m0;
            reinterpret_cast<float*>(out + 3 * panel::kScales32)[r] = ks.m1;
          }
          for (int g = 0; g < ks.qs_bytes / 4; ++g)
            std::memcpy(qs + (g * kPanelRows + r) * 4, ks.qs + g * 4, 4);
        }
        continue;
      }
      auto* d = reinterpret_cast<uint16_t*>(out);
      auto* m = reinterpret_cast<uint16_t*>(out + f->m_offset);
      for (int r = 0; r < kPanelRows; ++r) {
        const int64_t row = p * kPanelRows + r;
        if (row >= rows) break;
        const BlockView v = view_block(type, src + size_t(row) * row_bytes, b);
        d[r] = v.d;
        if (type == GgmlType::Q4_1) m[r] = v.m;
        for (int g = 0; g < v.qs_bytes / 4; ++g)
          std::memcpy(qs + (g * kPanelRows + r) * 4, v.qs + g * 4, 4);
      }
    }
  }
  return pm;
}

}  // namespace peregrine
