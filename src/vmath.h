/* vmath.h — vectorisable exp, GELU and row reductions for the element-wise kernels (private to libmome).
 *
 * libm's expf and tanhf are scalar calls; in the loss over the vocabulary and in GELU they cost more than the
 * matrix products around them. These are branch-free inline functions that GCC vectorises (AVX2 / AVX-512) in
 * plain loops. Accuracy (checked against libm in tests/unit/test_vmath.c over the whole float range used):
 *   vm_expf:  within 2 ulp for x in [-87.3, 88.7]; 0 below (exp(-inf) = 0), +inf above.
 *   vm_gelu, vm_gelu_grad: within 1e-6 relative to max(|x|, 1e-3) for x in [-12, 12].
 * The reductions keep 16 independent partial sums (or maxima) in a fixed order, so results do not depend on
 * the thread count or the vector width chosen by the compiler, only on n.
 */
#ifndef MOME_VMATH_H
#define MOME_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define VM_LANES 16

/* exp(x): x = n ln2 + r with |r| <= ln2 / 2 (n rounded to nearest), exp(r) by the Cephes polynomial, 2^n built
 * in the exponent bits. */
static inline float vm_expf(float x) {
    const float hi = 88.7f, lo = -87.3f;
    const float xc = x > hi ? hi : (x < lo ? lo : x);
    /* n = round(x / ln2) by the 1.5 * 2^23 trick: plain adds, which compilers vectorise without -ffast-math
     * (floorf needs -fno-trapping-math to be vectorised by GCC) */
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n in two halves so that n up to 128 does not overflow the exponent field. A NaN x reaches y through p;
     * n is 0 then, since converting NaN to an integer is undefined. */
    const int32_t ni = (int32_t)(n == n ? n : 0.0f);
    const int32_t n1 = ni >> 1, n2 = ni - n1;
    const uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    const float y = p * s1 * s2;
    return x < lo ? 0.0f : (x > hi ? INFINITY : y);
}

/* GELU (tanh form) and its derivative. With u = sqrt(2/pi) (x + 0.044715 x^3), 0.5 (1 + tanh(u)) is the logistic
 * s = 1 / (1 + e), e = exp(-2u), so gelu(x) = x / (1 + e) and, since 1 - tanh^2 = 4 s (1 - s) and 1 - s = e s,
 *   gelu'(x) = s + 2 x (e s) s sqrt(2/pi) (1 + 3 * 0.044715 x^2).
 * One exp and one division, no cancellation. -2u is capped at VM_GELU_CAP so that e stays finite and s (>= 1.8e-35)
 * normal: below x = -10.4 gelu(x) is then of order 1e-34 instead of a smaller number or 0. gemm.c's AVX-512
 * epilogue evaluates the same expressions. */
#define VM_GELU_SCALING 0.7978845608028654f /* sqrt(2/pi) */
#define VM_GELU_CUBIC 0.044715f
#define VM_GELU_CAP 80.0f

static inline float vm_gelu_exp(float x) {
    const float z = -2.0f * VM_GELU_SCALING * (x + VM_GELU_CUBIC * x * x * x);
    return vm_expf(z > VM_GELU_CAP ? VM_GELU_CAP : z);
}

static inline float vm_gelu(float x) { return x / (1.0f + vm_gelu_exp(x)); }

static inline float vm_gelu_grad(float x) {
    const float e = vm_gelu_exp(x);
    const float s = 1.0f / (1.0f + e);
    const float du = 2.0f * VM_GELU_SCALING * (1.0f + 3.0f * VM_GELU_CUBIC * x * x);
    return s + x * (e * s) * s * du;
}

/* Largest of x[0..n) (n >= 1); NaN entries are ignored unless all are NaN. Lane j keeps x > acc ? x : acc, which
 * is maxps(x, acc) exactly (NaN in x keeps acc); GCC 12 leaves the plain loop scalar, so AVX-512 builds spell it. */
static inline float vm_max(const float *x, int n) {
    int i = 0;
    float m = -INFINITY;
#if defined(__AVX512F__)
    __m512 acc = _mm512_set1_ps(-INFINITY);
    for (; i + VM_LANES <= n; i += VM_LANES) acc = _mm512_max_ps(_mm512_loadu_ps(x + i), acc);
    float lanes[VM_LANES];
    _mm512_storeu_ps(lanes, acc);
#else
    float lanes[VM_LANES];
    for (int j = 0; j < VM_LANES; j++) lanes[j] = -INFINITY;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int j = 0; j < VM_LANES; j++) m = lanes[j] > m ? lanes[j] : m;
    return m;
}

/* out[i] = exp((x[i] - shift) * scale) for i < n; returns the sum of out, accumulated in float64 lanes. Two loops:
 * GCC 12 does not vectorise the fused form under the default -ftrapping-math (vm_expf's final select feeding a
 * float64 conversion is duplicated into both branches, "control flow in loop"). */
static inline double vm_exp_sum(float *restrict out, const float *restrict x, float shift, float scale, int n) {
    for (int i = 0; i < n; i++) out[i] = vm_expf((x[i] - shift) * scale);
    double acc[VM_LANES] = {0};
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) acc[j] += (double)out[i + j];
    double s = 0.0;
    for (; i < n; i++) s += (double)out[i];
    for (int j = 0; j < VM_LANES; j++) s += acc[j];
    return s;
}

/* sum of x[i], accumulated in float64 lanes. */
static inline double vm_sum(const float *x, int n) {
    double acc[VM_LANES] = {0};
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) acc[j] += (double)x[i + j];
    double s = 0.0;
    for (; i < n; i++) s += (double)x[i];
    for (int j = 0; j < VM_LANES; j++) s += acc[j];
    return s;
}

/* sum of a[i] * b[i], accumulated in float64 lanes. */
static inline double vm_dot(const float *a, const float *b, int n) {
    double acc[VM_LANES] = {0};
    int i = 0;
    for (; i + VM_LANES <= n; i += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) acc[j] += (double)a[i + j] * (double)b[i + j];
    double s = 0.0;
    for (; i < n; i++) s += (double)a[i] * (double)b[i];
    for (int j = 0; j < VM_LANES; j++) s += acc[j];
    return s;
}

#endif
