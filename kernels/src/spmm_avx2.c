/* CSR SpMM with AVX2+FMA (compiled with -mavx2 -mfma; called only when the CPU has both).
 * 32-pixel tiles: 4 ymm accumulators for even and 4 for odd nonzeros, so 8 independent FMA chains hide latency. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "ek_internal.h"

static inline __m256 act8(__m256 v, int32_t act) {
    if (act == EK_ACT_NONE) return v;
    v = _mm256_max_ps(v, _mm256_setzero_ps());
    if (act == EK_ACT_RELU6) v = _mm256_min_ps(v, _mm256_set1_ps(6.f));
    return v;
}

void ek_spmm_chw_avx2(int32_t m, int32_t k, int32_t hw, const int32_t *row_ptr, const int32_t *col_idx,
                      const float *val, const float *bias, const float *x, float *y, int32_t act) {
    (void)k;
    int32_t p0 = 0;
    for (; p0 + 32 <= hw; p0 += 32) {
        for (int32_t r = 0; r < m; r++) {
            __m256 a0 = _mm256_set1_ps(bias ? bias[r] : 0.f), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
            int32_t j = row_ptr[r];
            const int32_t end = row_ptr[r + 1];
            for (; j + 2 <= end; j += 2) {
                const __m256 v0 = _mm256_broadcast_ss(val + j), v1 = _mm256_broadcast_ss(val + j + 1);
                const float *x0 = x + (size_t)col_idx[j] * hw + p0, *x1 = x + (size_t)col_idx[j + 1] * hw + p0;
                a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0), a0);
                a1 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 8), a1);
                a2 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 16), a2);
                a3 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 24), a3);
                b0 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1), b0);
                b1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 8), b1);
                b2 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 16), b2);
                b3 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 24), b3);
            }
            if (j < end) {
                const __m256 v0 = _mm256_broadcast_ss(val + j);
                const float *x0 = x + (size_t)col_idx[j] * hw + p0;
                a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0), a0);
                a1 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 8), a1);
                a2 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 16), a2);
                a3 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 24), a3);
            }
            float *yr = y + (size_t)r * hw + p0;
            _mm256_storeu_ps(yr, act8(_mm256_add_ps(a0, b0), act));
            _mm256_storeu_ps(yr + 8, act8(_mm256_add_ps(a1, b1), act));
            _mm256_storeu_ps(yr + 16, act8(_mm256_add_ps(a2, b2), act));
            _mm256_storeu_ps(yr + 24, act8(_mm256_add_ps(a3, b3), act));
        }
    }
    if (p0 == hw) return;
    /* tail of fewer than 32 pixels: 8-wide blocks, the last one masked */
    const int32_t n = hw - p0, nb = (n + 7) / 8;
    int32_t lanes[16];
    for (int32_t i = 0; i < 8; i++) lanes[i] = -1;
    for (int32_t i = 8; i < 16; i++) lanes[i] = 0;
    const int32_t rem = n - (nb - 1) * 8;
    const __m256i last = _mm256_loadu_si256((const __m256i *)(lanes + 8 - rem));
    const __m256i full = _mm256_set1_epi32(-1);
    for (int32_t r = 0; r < m; r++) {
        __m256 acc[4];
        for (int32_t q = 0; q < nb; q++) acc[q] = _mm256_set1_ps(bias ? bias[r] : 0.f);
        for (int32_t j = row_ptr[r]; j < row_ptr[r + 1]; j++) {
            const __m256 v = _mm256_broadcast_ss(val + j);
            const float *xr = x + (size_t)col_idx[j] * hw + p0;
            for (int32_t q = 0; q < nb; q++)
                acc[q] = _mm256_fmadd_ps(v, _mm256_maskload_ps(xr + 8 * q, q == nb - 1 ? last : full), acc[q]);
        }
        float *yr = y + (size_t)r * hw + p0;
        for (int32_t q = 0; q < nb; q++) _mm256_maskstore_ps(yr + 8 * q, q == nb - 1 ? last : full, act8(acc[q], act));
    }
}
#endif
