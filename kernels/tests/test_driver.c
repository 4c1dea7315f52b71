/* Self-checking test driver: every kernel on every instruction set this CPU has, against naive double-precision
 * references, on shapes that exercise full tiles, tails, strides and every activation. Exit code 0 = all passed.
 * Built for the host and for aarch64 (run under qemu-aarch64, where it checks the NEON path). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgekit_kernels.h"

static unsigned long long g_rng = 88172645463325252ull;
static float frand(void) { /* xorshift64: same data on every platform */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
}

static double act(double v, int a) {
    if (a == EK_ACT_RELU) return v > 0 ? v : 0;
    if (a == EK_ACT_RELU6) return v < 0 ? 0 : (v > 6 ? 6 : v);
    return v;
}

static int check(const char *what, const float *got, const double *ref, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs(got[i] - ref[i]) / (1.0 + fabs(ref[i]));
        if (!(e <= worst)) worst = e; /* also catches NaN */
    }
    if (!(worst < 1e-4)) {
        printf("FAIL %s rel_err=%g\n", what, worst);
        return 1;
    }
    return 0;
}

static int test_spmm(int m, int k, int hw, double density, int a) {
    int32_t *rp = malloc(sizeof(int32_t) * (m + 1)), *ci = malloc(sizeof(int32_t) * (size_t)m * k);
    float *val = malloc(sizeof(float) * (size_t)m * k), *bias = malloc(sizeof(float) * m);
    float *x = malloc(sizeof(float) * (size_t)k * hw), *y = malloc(sizeof(float) * (size_t)m * hw);
    double *ref = malloc(sizeof(double) * (size_t)m * hw);
    int nnz = 0;
    rp[0] = 0;
    for (int r = 0; r < m; r++) {
        for (int c = 0; c < k; c++)
            if ((frand() + 1) / 2 < density) {
                ci[nnz] = c;
                val[nnz++] = frand();
            }
        rp[r + 1] = nnz;
        bias[r] = frand();
    }
    for (size_t i = 0; i < (size_t)k * hw; i++) x[i] = 3 * frand();
    for (int r = 0; r < m; r++)
        for (int p = 0; p < hw; p++) {
            double s = bias[r];
            for (int j = rp[r]; j < rp[r + 1]; j++) s += (double)val[j] * x[(size_t)ci[j] * hw + p];
            ref[(size_t)r * hw + p] = act(s, a);
        }
    memset(y, 0xff, sizeof(float) * (size_t)m * hw); /* NaN: catches unwritten outputs */
    ek_spmm_chw(m, k, hw, rp, ci, val, bias, x, y, a);
    char what[128];
    snprintf(what, sizeof what, "spmm[%s] m=%d k=%d hw=%d density=%.2f act=%d", ek_isa_name(ek_isa()), m, k, hw,
             density, a);
    int bad = check(what, y, ref, (size_t)m * hw);
    free(rp), free(ci), free(val), free(bias), free(x), free(y), free(ref);
    return bad;
}

static int test_conv(int cin, int cout, int h, int w, int stride, int depthwise, int a) {
    const int oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
    const int kin = depthwise ? 1 : cin;
    if (depthwise) cout = cin;
    float *x = malloc(sizeof(float) * (size_t)cin * h * w), *wt = malloc(sizeof(float) * (size_t)cout * kin * 9);
    float *bias = malloc(sizeof(float) * cout), *y = malloc(sizeof(float) * (size_t)cout * oh * ow);
    double *ref = malloc(sizeof(double) * (size_t)cout * oh * ow);
    for (size_t i = 0; i < (size_t)cin * h * w; i++) x[i] = 3 * frand();
    for (size_t i = 0; i < (size_t)cout * kin * 9; i++) wt[i] = frand();
    for (int i = 0; i < cout; i++) bias[i] = frand();
    for (int oc = 0; oc < cout; oc++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                double s = bias[oc];
                for (int q = 0; q < kin; q++) {
                    const int ic = depthwise ? oc : q;
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            const int iy = oy * stride + ky - 1, ix = ox * stride + kx - 1;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                            s += (double)wt[((size_t)oc * kin + q) * 9 + ky * 3 + kx] * x[((size_t)ic * h + iy) * w + ix];
                        }
                }
                ref[((size_t)oc * oh + oy) * ow + ox] = act(s, a);
            }
    memset(y, 0xff, sizeof(float) * (size_t)cout * oh * ow);
    if (depthwise)
        ek_dw3x3_chw(cin, h, w, stride, x, wt, bias, y, a);
    else
        ek_conv3x3_chw(cin, h, w, cout, stride, x, wt, bias, y, a);
    char what[128];
    snprintf(what, sizeof what, "%s[%s] cin=%d cout=%d %dx%d stride=%d act=%d", depthwise ? "dw3x3" : "conv3x3",
             ek_isa_name(ek_isa()), cin, cout, h, w, stride, a);
    int bad = check(what, y, ref, (size_t)cout * oh * ow);
    free(x), free(wt), free(bias), free(y), free(ref);
    return bad;
}

static int test_dense(int n, int k, int a) {
    float *x = malloc(sizeof(float) * k), *wt = malloc(sizeof(float) * (size_t)n * k), *b = malloc(sizeof(float) * n);
    float *y = malloc(sizeof(float) * n);
    double *ref = malloc(sizeof(double) * n);
    for (int i = 0; i < k; i++) x[i] = 3 * frand();
    for (size_t i = 0; i < (size_t)n * k; i++) wt[i] = frand();
    for (int i = 0; i < n; i++) {
        b[i] = frand();
        double s = b[i];
        for (int q = 0; q < k; q++) s += (double)wt[(size_t)i * k + q] * x[q];
        ref[i] = act(s, a);
    }
    memset(y, 0xff, sizeof(float) * n);
    ek_dense_chw(n, k, x, wt, b, y, a);
    char what[96];
    snprintf(what, sizeof what, "dense[%s] n=%d k=%d act=%d", ek_isa_name(ek_isa()), n, k, a);
    int bad = check(what, y, ref, (size_t)n);
    free(x), free(wt), free(b), free(y), free(ref);
    return bad;
}

int main(void) {
    int failures = 0, tested = 0;
    static const int spmm_shapes[][3] = {{96, 576, 196}, {576, 96, 196}, {24, 144, 784}, {7, 5, 37},
                                         {16, 32, 1},    {33, 17, 64},   {1, 1, 3},       {40, 8, 41}};
    static const double densities[] = {0.0, 0.05, 0.3, 1.0};
    static const int conv_shapes[][3] = {{1, 1, 1}, {2, 5, 7}, {3, 16, 16}, {4, 17, 23}, {2, 112, 112}, {5, 3, 40}};
    for (int isa = EK_ISA_PORTABLE; isa <= EK_ISA_NEON; isa++) {
        if (ek_set_isa(isa) != 0) continue;
        tested++;
        for (size_t s = 0; s < sizeof spmm_shapes / sizeof spmm_shapes[0]; s++)
            for (size_t d = 0; d < sizeof densities / sizeof densities[0]; d++)
                failures += test_spmm(spmm_shapes[s][0], spmm_shapes[s][1], spmm_shapes[s][2], densities[d],
                                      (int)((s + d) % 3));
        for (size_t s = 0; s < sizeof conv_shapes / sizeof conv_shapes[0]; s++)
            for (int stride = 1; stride <= 2; stride++) {
                failures += test_conv(conv_shapes[s][0], 0, conv_shapes[s][1], conv_shapes[s][2], stride, 1,
                                      (int)((s + stride) % 3));
                failures += test_conv(conv_shapes[s][0], 9, conv_shapes[s][1], conv_shapes[s][2], stride, 0,
                                      (int)((s + stride + 1) % 3));
            }
        static const int dense_shapes[][2] = {{1000, 1280}, {10, 32}, {7, 13}, {1, 1}, {5, 8}};
        for (size_t s = 0; s < sizeof dense_shapes / sizeof dense_shapes[0]; s++)
            failures += test_dense(dense_shapes[s][0], dense_shapes[s][1], (int)(s % 3));
        printf("isa %s: %s\n", ek_isa_name(isa), failures ? "FAILED" : "ok");
    }
    ek_set_isa(EK_ISA_AUTO);
    printf("default isa: %s; %d isa(s) tested, %d failure(s)\n", ek_isa_name(ek_isa()), tested, failures);
    return failures ? 1 : 0;
}
