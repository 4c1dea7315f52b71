/* edgekit kernels: fp32 convolution kernels in CHW layout (batch 1) for what edge runtimes do not accelerate.
 *
 * All tensors are dense, row-major, fp32, batch 1, channels first: x[C][H*W]. Every kernel fuses its bias and an
 * activation (EK_ACT_*). The instruction set (AVX2+FMA, NEON, portable C) is chosen once at run time; ek_set_isa()
 * forces one (tests use it to cover every path on one machine).
 */
#ifndef EDGEKIT_KERNELS_H
#define EDGEKIT_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EK_ACT_NONE 0
#define EK_ACT_RELU 1
#define EK_ACT_RELU6 2

#define EK_ISA_AUTO -1
#define EK_ISA_PORTABLE 0
#define EK_ISA_AVX2 1
#define EK_ISA_NEON 2

/* The instruction set the kernels use now (EK_ISA_*). */
int32_t ek_isa(void);
/* Name of an EK_ISA_* value ("portable", "avx2", "neon"). */
const char *ek_isa_name(int32_t isa);
/* Forces an instruction set (EK_ISA_AUTO: the best this CPU has). Returns 0, or -1 if this CPU or build lacks it. */
int32_t ek_set_isa(int32_t isa);

/* Sparse 1x1 convolution as CSR SpMM: y[m][p] = act(bias[m] + sum_j val[j] * x[col_idx[j]][p]) for
 * j in [row_ptr[m], row_ptr[m+1]), p in [0, hw). Weights are CSR over output channels (rows = C_out,
 * columns = C_in). bias may be NULL. x and y must not overlap. */
void ek_spmm_chw(int32_t m, int32_t k, int32_t hw, const int32_t *row_ptr, const int32_t *col_idx, const float *val,
                 const float *bias, const float *x, float *y, int32_t act);

/* Depthwise 3x3 convolution, padding 1, stride 1 or 2: x[c][h][w] -> y[c][oh][ow], oh = (h - 1) / stride + 1.
 * wt is [c][9] (row-major 3x3 taps), bias [c] or NULL. */
void ek_dw3x3_chw(int32_t c, int32_t h, int32_t w, int32_t stride, const float *x, const float *wt, const float *bias,
                  float *y, int32_t act);

/* Dense 3x3 convolution, padding 1, stride 1 or 2, for few input channels (the stem of a CNN):
 * x[cin][h][w] -> y[cout][oh][ow]; wt is [cout][cin][3][3], bias [cout] or NULL. */
void ek_conv3x3_chw(int32_t cin, int32_t h, int32_t w, int32_t cout, int32_t stride, const float *x, const float *wt,
                    const float *bias, float *y, int32_t act);

/* Dense fully connected layer (matrix-vector): y[n] = act(bias[n] + sum_k wt[n][k] * x[k]); wt is [n][k]. */
void ek_dense_chw(int32_t n, int32_t k, const float *x, const float *wt, const float *bias, float *y, int32_t act);

#ifdef __cplusplus
}
#endif
#endif
