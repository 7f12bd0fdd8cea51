#include "quant/dequantize.h"

#include <cstring>

#include "core/status.h"
#include "quant/fp16.h"
#include "quant/type_table.h"

namespace peregrine {

bool is_supported_weight_type(GgmlType t) { return type_info(t).matmul_weight; }

bool is_dequantizable_type(GgmlType t) {
  const TypeInfo& info = type_info(t);
  return !info.activation_only && info.dequantize != nullptr;
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  const DequantizeRowFn f = type_info(t).dequantize;
  PG_ASSERT(f != nullptr && "dequantize_row: unsupported type");
  f(src, dst, n);
}

void dequantize_row_f32(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }

void dequantize_row_f16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(src[i]);
}

void dequantize_row_bf16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void dequantize_row_q8_0(const BlockQ8_0* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_f32(src[i].d);
    for (int j = 0; j < kQK; ++j) dst[j] = d * float(src[i].qs[j]);
  }
}

void dequantize_row_q2(const BlockQ2* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_f32(src[i].d), m = fp16_to_f32(src[i].m);
    for (int j = 0; j < kQK; ++j) dst[j] = d * float((src[i].qs[j / 4] >> (2 * (j % 4))) & 3) + m;
  }
}

void dequantize_row_q4_0(const BlockQ4_0* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_f32(src[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = d * float((src[i].qs[j] & 0xF) - 8);
      dst[j + 16] = d * float((src[i].qs[j] >> 4) - 8);
    }
  }
}

void dequantize_row_q4_1(const BlockQ4_1* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_f32(src[i].d), m = fp16_to_f32(src[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = d * float(src[i].qs[j] & 0xF) + m;
      dst[j + 16] = d * float(src[i].qs[j] >> 4) + m;
    }
  }
}

void dequantize_row_q5_0(const BlockQ5_0* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  int8_t q[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    unpack_q5_0(src[i], q);
    const float d = fp16_to_f32(src[i].d);
    for (int j = 0; j < kQK; ++j) dst[j] = d * float(q[j]);
  }
}

void dequantize_row_q5_1(const BlockQ5_1* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  uint8_t q[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    unpack_5bit(src[i].qs, src[i].qh, q);
    const float d = fp16_to_f32(src[i].d), m = fp16_to_f32(src[i].m);
    for (int j = 0; j < kQK; ++j) dst[j] = d * float(q[j]) + m;
  }
}

}  // namespace peregrine
