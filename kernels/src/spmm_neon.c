/* CSR SpMM with NEON (AArch64): 32-pixel tiles in 8 q-register accumulators (8 independent FMA chains). */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "ek_internal.h"

static inline float32x4_t act4(float32x4_t v, int32_t act) {
    if (act == EK_ACT_NONE) return v;
    v = vmaxq_f32(v, vdupq_n_f32(0.f));
    if (act == EK_ACT_RELU6) v = vminq_f32(v, vdupq_n_f32(6.f));
    return v;
}

void ek_spmm_chw_neon(int32_t m, int32_t k, int32_t hw, const int32_t *row_ptr, const int32_t *col_idx,
                      const float *val, const float *bias, const float *x, float *y, int32_t act) {
    (void)k;
    int32_t p0 = 0;
    for (; p0 + 32 <= hw; p0 += 32) {
        for (int32_t r = 0; r < m; r++) {
            float32x4_t a[8];
            const float32x4_t b = vdupq_n_f32(bias ? bias[r] : 0.f);
            for (int q = 0; q < 8; q++) a[q] = b;
            for (int32_t j = row_ptr[r]; j < row_ptr[r + 1]; j++) {
                const float v = val[j];
                const float *xr = x + (size_t)col_idx[j] * hw + p0;
                for (int q = 0; q < 8; q++) a[q] = vfmaq_n_f32(a[q], vld1q_f32(xr + 4 * q), v);
            }
            float *yr = y + (size_t)r * hw + p0;
            for (int q = 0; q < 8; q++) vst1q_f32(yr + 4 * q, act4(a[q], act));
        }
    }
    for (; p0 + 4 <= hw; p0 += 4) {
        for (int32_t r = 0; r < m; r++) {
            float32x4_t a = vdupq_n_f32(bias ? bias[r] : 0.f);
            for (int32_t j = row_ptr[r]; j < row_ptr[r + 1]; j++)
                a = vfmaq_n_f32(a, vld1q_f32(x + (size_t)col_idx[j] * hw + p0), val[j]);
            vst1q_f32(y + (size_t)r * hw + p0, act4(a, act));
        }
    }
    for (; p0 < hw; p0++) {
        for (int32_t r = 0; r < m; r++) {
            float a = bias ? bias[r] : 0.f;
            for (int32_t j = row_ptr[r]; j < row_ptr[r + 1]; j++) a += val[j] * x[(size_t)col_idx[j] * hw + p0];
            y[(size_t)r * hw + p0] = ek_act1(a, act);
        }
    }
}
#endif
