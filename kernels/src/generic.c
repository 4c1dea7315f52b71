/* Kernels written in plain C so the compiler vectorizes them for whatever ISA this file is compiled for.
 * The build compiles this file once per ISA with -DEK_SUFFIX=<isa> and that ISA's flags (-mavx2 -mfma, or the
 * aarch64 baseline which includes NEON); dispatch.c picks one at run time. */
#include <stdlib.h>
#include <string.h>

#include "ek_internal.h"

#ifndef EK_SUFFIX
#define EK_SUFFIX portable
#endif
#define EK_CAT2(a, b) a##_##b
#define EK_CAT(a, b) EK_CAT2(a, b)
#define EK_NAME(name) EK_CAT(name, EK_SUFFIX)

#define SPMM_TILE 32
#define CONV_TILE 16
#define CONV_OC 4

/* 8-float vectors (GCC/clang vector extensions): one ymm with AVX2, two q registers on NEON, scalar otherwise */
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf8u __attribute__((vector_size(32), aligned(4))); /* unaligned loads */
typedef int32_t vi8 __attribute__((vector_size(32)));

/* ReLU / ReLU6 on a vector with lane masks (C has no vector ?: operator) */
static inline __attribute__((always_inline)) vf8 act8(vf8 v, int32_t act) {
    if (act == EK_ACT_NONE) return v;
    const vf8 zero = {0}, six = {6, 6, 6, 6, 6, 6, 6, 6};
    v = (vf8)((vi8)v & (v > zero));
    if (act == EK_ACT_RELU6) {
        const vi8 lt = v < six;
        v = (vf8)(((vi8)v & lt) | ((vi8)six & ~lt));
    }
    return v;
}

#ifdef EK_GENERIC_SPMM
/* Portable CSR SpMM: a 32-pixel accumulator tile per output channel, pixel tiles outermost so the x tile of every
 * input channel stays in cache while all output channels use it. */
void EK_NAME(ek_spmm_chw)(int32_t m, int32_t k, int32_t hw, const int32_t *row_ptr, const int32_t *col_idx,
                          const float *val, const float *bias, const float *x, float *y, int32_t act) {
    (void)k;
    for (int32_t p0 = 0; p0 < hw; p0 += SPMM_TILE) {
        const int32_t n = hw - p0 < SPMM_TILE ? hw - p0 : SPMM_TILE;
        for (int32_t r = 0; r < m; r++) {
            float acc[SPMM_TILE];
            const float b = bias ? bias[r] : 0.f;
            for (int32_t i = 0; i < SPMM_TILE; i++) acc[i] = b;
            if (n == SPMM_TILE) {
                for (int32_t j = row_ptr[r]; j < row_ptr[r + 1]; j++) {
                    const float v = val[j];
                    const float *xr = x + (size_t)col_idx[j] * hw + p0;
                    for (int32_t i = 0; i < SPMM_TILE; i++) acc[i] += v * xr[i];
                }
            } else {
                for (int32_t j = row_ptr[r]; j < row_ptr[r + 1]; j++) {
                    const float v = val[j];
                    const float *xr = x + (size_t)col_idx[j] * hw + p0;
                    for (int32_t i = 0; i < n; i++) acc[i] += v * xr[i];
                }
            }
            float *yr = y + (size_t)r * hw + p0;
            for (int32_t i = 0; i < n; i++) yr[i] = ek_act1(acc[i], act);
        }
    }
}
#endif

static inline float tap(const float *row, int32_t ix, int32_t w) { return (ix < 0 || ix >= w) ? 0.f : row[ix]; }

/* Depthwise 3x3: each channel is copied into a zero-padded plane (for stride 2 split into even and odd columns),
 * so every output row is a run of 8-wide vector FMAs over contiguous loads with no bounds checks, also for the
 * 14x14 and 7x7 maps where a per-row edge path would dominate. */
void EK_NAME(ek_dw3x3_chw)(int32_t c, int32_t h, int32_t w, int32_t stride, const float *x, const float *wt,
                           const float *bias, float *y, int32_t act) {
    const int32_t oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
    const int32_t owp = (ow + 7) / 8 * 8;   /* output row rounded up to whole vectors */
    const int32_t ldp = owp + 8;            /* padded plane row: room for the +1/+2 taps of the last vector */
    const int32_t ph = h + 2;
    /* stride 1: one plane P[y][1 + x] = x[y-1][x]; stride 2: E[y][i] = P[y][2i], O[y][i] = P[y][2i+1] */
    const int32_t planes = stride == 1 ? 1 : 2;
    float *pad = (float *)calloc((size_t)planes * ph * ldp + 8, sizeof(float));
    float *row = (float *)malloc(sizeof(float) * (size_t)owp * 2);
    for (int32_t ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * h * w;
        for (int32_t iy = 0; iy < h; iy++) {
            const float *src = xc + (size_t)iy * w;
            if (stride == 1) {
                memcpy(pad + (size_t)(iy + 1) * ldp + 1, src, sizeof(float) * w);
            } else {
                float *e = pad + (size_t)(iy + 1) * ldp, *o = pad + (size_t)(ph + iy + 1) * ldp;
                /* padded column j = x + 1: even x -> odd j -> O[x/2]; odd x -> even j -> E[(x+1)/2] */
                for (int32_t i = 0; 2 * i < w; i++) o[i] = src[2 * i];
                for (int32_t i = 0; 2 * i + 1 < w; i++) e[i + 1] = src[2 * i + 1];
            }
        }
        const float *k = wt + (size_t)ch * 9;
        const float b = bias ? bias[ch] : 0.f;
        float *yc = y + (size_t)ch * oh * ow;
        /* two output rows per pass: they share two of their three input rows (stride 1) or one (stride 2) */
        for (int32_t oy = 0; oy < oh; oy += 2) {
            const int32_t two = oy + 1 < oh;
            float *d0 = (owp == ow) ? yc + (size_t)oy * ow : row;
            float *d1 = (owp == ow && two) ? yc + (size_t)(oy + 1) * ow : row + owp;
            for (int32_t ox = 0; ox < owp; ox += 8) {
                vf8 a0 = {b, b, b, b, b, b, b, b}, a1 = a0;
                for (int32_t ky = 0; ky < 3 + stride; ky++) {
                    const int32_t py = oy * stride + ky;
                    if (py >= ph) break;
                    vf8 t0, t1, t2;
                    if (stride == 1) {
                        const float *r = pad + (size_t)py * ldp + ox;
                        t0 = *(const vf8u *)r, t1 = *(const vf8u *)(r + 1), t2 = *(const vf8u *)(r + 2);
                    } else {
                        const float *e = pad + (size_t)py * ldp + ox, *o = pad + (size_t)(ph + py) * ldp + ox;
                        t0 = *(const vf8u *)e, t1 = *(const vf8u *)o, t2 = *(const vf8u *)(e + 1);
                    }
                    if (ky < 3) a0 += k[ky * 3] * t0 + k[ky * 3 + 1] * t1 + k[ky * 3 + 2] * t2;
                    const int32_t k1 = ky - stride; /* tap row of this input row for output row oy + 1 */
                    if (k1 >= 0 && k1 < 3) a1 += k[k1 * 3] * t0 + k[k1 * 3 + 1] * t1 + k[k1 * 3 + 2] * t2;
                }
                *(vf8u *)(d0 + ox) = act8(a0, act);
                if (two) *(vf8u *)(d1 + ox) = act8(a1, act);
            }
            if (d0 == row) memcpy(yc + (size_t)oy * ow, row, sizeof(float) * ow);
            if (two && d1 == row + owp) memcpy(yc + (size_t)(oy + 1) * ow, row + owp, sizeof(float) * ow);
        }
    }
    free(row);
    free(pad);
}

/* Dense 3x3 convolution for few input channels: per output row, gather the cin*9 taps into a column block
 * (im2col of one row, padded to whole tiles), then a register-blocked 4 output channels x 16 pixels product. */
void EK_NAME(ek_conv3x3_chw)(int32_t cin, int32_t h, int32_t w, int32_t cout, int32_t stride, const float *x,
                             const float *wt, const float *bias, float *y, int32_t act) {
    const int32_t oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
    const int32_t kk = cin * 9, ldc = (ow + CONV_TILE - 1) / CONV_TILE * CONV_TILE;
    float *col = (float *)calloc((size_t)kk * ldc, sizeof(float));
    for (int32_t oy = 0; oy < oh; oy++) {
        for (int32_t ci = 0; ci < cin; ci++)
            for (int32_t ky = 0; ky < 3; ky++) {
                const int32_t iy = oy * stride + ky - 1;
                for (int32_t kx = 0; kx < 3; kx++) {
                    float *dst = col + (size_t)((ci * 3 + ky) * 3 + kx) * ldc;
                    if (iy < 0 || iy >= h) {
                        memset(dst, 0, sizeof(float) * ow);
                        continue;
                    }
                    const float *src = x + ((size_t)ci * h + iy) * w;
                    for (int32_t ox = 0; ox < ow; ox++) {
                        const int32_t ix = ox * stride + kx - 1;
                        dst[ox] = (ix >= 0 && ix < w) ? src[ix] : 0.f;
                    }
                }
            }
        for (int32_t oc0 = 0; oc0 < cout; oc0 += CONV_OC) {
            const int32_t nr = cout - oc0 < CONV_OC ? cout - oc0 : CONV_OC;
            const float *w0 = wt + (size_t)oc0 * kk;
            /* rows past cout reuse the last real row: computed, never stored */
            const float *w1 = wt + (size_t)(oc0 + (nr > 1 ? 1 : 0)) * kk, *w2 = wt + (size_t)(oc0 + (nr > 2 ? 2 : 0)) * kk,
                        *w3 = wt + (size_t)(oc0 + (nr > 3 ? 3 : 0)) * kk;
            for (int32_t ox0 = 0; ox0 < ow; ox0 += CONV_TILE) {
                vf8 acc[CONV_OC][2];
                for (int32_t r = 0; r < CONV_OC; r++) {
                    const float b = (r < nr && bias) ? bias[oc0 + r] : 0.f;
                    acc[r][0] = acc[r][1] = (vf8){b, b, b, b, b, b, b, b};
                }
                for (int32_t q = 0; q < kk; q++) {
                    const float *cr = col + (size_t)q * ldc + ox0;
                    const vf8 c0 = *(const vf8u *)cr, c1 = *(const vf8u *)(cr + 8);
                    acc[0][0] += w0[q] * c0, acc[0][1] += w0[q] * c1;
                    acc[1][0] += w1[q] * c0, acc[1][1] += w1[q] * c1;
                    acc[2][0] += w2[q] * c0, acc[2][1] += w2[q] * c1;
                    acc[3][0] += w3[q] * c0, acc[3][1] += w3[q] * c1;
                }
                const int32_t n = ow - ox0 < CONV_TILE ? ow - ox0 : CONV_TILE;
                for (int32_t r = 0; r < nr; r++) {
                    float tmp[CONV_TILE];
                    memcpy(tmp, acc[r], sizeof tmp);
                    float *yr = y + ((size_t)(oc0 + r) * oh + oy) * ow + ox0;
                    for (int32_t i = 0; i < n; i++) yr[i] = ek_act1(tmp[i], act);
                }
            }
        }
    }
    free(col);
}

/* Matrix-vector product, one output per weight row: 4 rows at a time share each x vector (weights stream once). */
void EK_NAME(ek_dense_chw)(int32_t n, int32_t k, const float *x, const float *wt, const float *bias, float *y,
                           int32_t act) {
    const int32_t k8 = k / 8 * 8;
    int32_t r = 0;
    for (; r + 4 <= n; r += 4) {
        const float *w0 = wt + (size_t)r * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
        vf8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int32_t q = 0; q < k8; q += 8) {
            const vf8 xv = *(const vf8u *)(x + q);
            a0 += *(const vf8u *)(w0 + q) * xv, a1 += *(const vf8u *)(w1 + q) * xv;
            a2 += *(const vf8u *)(w2 + q) * xv, a3 += *(const vf8u *)(w3 + q) * xv;
        }
        float s[4] = {0, 0, 0, 0};
        for (int i = 0; i < 8; i++) s[0] += a0[i], s[1] += a1[i], s[2] += a2[i], s[3] += a3[i];
        for (int32_t q = k8; q < k; q++) s[0] += w0[q] * x[q], s[1] += w1[q] * x[q], s[2] += w2[q] * x[q], s[3] += w3[q] * x[q];
        for (int i = 0; i < 4; i++) y[r + i] = ek_act1(s[i] + (bias ? bias[r + i] : 0.f), act);
    }
    for (; r < n; r++) {
        float s = bias ? bias[r] : 0.f;
        for (int32_t q = 0; q < k; q++) s += wt[(size_t)r * k + q] * x[q];
        y[r] = ek_act1(s, act);
    }
}
