/* Per-ISA entry points behind the dispatch in dispatch.c. */
#ifndef EK_INTERNAL_H
#define EK_INTERNAL_H

#include <stddef.h>

#include "edgekit_kernels.h"

typedef void (*ek_spmm_fn)(int32_t, int32_t, int32_t, const int32_t *, const int32_t *, const float *, const float *,
                           const float *, float *, int32_t);
typedef void (*ek_dw3x3_fn)(int32_t, int32_t, int32_t, int32_t, const float *, const float *, const float *, float *,
                            int32_t);
typedef void (*ek_conv3x3_fn)(int32_t, int32_t, int32_t, int32_t, int32_t, const float *, const float *,
                              const float *, float *, int32_t);

#define EK_DECLARE(suffix)                                                                                          \
    void ek_spmm_chw_##suffix(int32_t, int32_t, int32_t, const int32_t *, const int32_t *, const float *,          \
                              const float *, const float *, float *, int32_t);                                    \
    void ek_dw3x3_chw_##suffix(int32_t, int32_t, int32_t, int32_t, const float *, const float *, const float *,    \
                               float *, int32_t);                                                                 \
    void ek_conv3x3_chw_##suffix(int32_t, int32_t, int32_t, int32_t, int32_t, const float *, const float *,       \
                                 const float *, float *, int32_t);                                                \
    void ek_dense_chw_##suffix(int32_t, int32_t, const float *, const float *, const float *, float *, int32_t);

EK_DECLARE(portable)
#if defined(__x86_64__) || defined(_M_X64)
EK_DECLARE(avx2)
#endif
#if defined(__aarch64__)
EK_DECLARE(neon)
#endif

static inline float ek_act1(float v, int32_t act) {
    if (act == EK_ACT_RELU) return v > 0.f ? v : 0.f;
    if (act == EK_ACT_RELU6) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    return v;
}

#endif
