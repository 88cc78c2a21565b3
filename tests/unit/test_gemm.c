/* test_gemm.c — mome_gemm and its GELU epilogues (gemm.h) against a float64 loop, over every transpose, shapes
 * that leave partial tiles (rows not a multiple of 12, columns not a multiple of 32 or 16, K over several blocks
 * and not a multiple of 16), strided operands, bias and accumulation; then the promises the model relies on:
 * the same bits on 1 and 2 threads, a row's result independent of the other rows in the call, and the banded
 * (causal) products equal to the full ones. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "mome/gemm.h"
#include "vmath.h"

static void fill(float *x, size_t n, mome_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (float)mome_rng_normal(rng);
}

/* op(X)[i][k] of a row-major X with leading dimension ld */
static double at(const float *X, int ld, int trans, int i, int k) {
    return trans ? X[(size_t)k * ld + i] : X[(size_t)i * ld + k];
}

/* C = op(A) op(B) (+ C0 if beta) (+ bias) in float64; also the scale sum |a||b| per element for the tolerance */
static void reference(double *R, double *S, int ta, int tb, int M, int N, int K, const float *A, int lda,
                      const float *B, int ldb, const float *bias, float beta, const float *C0, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0, sa = 0.0;
            for (int k = 0; k < K; k++) {
                const double p = at(A, lda, ta, i, k) * at(B, ldb, tb, k, j);
                s += p;
                sa += fabs(p);
            }
            if (beta != 0.0f) s += C0[(size_t)i * ldc + j], sa += fabs(C0[(size_t)i * ldc + j]);
            if (bias) s += bias[j], sa += fabs(bias[j]);
            R[(size_t)i * N + j] = s;
            S[(size_t)i * N + j] = sa;
        }
}

/* worst |got - ref| / (sum |terms| + 1) over the M x N block of got (stride ldc) */
static double worst(const float *got, int ldc, const double *R, const double *S, int M, int N) {
    double w = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const double d = fabs((double)got[(size_t)i * ldc + j] - R[(size_t)i * N + j]);
            w = isnan(d) ? INFINITY : fmax(w, d / (S[(size_t)i * N + j] + 1.0));
        }
    return w;
}

static void one_case(int ta, int tb, int M, int N, int K, int pad, int with_bias, float beta, mome_rng *rng) {
    /* leading dimensions padded by `pad` so that strided operands are exercised */
    const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B), *C = malloc(nc * sizeof *C);
    float *C0 = malloc(nc * sizeof *C0), *bias = malloc((size_t)N * sizeof *bias);
    double *R = malloc((size_t)M * N * sizeof *R), *S = malloc((size_t)M * N * sizeof *S);
    fill(A, na, rng);
    fill(B, nb, rng);
    fill(C0, nc, rng);
    fill(bias, (size_t)N, rng);
    memcpy(C, C0, nc * sizeof *C);
    mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, with_bias ? bias : NULL, beta, C, ldc);
    reference(R, S, ta, tb, M, N, K, A, lda, B, ldb, with_bias ? bias : NULL, beta, C0, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm %c%c M=%d N=%d K=%d pad=%d bias=%d beta=%g", ta ? 'T' : 'N', tb ? 'T' : 'N', M,
             N, K, pad, with_bias, (double)beta);
    REPORT(what, worst(C, ldc, R, S, M, N), 1.0, 1e-6);
    /* the padding columns of C are not touched */
    int untouched = 1;
    for (int i = 0; i < M; i++)
        for (int j = N; j < ldc; j++) untouched &= C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j];
    CHECK(untouched);

    /* GELU epilogues (beta 0): h and a = gelu(h); dh = product * gelu'(h0) */
    float *h = malloc(nc * sizeof *h), *a = malloc(nc * sizeof *a), *dh = malloc(nc * sizeof *dh);
    mome_gemm_gelu(ta, tb, M, N, K, A, lda, B, ldb, with_bias ? bias : NULL, h, a, ldc);
    reference(R, S, ta, tb, M, N, K, A, lda, B, ldb, with_bias ? bias : NULL, 0.0f, NULL, ldc);
    snprintf(what, sizeof what, "gemm_gelu %c%c M=%d N=%d K=%d: h", ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K);
    REPORT(what, worst(h, ldc, R, S, M, N), 1.0, 1e-6);
    /* a = gelu(h) and dh = product * gelu'(h0), element by element; vm_gelu is evaluated in another compilation
     * context here (vectorised or not, FMA contracted or not), so to within float rounding, not bit for bit */
    double gelu_err = 0.0, grad_err = 0.0;
    mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, NULL, 0.0f, C, ldc); /* the plain product */
    mome_gemm_gelu_grad(ta, tb, M, N, K, A, lda, B, ldb, C0, dh, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const size_t o = (size_t)i * ldc + j;
            const double ga = vm_gelu(h[o]), gd = (double)C[o] * vm_gelu_grad(C0[o]);
            /* relative to the argument's size: gelu and gelu' both vanish somewhere, and there only the
             * rounding of their inputs remains */
            gelu_err = fmax(gelu_err, fabs(a[o] - ga) / (fabs((double)h[o]) + 1e-3));
            grad_err = fmax(grad_err, fabs(dh[o] - gd) / (fabs((double)C[o]) + 1e-3));
        }
    snprintf(what, sizeof what, "gemm_gelu %c%c M=%d N=%d K=%d: a = gelu(h)", ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K);
    REPORT(what, gelu_err, 1.0, 1e-5);
    snprintf(what, sizeof what, "gemm_gelu_grad %c%c M=%d N=%d K=%d", ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K);
    REPORT(what, grad_err, 1.0, 1e-5);
    free(h), free(a), free(dh);
    free(A), free(B), free(C), free(C0), free(bias), free(R), free(S);
}

/* same bits on 1 and 2 threads, and rows [r0, r1) computed alone equal the same rows of the whole call */
static void determinism(int ta, int tb, int M, int N, int K, mome_rng *rng) {
    const int lda = ta ? M : K, ldb = tb ? K : N;
    const size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B);
    float *C1 = malloc(nc * sizeof *C1), *C2 = malloc(nc * sizeof *C2), *bias = malloc((size_t)N * sizeof *bias);
    fill(A, na, rng);
    fill(B, nb, rng);
    fill(bias, (size_t)N, rng);
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, bias, 0.0f, C1, N);
    omp_set_num_threads(2);
    mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, bias, 0.0f, C2, N);
    omp_set_num_threads(saved);
    CHECK(memcmp(C1, C2, nc * sizeof *C1) == 0);
#else
    mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, bias, 0.0f, C1, N);
#endif
    if (!ta && mome_gemm_native() && M > 40) {
        /* rows 5 .. M-7 alone (more than 16 of them, so the same kernel runs): the same bits */
        const int r0 = 5, r1 = M - 7;
        memset(C2, 0, nc * sizeof *C2);
        mome_gemm(ta, tb, r1 - r0, N, K, A + (size_t)r0 * lda, lda, B, ldb, bias, 0.0f, C2 + (size_t)r0 * N, N);
        CHECK(memcmp(C1 + (size_t)r0 * N, C2 + (size_t)r0 * N, (size_t)(r1 - r0) * N * sizeof *C1) == 0);
    }
    free(A), free(B), free(C1), free(C2), free(bias);
}

/* mome_gemm_band against mome_gemm on the same operands: op(A) zero on the side the band leaves out, so every
 * element the band promises has the same bits; under COLS_UPTO_ROW the elements above the diagonal either hold the
 * full product's value or were left untouched. Square T x T score matrices as the attention uses them, with T not a
 * multiple of the tile sizes, and over two K blocks. */
static void band_case(int band, int ta, int tb, int M, int N, int K, float beta, mome_rng *rng) {
    const int lda = ta ? M : K, ldb = tb ? K : N;
    const size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B);
    float *C0 = malloc(nc * sizeof *C0), *Cf = malloc(nc * sizeof *Cf), *Cb = malloc(nc * sizeof *Cb);
    fill(A, na, rng);
    fill(B, nb, rng);
    fill(C0, nc, rng);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            const int zero = (band == MOME_BAND_K_UPTO_ROW && k > i) || (band == MOME_BAND_K_FROM_ROW && k < i);
            if (zero) A[ta ? (size_t)k * lda + i : (size_t)i * lda + k] = 0.0f;
        }
    memcpy(Cf, C0, nc * sizeof *Cf);
    memcpy(Cb, C0, nc * sizeof *Cb);
    mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, NULL, beta, Cf, N);
    mome_gemm_band(band, ta, tb, M, N, K, A, lda, B, ldb, beta, Cb, N);
    size_t differ = 0, skipped = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const size_t o = (size_t)i * N + j;
            if (memcmp(&Cb[o], &Cf[o], sizeof *Cb) == 0) continue;
            if (band == MOME_BAND_COLS_UPTO_ROW && j > i && memcmp(&Cb[o], &C0[o], sizeof *Cb) == 0)
                skipped++;
            else
                differ++;
        }
    char what[128];
    snprintf(what, sizeof what, "gemm_band %d %c%c M=%d N=%d K=%d beta=%g: elements unlike the full product", band,
             ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, (double)beta);
    REPORT(what, (double)differ, 1.0, 0.0);
    /* the kernel does skip work where it can: the tiles wholly above the diagonal of a large score matrix */
    if (band == MOME_BAND_COLS_UPTO_ROW && mome_gemm_native() && M >= 100 && N >= 100) CHECK(skipped > 0);
    free(A), free(B), free(C0), free(Cf), free(Cb);
}

int main(void) {
    mome_rng rng;
    mome_rng_seed(&rng, 7);
    printf("native kernel: %s\n", mome_gemm_native() ? "yes (AVX-512)" : "no (cblas_sgemm)");
    const int shapes[][3] = {{1, 17, 5},   {16, 16, 16},  {17, 33, 31},  {37, 70, 300}, {100, 64, 257},
                             {25, 511, 40}, {130, 48, 600}, {12, 1000, 3}, {61, 100, 0},
                             /* narrow (N < 16) and short (M <= 16): a router's logits and weight gradient */
                             {300, 4, 256}, {50, 15, 33},   {1, 5, 17},    {4, 256, 2048}, {16, 40, 700},
                             {9, 7, 1000}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                one_case(ta, tb, M, N, K, 0, 0, 0.0f, &rng);
                one_case(ta, tb, M, N, K, 3, 1, 1.0f, &rng);
            }
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            determinism(ta, tb, 203, 160, 530, &rng);
            determinism(ta, tb, 203, 7, 530, &rng);
            determinism(ta, tb, 100, 300, 530, &rng); /* wider than tall: threads split the columns */
            determinism(ta, tb, 9, 160, 4000, &rng);
        }
    const int bands[][3] = {{77, 64, 77}, {256, 64, 256}, {300, 40, 300}, {20, 17, 20}};
    for (size_t s = 0; s < sizeof bands / sizeof bands[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int T = bands[s][0], hs = bands[s][1];
                band_case(MOME_BAND_COLS_UPTO_ROW, ta, tb, T, T, hs, 0.0f, &rng);
                band_case(MOME_BAND_K_UPTO_ROW, ta, tb, T, hs, T, 0.0f, &rng);
                band_case(MOME_BAND_K_UPTO_ROW, ta, tb, T, hs, T, 1.0f, &rng);
                band_case(MOME_BAND_K_FROM_ROW, ta, tb, T, hs, T, 0.0f, &rng);
                band_case(MOME_BAND_K_FROM_ROW, ta, tb, T, hs, T, 1.0f, &rng);
            }
    mome_gemm_release();
    return check_summary("test_gemm");
}
