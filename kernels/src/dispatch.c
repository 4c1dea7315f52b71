/* Run-time choice of instruction set: the best the CPU has, unless ek_set_isa() or EDGEKIT_KERNELS_ISA says
 * otherwise (tests and benchmarks compare the paths on one machine). */
#include <stdlib.h>
#include <string.h>

#include "ek_internal.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#endif

static int32_t g_isa = -2; /* -2: not chosen yet */

static int32_t cpu_has(int32_t isa) {
    if (isa == EK_ISA_PORTABLE) return 1;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa == EK_ISA_AVX2) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
#endif
#if defined(__aarch64__)
    if (isa == EK_ISA_NEON) {
#if defined(__linux__)
        return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
        return 1; /* Advanced SIMD is mandatory in AArch64 */
#endif
    }
#endif
    return 0;
}

static int32_t best_isa(void) {
    const char *env = getenv("EDGEKIT_KERNELS_ISA");
    if (env && *env) {
        for (int32_t i = EK_ISA_PORTABLE; i <= EK_ISA_NEON; i++)
            if (strcmp(env, ek_isa_name(i)) == 0 && cpu_has(i)) return i;
    }
    if (cpu_has(EK_ISA_AVX2)) return EK_ISA_AVX2;
    if (cpu_has(EK_ISA_NEON)) return EK_ISA_NEON;
    return EK_ISA_PORTABLE;
}

int32_t ek_isa(void) {
    if (g_isa == -2) g_isa = best_isa();
    return g_isa;
}

const char *ek_isa_name(int32_t isa) {
    switch (isa) {
    case EK_ISA_PORTABLE: return "portable";
    case EK_ISA_AVX2: return "avx2";
    case EK_ISA_NEON: return "neon";
    default: return "unknown";
    }
}

int32_t ek_set_isa(int32_t isa) {
    if (isa == EK_ISA_AUTO) {
        g_isa = best_isa();
        return 0;
    }
    if (!cpu_has(isa)) return -1;
    g_isa = isa;
    return 0;
}

#if defined(__x86_64__) || defined(_M_X64)
#define EK_PICK(name) (ek_isa() == EK_ISA_AVX2 ? name##_avx2 : name##_portable)
#elif defined(__aarch64__)
#define EK_PICK(name) (ek_isa() == EK_ISA_NEON ? name##_neon : name##_portable)
#else
#define EK_PICK(name) (name##_portable)
#endif

void ek_spmm_chw(int32_t m, int32_t k, int32_t hw, const int32_t *row_ptr, const int32_t *col_idx, const float *val,
                 const float *bias, const float *x, float *y, int32_t act) {
    EK_PICK(ek_spmm_chw)(m, k, hw, row_ptr, col_idx, val, bias, x, y, act);
}

void ek_dw3x3_chw(int32_t c, int32_t h, int32_t w, int32_t stride, const float *x, const float *wt, const float *bias,
                  float *y, int32_t act) {
    EK_PICK(ek_dw3x3_chw)(c, h, w, stride, x, wt, bias, y, act);
}

void ek_conv3x3_chw(int32_t cin, int32_t h, int32_t w, int32_t cout, int32_t stride, const float *x, const float *wt,
                    const float *bias, float *y, int32_t act) {
    EK_PICK(ek_conv3x3_chw)(cin, h, w, cout, stride, x, wt, bias, y, act);
}

void ek_dense_chw(int32_t n, int32_t k, const float *x, const float *wt, const float *bias, float *y, int32_t act) {
    EK_PICK(ek_dense_chw)(n, k, x, wt, bias, y, act);
}
