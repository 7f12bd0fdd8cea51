#include "quant/dequantize.h"

#include <cstring>

#include "core/status.h"
#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/kquants.h"

namespace peregrine {

bool is_supported_weight_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0:
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

bool is_dequantizable_type(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return is_supported_weight_type(t);
  }
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case GgmlType::F16: {
      auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(h[i]);
      return;
    }
    case GgmlType::BF16: {
      auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
      return;
    }
    case GgmlType::Q8_0: {
      auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[i * kQK + j] = d * float(b[i].qs[j]);
      }
      return;
    }
    case GgmlType::Q4_0: {
      auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
          dst[i * kQK + j] = d * float((b[i].qs[j] & 0xF) - 8);
          dst[i * kQK + j + 16] = d * float((b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case GgmlType::Q4_1: {
      auto* b = static_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < kQK / 2; ++j) {
          dst[i * kQK + j] = d * float(b[i].qs[j] & 0xF) + m;
          dst[i * kQK + j + 16] = d * float(b[i].qs[j] >> 4) + m;
        }
      }
      return;
    }
    case GgmlType::Q5_0: {
      auto* b = static_cast<const BlockQ5_0*>(src);
      int8_t q[kQK];
      for (int64_t i = 0; i < n / kQK; ++i) {
        unpack_q5_0(b[i], q);
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[i * kQK + j] = d * float(q[j]);
      }
      return;
    }
    case GgmlType::Q2_K: dequantize_row_q2_k(static_cast<const BlockQ2K*>(src), dst, n); return;
    case GgmlType::Q3_K: dequantize_row_q3_k(static_cast<const BlockQ3K*>(src), dst, n); return;
    case GgmlType::Q4_K: dequantize_row_q4_k(static_cast<const BlockQ4K*>(src), dst, n); return;
    case GgmlType::Q5_K: dequantize_row_q5_k(static_cast<const BlockQ5K*>(src), dst, n); return;
    case GgmlType::Q6_K: dequantize_row_q6_k(static_cast<const BlockQ6K*>(src), dst, n); return;
    default:
      PG_ASSERT(false && "dequantize_row: unsupported type");
  }
}

}  // namespace peregrine
