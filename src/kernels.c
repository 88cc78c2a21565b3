/* kernels.c — forward/backward kernels of the dense GPT (see kernels.h): encoder, layernorm, matmul, causal
 * attention, GELU (tanh) and residual add, plus plain-loop references for matmul and attention.
 *
 * The linear layers' and the attention's per-head products go through mome_gemm (gemm.c). Element-wise and
 * row-wise loops use OpenMP with a static schedule; reductions over rows (bias, LayerNorm and embedding
 * gradients) are split by columns, after fixed row chunks for LayerNorm, so that each output is summed in a fixed
 * order: results never depend on scheduling. The losses live in loss.c, the model in model.c.
 */
#include "mome/kernels.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/gemm.h"
#include "vmath.h"

#define LN_EPS 1e-5f
#define COL_BLOCK 64 /* columns per thread in column-split reductions */

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* dcol (C) += sum over rows of x (N, C) with row stride ld; one thread per block of columns, rows in order. */
static void column_sum_acc(float *dcol, const float *x, size_t N, int C, size_t ld) {
    const int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * COL_BLOCK;
        const int c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
        double acc[COL_BLOCK] = {0};
        for (size_t i = 0; i < N; i++) {
            const float *row = x + i * ld;
            for (int c = c0; c < c1; c++) acc[c - c0] += row[c];
        }
        for (int c = c0; c < c1; c++) dcol[c] += (float)acc[c - c0];
    }
}

/* ------------------------------------------------------------------------------------------------ encoder */

void mome_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B, int T, int C) {
    // out is (B,T,C), inp is (B,T), wte is (V,C), wpe is (T_max,C)
    const size_t BT = (size_t)B * (size_t)T;
#pragma omp parallel for schedule(static)
    for (size_t bt = 0; bt < BT; bt++) {
        const size_t t = bt % (size_t)T;
        float *o = out + bt * (size_t)C;
        const float *e = wte + (size_t)inp[bt] * (size_t)C;
        const float *p = wpe + t * (size_t)C;
        for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
    }
}

void mome_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B, int T, int C) {
    // dwte is (V,C), dwpe is (T_max,C), dout is (B,T,C), inp is (B,T)
    // Split by columns: every dwte/dwpe entry is summed by one thread, tokens in (b,t) order.
    const int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * COL_BLOCK;
        const int c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                const size_t bt = (size_t)b * T + t;
                const float *d = dout + bt * (size_t)C;
                float *de = dwte + (size_t)inp[bt] * (size_t)C;
                float *dp = dwpe + (size_t)t * (size_t)C;
                for (int c = c0; c < c1; c++) {
                    de[c] += d[c];
                    dp[c] += d[c];
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------- layernorm */

void mome_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                            size_t N, int C) {
    // out is (N,C), mean and rstd are (N), inp is (N,C), w and b are (C)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        const float *x = inp + i * (size_t)C;
        const double m = vm_sum(x, C) / C;
        double vl[VM_LANES] = {0};
        int c0 = 0;
        for (; c0 + VM_LANES <= C; c0 += VM_LANES)
            for (int j = 0; j < VM_LANES; j++) {
                const double d = x[c0 + j] - m;
                vl[j] += d * d;
            }
        double v = 0.0;
        for (; c0 < C; c0++) v += (x[c0] - m) * (x[c0] - m);
        for (int j = 0; j < VM_LANES; j++) v += vl[j];
        const float rs = (float)(1.0 / sqrt(v / C + (double)LN_EPS));
        const float mf = (float)m;
        float *o = out + i * (size_t)C;
        for (int c = 0; c < C; c++) o[c] = (x[c] - mf) * rs * w[c] + b[c];
        mean[i] = mf;
        rstd[i] = rs;
    }
}

/* LayerNorm backward in one pass over the rows, in chunks of LN_CHUNK rows: each chunk's rows get d(inp), and the
 * chunk's partial sums of d(w) and d(b) (float, at most LN_CHUNK terms) go to a scratch row; the partials are then
 * summed over the chunks in order, in float64. The chunks are fixed, so the bits do not depend on the threads. */
#define LN_CHUNK 32
static _Thread_local float *ln_part;
static _Thread_local size_t ln_part_cap;

/* One row of LayerNorm backward: di += rs * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), and the row's
 * terms of d(w) and d(b) added to pw and pb. The two means sum 16 float lanes, then the lanes in float64. */
static void ln_backward_row(float *restrict di, float *restrict pw, float *restrict pb, const float *restrict d,
                            const float *restrict x, const float *restrict w, float m, float rs, int C) {
    float al[VM_LANES] = {0}, bl[VM_LANES] = {0}; /* lanes of sum dnorm, sum dnorm * norm */
    int c0 = 0;
    for (; c0 + VM_LANES <= C; c0 += VM_LANES)
        for (int j = 0; j < VM_LANES; j++) {
            const float norm = (x[c0 + j] - m) * rs;
            const float dnorm = w[c0 + j] * d[c0 + j];
            al[j] += dnorm;
            bl[j] += dnorm * norm;
        }
    double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
    for (; c0 < C; c0++) {
        const float norm = (x[c0] - m) * rs;
        const float dnorm = w[c0] * d[c0];
        dnorm_mean += dnorm;
        dnorm_norm_mean += (double)dnorm * norm;
    }
    for (int j = 0; j < VM_LANES; j++) {
        dnorm_mean += al[j];
        dnorm_norm_mean += bl[j];
    }
    const float dm = (float)(dnorm_mean / C), dnm = (float)(dnorm_norm_mean / C);
    for (int c = 0; c < C; c++) {
        const float norm = (x[c] - m) * rs;
        const float dnorm = w[c] * d[c];
        di[c] += rs * (dnorm - dm - norm * dnm);
        pw[c] += norm * d[c];
        pb[c] += d[c];
    }
}

void mome_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                             const float *mean, const float *rstd, size_t N, int C) {
    // dinp is (N,C), dw and db are (C), dout and inp are (N,C), mean and rstd are (N)
    const size_t n_chunks = (N + LN_CHUNK - 1) / LN_CHUNK, uC = (size_t)C;
    /* chunk q: d(w) partials at part[2qC..), d(b) at part[(2q+1)C..) */
    float *part = mome_reserve_floats(&ln_part, &ln_part_cap, n_chunks * 2 * uC);
#pragma omp parallel for schedule(static)
    for (size_t q = 0; q < n_chunks; q++) {
        float *pw = part + 2 * q * uC, *pb = pw + uC;
        memset(pw, 0, 2 * uC * sizeof *pw);
        const size_t i1 = (q + 1) * LN_CHUNK < N ? (q + 1) * LN_CHUNK : N;
        for (size_t i = q * LN_CHUNK; i < i1; i++)
            ln_backward_row(dinp + i * uC, pw, pb, dout + i * uC, inp + i * uC, w, mean[i], rstd[i], C);
    }
    column_sum_acc(dw, part, n_chunks, C, 2 * uC);
    column_sum_acc(db, part + uC, n_chunks, C, 2 * uC);
}

/* ------------------------------------------------------------------------------------------------- matmul */

void mome_matmul_forward(float *out, const float *inp, const float *w, const float *bias, size_t N, int IC, int OC) {
    // out is (N,OC), inp is (N,IC), w is (OC,IC), bias is (OC) or NULL
    MOME_CHECK(N <= INT_MAX && IC > 0 && OC > 0, "matmul: bad sizes N=%zu IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    mome_gemm(0, 1, (int)N, OC, IC, inp, IC, w, IC, bias, 0.0f, out, OC);
}

static void matmul_backward(float *dinp, float dinp_beta, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, size_t N, int IC, int OC) {
    // dinp is (N,IC) or NULL, dw is (OC,IC), dbias is (OC) or NULL, dout is (N,OC), inp is (N,IC), w is (OC,IC)
    MOME_CHECK(N <= INT_MAX && IC > 0 && OC > 0, "matmul: bad sizes N=%zu IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    if (dinp) mome_gemm(0, 0, (int)N, IC, OC, dout, OC, w, IC, NULL, dinp_beta, dinp, IC);
    mome_gemm(1, 0, OC, IC, (int)N, dout, OC, inp, IC, NULL, 1.0f, dw, IC);
    if (dbias) column_sum_acc(dbias, dout, N, OC, (size_t)OC);
}

void mome_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w,
                          size_t N, int IC, int OC) {
    matmul_backward(dinp, 1.0f, dw, dbias, dout, inp, w, N, IC, OC);
}

void mome_matmul_backward_to(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                             const float *w, size_t N, int IC, int OC) {
    MOME_CHECK(dinp != NULL, "matmul backward_to: dinp is NULL");
    matmul_backward(dinp, 0.0f, dw, dbias, dout, inp, w, N, IC, OC);
}

void mome_matmul_gelu_forward(float *h, float *a, const float *inp, const float *w, const float *bias, size_t N,
                              int IC, int OC) {
    MOME_CHECK(N <= INT_MAX && IC > 0 && OC > 0, "matmul: bad sizes N=%zu IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    mome_gemm_gelu(0, 1, (int)N, OC, IC, inp, IC, w, IC, bias, h, a, OC);
}

void mome_matmul_gelu_backward(float *dh, float *dw, float *dbias, const float *dout, const float *inp,
                               const float *h, const float *w, size_t N, int IC, int OC) {
    MOME_CHECK(N <= INT_MAX && IC > 0 && OC > 0, "matmul: bad sizes N=%zu IC=%d OC=%d", N, IC, OC);
    if (N == 0) return;
    mome_gemm_gelu_grad(0, 0, (int)N, IC, OC, dout, OC, w, IC, h, dh, IC);
    mome_gemm(1, 0, OC, IC, (int)N, dout, OC, inp, IC, NULL, 1.0f, dw, IC);
    if (dbias) column_sum_acc(dbias, dout, N, OC, (size_t)OC);
}

void mome_matmul_forward_ref(float *out, const float *inp, const float *w, const float *bias, size_t N, int IC,
                             int OC) {
    for (size_t i = 0; i < N; i++) {
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int k = 0; k < IC; k++) s += (double)inp[i * (size_t)IC + k] * w[(size_t)o * IC + k];
            out[i * (size_t)OC + o] = (float)s;
        }
    }
}

void mome_matmul_backward_ref(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                              const float *w, size_t N, int IC, int OC) {
    if (dinp) {
        for (size_t i = 0; i < N; i++) {
            for (int k = 0; k < IC; k++) {
                double s = 0.0;
                for (int o = 0; o < OC; o++) s += (double)dout[i * (size_t)OC + o] * w[(size_t)o * IC + k];
                dinp[i * (size_t)IC + k] += (float)s;
            }
        }
    }
    for (int o = 0; o < OC; o++) {
        for (int k = 0; k < IC; k++) {
            double s = 0.0;
            for (size_t i = 0; i < N; i++) s += (double)dout[i * (size_t)OC + o] * inp[i * (size_t)IC + k];
            dw[(size_t)o * IC + k] += (float)s;
        }
        if (dbias) {
            double s = 0.0;
            for (size_t i = 0; i < N; i++) s += dout[i * (size_t)OC + o];
            dbias[o] += (float)s;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- attention */

/* The (b,h) pairs run on OpenMP threads, each calling single-threaded sgemm on its own slices. An OpenMP build
 * of OpenBLAS (openblas_get_parallel() == 2) runs single-threaded inside a parallel region by itself, and its
 * openblas_set_num_threads would change the OpenMP thread count of the region: leave it alone. A pthreads
 * build has its own pool, turned down to 1 thread for that time and restored after. (OpenBLAS splits an sgemm
 * over rows and columns only, never over the inner dimension, so the numbers do not depend on its thread count
 * either.) */
static int blas_single_begin(void) {
    if (openblas_get_parallel() == 2) return 1;
    int n = openblas_get_num_threads();
    if (n != 1) openblas_set_num_threads(1);
    return n;
}

static void blas_single_end(int n) {
    if (n != 1) openblas_set_num_threads(n);
}

/* Causal products: mome_gemm_band leaves out the scores above the diagonal (in whole 12 x 32 register tiles) and the
 * zero terms of the products that follow (in 12-row steps), so a head's products each run once over the whole
 * sequence, with its keys and values packed once: at T = 256, hs = 64 they do 0.53-0.61 of the full T x T work. */
void mome_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    // out is (B,T,C), att is (B,NH,T,T), qkv is (B,T,3C)
    MOME_CHECK(NH > 0 && C % NH == 0, "attention: C=%d not divisible by NH=%d", C, NH);
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    const int nbh = B * NH;
    const int saved = blas_single_begin();
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < nbh; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs; // (T,hs) rows of stride 3C
        const float *k = q + C;
        const float *v = q + 2 * C;
        float *a = att + (size_t)bh * T * T; // (T,T)
        float *o = out + (size_t)b * T * C + (size_t)h * hs; // (T,hs) rows of stride C
        mome_gemm_band(MOME_BAND_COLS_UPTO_ROW, 0, 1, T, T, hs, q, C3, k, C3, 0.0f, a, T); /* unscaled scores */
        for (int i = 0; i < T; i++) {
            float *row = a + (size_t)i * T;
            const float mx = vm_max(row, i + 1);
            for (int j = 0; j <= i; j++) row[j] = vm_expf((row[j] - mx) * scale);
            const float inv = (float)(1.0 / vm_sum(row, i + 1));
            for (int j = 0; j <= i; j++) row[j] *= inv;
            for (int j = i + 1; j < T; j++) row[j] = 0.0f;
        }
        mome_gemm_band(MOME_BAND_K_UPTO_ROW, 0, 0, T, hs, T, a, T, v, C3, 0.0f, o, C);
    }
    blas_single_end(saved);
}

void mome_attention_step(float *out, float *att, const float *q, int q_stride, const float *kv, int B, int T_cap,
                         int n, int C, int NH) {
    MOME_CHECK(NH > 0 && C % NH == 0, "attention step: C=%d not divisible by NH=%d", C, NH);
    MOME_CHECK(n >= 1 && n <= T_cap, "attention step: %d positions, the cache holds %d", n, T_cap);
    const int hs = C / NH, C2 = 2 * C;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *qh = q + (size_t)b * (size_t)q_stride + (size_t)h * hs;
        const float *k = kv + (size_t)b * (size_t)T_cap * C2 + (size_t)h * hs; /* position j: k + j * 2C */
        float *s = att + (size_t)bh * (size_t)n;
        for (int j = 0; j < n; j++) s[j] = (float)vm_dot(qh, k + (size_t)j * C2, hs) * scale;
        const float mx = vm_max(s, n);
        for (int j = 0; j < n; j++) s[j] = vm_expf(s[j] - mx);
        const float inv = (float)(1.0 / vm_sum(s, n));
        float *o = out + (size_t)b * C + (size_t)h * hs;
        memset(o, 0, (size_t)hs * sizeof *o);
        for (int j = 0; j < n; j++) {
            const float w = s[j] * inv, *v = k + (size_t)j * C2 + C;
            for (int i = 0; i < hs; i++) o[i] += w * v[i];
        }
    }
}

void mome_attention_backward(float *dqkv, float *scratch, int n_scratch, const float *dout, const float *qkv,
                             const float *att, int B, int T, int C, int NH) {
    // dqkv is (B,T,3C), scratch is (n_scratch,T,T), dout is (B,T,C), qkv is (B,T,3C), att is (B,NH,T,T)
    MOME_CHECK(NH > 0 && C % NH == 0, "attention: C=%d not divisible by NH=%d", C, NH);
    MOME_CHECK(n_scratch >= 1, "attention backward: n_scratch %d < 1", n_scratch);
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    const int nbh = B * NH;
    int nt = max_threads();
    if (nt > n_scratch) nt = n_scratch;
    const int saved = blas_single_begin();
#pragma omp parallel num_threads(nt)
    {
        float *datt = scratch + (size_t)thread_id() * T * T; // (T,T), becomes d(pre-softmax) in place
#pragma omp for schedule(static)
        for (int bh = 0; bh < nbh; bh++) {
            const int b = bh / NH, h = bh % NH;
            const size_t base = (size_t)b * T * C3 + (size_t)h * hs;
            const float *q = qkv + base, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + base, *dk = dq + C, *dv = dq + 2 * C;
            const float *a = att + (size_t)bh * T * T;
            const float *d = dout + (size_t)b * T * C + (size_t)h * hs;
            // datt = dout_h · v^T ; dv = att^T · dout_h
            mome_gemm_band(MOME_BAND_COLS_UPTO_ROW, 0, 1, T, T, hs, d, C, v, C3, 0.0f, datt, T);
            mome_gemm_band(MOME_BAND_K_FROM_ROW, 1, 0, T, hs, T, a, T, d, C, 0.0f, dv, C3);
            // softmax backward, row by row: dpre = att * (datt - sum(att * datt)), times the score scale; zero above
            // the diagonal, where the products below read it
            for (int i = 0; i < T; i++) {
                const float *arow = a + (size_t)i * T;
                float *row = datt + (size_t)i * T;
                const float dot = (float)vm_dot(arow, row, i + 1);
                for (int j = 0; j <= i; j++) row[j] = arow[j] * (row[j] - dot) * scale;
                for (int j = i + 1; j < T; j++) row[j] = 0.0f;
            }
            // dq = dpre · k ; dk = dpre^T · q   (dpre carries the score scale)
            mome_gemm_band(MOME_BAND_K_UPTO_ROW, 0, 0, T, hs, T, datt, T, k, C3, 0.0f, dq, C3);
            mome_gemm_band(MOME_BAND_K_FROM_ROW, 1, 0, T, hs, T, datt, T, q, C3, 0.0f, dk, C3);
        }
    }
    blas_single_end(saved);
}

void mome_attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    const int hs = C / NH, C3 = 3 * C;
    const double scale = 1.0 / sqrt((double)hs);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * C3 + (size_t)h * hs;
                float *a = att + (((size_t)b * NH + h) * T + t) * T;
                double mx = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = qkv + ((size_t)b * T + t2) * C3 + C + (size_t)h * hs;
                    double s = 0.0;
                    for (int i = 0; i < hs; i++) s += (double)q[i] * k[i];
                    s *= scale;
                    a[t2] = (float)s;
                    if (s > mx) mx = s;
                }
                double sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) sum += exp(a[t2] - mx);
                for (int t2 = 0; t2 < T; t2++) a[t2] = t2 <= t ? (float)(exp(a[t2] - mx) / sum) : 0.0f;
                float *o = out + ((size_t)b * T + t) * C + (size_t)h * hs;
                for (int i = 0; i < hs; i++) {
                    double s = 0.0;
                    for (int t2 = 0; t2 <= t; t2++)
                        s += (double)a[t2] * qkv[((size_t)b * T + t2) * C3 + 2 * C + (size_t)h * hs + i];
                    o[i] = (float)s;
                }
            }
        }
    }
}

void mome_attention_backward_ref(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T,
                                 int C, int NH) {
    memset(dqkv, 0, (size_t)B * T * 3 * C * sizeof *dqkv);
    const int hs = C / NH, C3 = 3 * C;
    const double scale = 1.0 / sqrt((double)hs);
    double *datt = mome_malloc((size_t)T * sizeof *datt);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const float *a = att + (((size_t)b * NH + h) * T + t) * T;
                const float *d = dout + ((size_t)b * T + t) * C + (size_t)h * hs;
                const float *q = qkv + ((size_t)b * T + t) * C3 + (size_t)h * hs;
                float *dq = dqkv + ((size_t)b * T + t) * C3 + (size_t)h * hs;
                double dot = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = qkv + ((size_t)b * T + t2) * C3 + 2 * C + (size_t)h * hs;
                    float *dv = dqkv + ((size_t)b * T + t2) * C3 + 2 * C + (size_t)h * hs;
                    double s = 0.0;
                    for (int i = 0; i < hs; i++) {
                        s += (double)d[i] * v[i];
                        dv[i] += a[t2] * d[i];
                    }
                    datt[t2] = s;
                    dot += a[t2] * s;
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    const double dpre = a[t2] * (datt[t2] - dot) * scale;
                    const float *k = qkv + ((size_t)b * T + t2) * C3 + C + (size_t)h * hs;
                    float *dk = dqkv + ((size_t)b * T + t2) * C3 + C + (size_t)h * hs;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += (float)(dpre * k[i]);
                        dk[i] += (float)(dpre * q[i]);
                    }
                }
            }
        }
    }
    mome_free(datt);
}

/* --------------------------------------------------------------------------------------------------- GELU */
/* GELU through vmath.h's vm_gelu (one vectorised exp): libm's tanhf is a scalar call and made GELU cost more
 * than the products around it. */

void mome_gelu_forward(float *out, const float *inp, size_t n) {
    // out and inp are (n)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = vm_gelu(inp[i]);
}

void mome_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    // dinp, inp and dout are (n)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] += vm_gelu_grad(inp[i]) * dout[i];
}

void mome_gelu_backward_to(float *dinp, const float *inp, const float *dout, size_t n) {
    // dinp, inp and dout are (n)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] = vm_gelu_grad(inp[i]) * dout[i];
}

/* ----------------------------------------------------------------------------------------------- residual */

void mome_zero(float *x, size_t n) {
    const size_t chunk = (size_t)1 << 16;
#pragma omp parallel for schedule(static) if (n > chunk)
    for (size_t i = 0; i < n; i += chunk) memset(x + i, 0, (n - i < chunk ? n - i : chunk) * sizeof *x);
}

void mome_residual_forward(float *out, const float *a, const float *b, size_t n) {
    // out, a and b are (n)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void mome_residual_backward(float *da, float *db, const float *dout, size_t n) {
    // da, db and dout are (n)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}
