/* The kernels as TVM-FFI C ABI functions (`__tvm_ffi_<name>`), so a Relax program calls them with
 * relax.op.call_dps_packed("<name>", ...) once this object is linked into the model library by export_library.
 * Destination-passing style: inputs first, then int parameters, the output tensor last. Tensors are NCHW, batch 1,
 * fp32, compact. */
#include <stdio.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

#include "edgekit_kernels.h"

static DLTensor *as_tensor(const TVMFFIAny *a) {
    if (a->type_index == kTVMFFIDLTensorPtr) return (DLTensor *)a->v_ptr;
    if (a->type_index == kTVMFFITensor) return (DLTensor *)((char *)a->v_obj + sizeof(TVMFFIObject));
    return NULL;
}

static int fail(const char *fn, const char *msg) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s: %s", fn, msg);
    TVMFFIErrorSetRaisedFromCStr("ValueError", buf);
    return -1;
}

static int compact(const DLTensor *t) {
    if (!t->strides) return 1;
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != s) return 0;
        s *= t->shape[i];
    }
    return 1;
}

/* Unpacks `n` arguments: tensors where kinds[i] is 't' (with dtype code/bits checked), ints where it is 'i'. */
static int unpack(const char *fn, const TVMFFIAny *args, int32_t num_args, const char *kinds, DLTensor **t,
                  int64_t *iv) {
    const int n = (int)strlen(kinds);
    if (num_args != n) return fail(fn, "wrong number of arguments");
    for (int i = 0; i < n; i++) {
        if (kinds[i] == 'i') {
            if (args[i].type_index != kTVMFFIInt && args[i].type_index != kTVMFFIBool)
                return fail(fn, "expected an int argument");
            iv[i] = args[i].v_int64;
            continue;
        }
        DLTensor *x = as_tensor(&args[i]);
        if (!x) return fail(fn, "expected a tensor argument");
        if (x->device.device_type != kDLCPU) return fail(fn, "tensors must be on the CPU");
        if (!compact(x)) return fail(fn, "tensors must be compact");
        const int want_int = kinds[i] == 'n'; /* 'n': int32 index tensor, 't': float32 */
        if (x->dtype.bits != 32 || x->dtype.lanes != 1 || x->dtype.code != (want_int ? kDLInt : kDLFloat))
            return fail(fn, want_int ? "index tensors must be int32" : "tensors must be float32");
        t[i] = x;
    }
    return 0;
}

#define DATA(T, x) ((T *)((char *)(x)->data + (x)->byte_offset))

static int chw(const DLTensor *x, int64_t *c, int64_t *h, int64_t *w) {
    if (x->ndim != 4 || x->shape[0] != 1) return -1;
    *c = x->shape[1], *h = x->shape[2], *w = x->shape[3];
    return 0;
}

static void set_none(TVMFFIAny *result) {
    if (result) memset(result, 0, sizeof(*result)); /* kTVMFFINone */
}

/* edgekit_spmm(x[1,K,H,W], row_ptr[M+1] i32, col_idx[nnz] i32, val[nnz], bias[M], act, y[1,M,H,W]) */
TVM_FFI_DLL_EXPORT int __tvm_ffi_edgekit_spmm(void *self, const TVMFFIAny *args, int32_t num_args,
                                              TVMFFIAny *result) {
    DLTensor *t[7];
    int64_t iv[7];
    if (unpack("edgekit_spmm", args, num_args, "tnnttit", t, iv)) return -1;
    int64_t k, h, w, m, oh, ow;
    if (chw(t[0], &k, &h, &w) || chw(t[6], &m, &oh, &ow) || oh != h || ow != w)
        return fail("edgekit_spmm", "x and y must be [1, C, H, W] with the same H, W");
    if (t[1]->ndim != 1 || t[1]->shape[0] != m + 1 || t[4]->ndim != 1 || t[4]->shape[0] != m)
        return fail("edgekit_spmm", "row_ptr must have M+1 entries and bias M");
    ek_spmm_chw((int32_t)m, (int32_t)k, (int32_t)(h * w), DATA(int32_t, t[1]), DATA(int32_t, t[2]),
                DATA(float, t[3]), DATA(float, t[4]), DATA(float, t[0]), DATA(float, t[6]), (int32_t)iv[5]);
    set_none(result);
    return 0;
}

/* edgekit_dw3x3(x[1,C,H,W], w[C,1,3,3], bias[C], stride, act, y[1,C,OH,OW]) */
TVM_FFI_DLL_EXPORT int __tvm_ffi_edgekit_dw3x3(void *self, const TVMFFIAny *args, int32_t num_args,
                                               TVMFFIAny *result) {
    DLTensor *t[6];
    int64_t iv[6];
    if (unpack("edgekit_dw3x3", args, num_args, "tttiit", t, iv)) return -1;
    int64_t c, h, w, oc, oh, ow;
    const int64_t s = iv[3];
    if ((s != 1 && s != 2) || chw(t[0], &c, &h, &w) || chw(t[5], &oc, &oh, &ow) || oc != c ||
        oh != (h - 1) / s + 1 || ow != (w - 1) / s + 1)
        return fail("edgekit_dw3x3", "shapes do not match a 3x3 depthwise convolution with padding 1");
    ek_dw3x3_chw((int32_t)c, (int32_t)h, (int32_t)w, (int32_t)s, DATA(float, t[0]), DATA(float, t[1]),
                 DATA(float, t[2]), DATA(float, t[5]), (int32_t)iv[4]);
    set_none(result);
    return 0;
}

/* edgekit_conv3x3(x[1,Cin,H,W], w[Cout,Cin,3,3], bias[Cout], stride, act, y[1,Cout,OH,OW]) */
TVM_FFI_DLL_EXPORT int __tvm_ffi_edgekit_conv3x3(void *self, const TVMFFIAny *args, int32_t num_args,
                                                 TVMFFIAny *result) {
    DLTensor *t[6];
    int64_t iv[6];
    if (unpack("edgekit_conv3x3", args, num_args, "tttiit", t, iv)) return -1;
    int64_t c, h, w, oc, oh, ow;
    const int64_t s = iv[3];
    if ((s != 1 && s != 2) || chw(t[0], &c, &h, &w) || chw(t[5], &oc, &oh, &ow) || oh != (h - 1) / s + 1 ||
        ow != (w - 1) / s + 1 || t[1]->ndim != 4 || t[1]->shape[0] != oc || t[1]->shape[1] != c)
        return fail("edgekit_conv3x3", "shapes do not match a 3x3 convolution with padding 1");
    ek_conv3x3_chw((int32_t)c, (int32_t)h, (int32_t)w, (int32_t)oc, (int32_t)s, DATA(float, t[0]), DATA(float, t[1]),
                   DATA(float, t[2]), DATA(float, t[5]), (int32_t)iv[4]);
    set_none(result);
    return 0;
}

/* edgekit_dense(x[1,K], w[N,K], bias[N], act, y[1,N]) */
TVM_FFI_DLL_EXPORT int __tvm_ffi_edgekit_dense(void *self, const TVMFFIAny *args, int32_t num_args,
                                               TVMFFIAny *result) {
    DLTensor *t[5];
    int64_t iv[5];
    if (unpack("edgekit_dense", args, num_args, "tttit", t, iv)) return -1;
    if (t[0]->ndim != 2 || t[0]->shape[0] != 1 || t[1]->ndim != 2 || t[1]->shape[1] != t[0]->shape[1] ||
        t[4]->ndim != 2 || t[4]->shape[0] != 1 || t[4]->shape[1] != t[1]->shape[0] || t[2]->ndim != 1 ||
        t[2]->shape[0] != t[1]->shape[0])
        return fail("edgekit_dense", "need x[1,K], w[N,K], bias[N], y[1,N]");
    ek_dense_chw((int32_t)t[1]->shape[0], (int32_t)t[1]->shape[1], DATA(float, t[0]), DATA(float, t[1]),
                 DATA(float, t[2]), DATA(float, t[4]), (int32_t)iv[3]);
    set_none(result);
    return 0;
}
