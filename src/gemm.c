/* gemm.c — mome_gemm (gemm.h): the model's matrix products on an AVX-512 kernel of mome's own.
 *
 * Why not cblas_sgemm alone: OpenBLAS packs both operands on every call (12% of the step's samples) and its
 * threads share each product in a way that loses a tenth at the model's shapes (a few hundred to two thousand
 * rows, inner dimensions 256 to 4096). Here only B is packed, once per call, into panels of 32 columns (K x 32,
 * contiguous); op(A) = A is read in place, op(A) = A^T is copied tile by tile. Each thread owns a contiguous range
 * of C's rows and walks it in 12 x 32 tiles held in 24 zmm registers: columns in blocks of 512 (their panels stay
 * in L2), K in blocks of 256 (a panel block, 32 KiB, stays in L1 while the tiles pass). Per k a tile loads two
 * vectors of the panel and broadcasts 12 elements of A into 24 FMAs, so the loop is bound by the FMA ports.
 * bench/gemm_rate compares the two at the benchmark's shapes: on 2 cores of this machine mome_gemm was faster on
 * all 12, by 4-25% (2026-11-24). Causal products (mome_gemm_band) skip whole tiles and exact-zero terms.
 *
 * Determinism: an element of C is the sum over its K blocks, each an FMA chain from zero in k order, added to
 * C in block order; which thread or tile computes it, and how many rows share the call, does not enter. */
#include "mome/gemm.h"

#include <cblas.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "vmath.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define GEMM_NATIVE 1
#else
#define GEMM_NATIVE 0
#endif

/* What happens to a finished tile of C (after its last K block): nothing, a = gelu(C), or C *= gelu'(h); and which
 * tiles and terms a causal product may skip. */
typedef struct {
    int kind; /* EPI_NONE, EPI_GELU, EPI_GELU_GRAD */
    float *a;
    const float *h;
    int band; /* MOME_BAND_* (gemm.h): the terms and tiles the product may skip */
} epilogue;
enum { EPI_NONE, EPI_GELU, EPI_GELU_GRAD };

#if GEMM_NATIVE
static __mmask16 lane_mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u); }

/* vmath.h's GELU on 16 lanes, the same expressions: e = exp(-2u) (vm_expf's polynomial, 2^n by scalef), with the
 * argument capped to [-87.3, VM_GELU_CAP]; below -87.3 e is below 1.2e-38 and 1 + e is 1 either way. */
static inline __m512 gelu_exp16(__m512 x) {
    const __m512 x2 = _mm512_mul_ps(x, x);
    const __m512 u = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(VM_GELU_CUBIC), x2), x, x),
                                   _mm512_set1_ps(-2.0f * VM_GELU_SCALING));
    const __m512 z = _mm512_max_ps(_mm512_min_ps(u, _mm512_set1_ps(VM_GELU_CAP)), _mm512_set1_ps(-87.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), z);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* The epilogue on the lanes m of C[o..o+16) (a and h at the same offset from their bases). */
static inline void epi16(const epilogue *e, float *C, size_t o, __mmask16 m) {
    const __m512 one = _mm512_set1_ps(1.0f);
    if (e->kind == EPI_GELU) {
        const __m512 x = _mm512_maskz_loadu_ps(m, C + o);
        _mm512_mask_storeu_ps(e->a + o, m, _mm512_div_ps(x, _mm512_add_ps(one, gelu_exp16(x))));
        return;
    }
    const __m512 x = _mm512_maskz_loadu_ps(m, e->h + o);
    const __m512 ex = gelu_exp16(x);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, ex));
    const __m512 du = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(3.0f * VM_GELU_CUBIC), one),
                                    _mm512_set1_ps(2.0f * VM_GELU_SCALING));
    const __m512 g = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(x, _mm512_mul_ps(ex, s)), s), du, s);
    _mm512_mask_storeu_ps(C + o, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, C + o), g));
}
#endif

/* The epilogue on rows [i0, i0 + mr), columns [j0, j0 + nv) of C. The AVX-512 build takes the vector form in
 * every path (its own tiles and the cblas fallback), so that an element's bits do not depend on the call's
 * shape; vmath.h's scalar form is within rounding of it. */
static void epi_rows(const epilogue *e, float *C, int ldc, size_t i0, int mr, int j0, int nv) {
    for (int r = 0; r < mr; r++) {
        const size_t o = (i0 + (size_t)r) * (size_t)ldc + (size_t)j0;
#if GEMM_NATIVE
        for (int j = 0; j < nv; j += 16) epi16(e, C, o + (size_t)j, lane_mask(nv - j));
#else
        float *c = C + o;
        if (e->kind == EPI_GELU) {
            float *a = e->a + o;
            for (int j = 0; j < nv; j++) a[j] = vm_gelu(c[j]);
        } else {
            const float *h = e->h + o;
            for (int j = 0; j < nv; j++) c[j] *= vm_gelu_grad(h[j]);
        }
#endif
    }
}

static void blas(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                 const float *bias, float beta, float *C, int ldc) {
    if (bias) {
#pragma omp parallel for schedule(static) if ((size_t)M * (size_t)N > 65536)
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * (size_t)ldc;
            if (beta == 0.0f)
                memcpy(c, bias, (size_t)N * sizeof *c);
            else
                for (int j = 0; j < N; j++) c[j] += bias[j];
        }
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A,
                lda, B, ldb, beta, C, ldc);
}

/* The call on cblas_sgemm (or, with K = 0, just beta C + bias), then the epilogue over whole rows. */
static void gemm_blas(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                      const float *bias, float beta, float *C, int ldc, const epilogue *e, int in_parallel) {
    if (K == 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (size_t)i * (size_t)ldc + j;
                *c = (beta == 0.0f ? 0.0f : *c) + (bias ? bias[j] : 0.0f);
            }
    } else {
        blas(ta, tb, M, N, K, A, lda, B, ldb, bias, beta, C, ldc);
    }
    if (e->kind != EPI_NONE) {
#pragma omp parallel for schedule(static) if (!in_parallel && (size_t)M * (size_t)N > 65536)
        for (int i = 0; i < M; i++) epi_rows(e, C, ldc, (size_t)i, 1, 0, N);
    }
}

int mome_gemm_native(void) { return GEMM_NATIVE; }

#if GEMM_NATIVE

#define MR 12  /* rows of a register tile */
#define NR 32  /* columns of a register tile and of a packed panel: two zmm */
#define KCB 256 /* K per block */
#define NCB 512 /* columns per block */

static _Thread_local float *pack_buf;
static _Thread_local size_t pack_cap; /* floats */

void mome_gemm_release(void) {
    mome_free(pack_buf);
    pack_buf = NULL;
    pack_cap = 0;
}

/* The calling thread's packing buffer, grown to at least `need` floats (only the first calls of a run allocate). */
static float *pack_reserve(size_t need) { return mome_reserve_floats(&pack_buf, &pack_cap, need); }

/* A 16 x 16 block transpose: dst[k * dld + c] = src[c * sld + k] for k, c < 16. */
static inline void transpose16(float *dst, size_t dld, const float *src, size_t sld) {
    __m512 r[16], t[16];
    for (int c = 0; c < 16; c++) r[c] = _mm512_loadu_ps(src + (size_t)c * sld);
    for (int k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 16; k += 4) {
        r[k] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[k]), _mm512_castps_pd(t[k + 2])));
        r[k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[k]), _mm512_castps_pd(t[k + 2])));
        r[k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[k + 1]), _mm512_castps_pd(t[k + 3])));
        r[k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[k + 1]), _mm512_castps_pd(t[k + 3])));
    }
    for (int k = 0; k < 16; k += 8)
        for (int q = 0; q < 4; q++) {
            t[k + q] = _mm512_shuffle_f32x4(r[k + q], r[k + q + 4], 0x88);
            t[k + q + 4] = _mm512_shuffle_f32x4(r[k + q], r[k + q + 4], 0xdd);
        }
    for (int q = 0; q < 8; q++) {
        r[q] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88);
        r[q + 8] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0xdd);
    }
    for (int k = 0; k < 16; k++) _mm512_storeu_ps(dst + (size_t)k * dld, r[k]); /* r[k]: element k of each row */
}

/* Panels [j0, j1) (column indices, multiples of NR) of op(B) (K,N) into P: panel j starts at P + j*K and holds
 * op(B)[k][j + c] at k*NR + c, zero past column N. */
static void pack_panels(float *P, const float *B, int ldb, int tb, int K, int N, int j0, int j1) {
    for (int j = j0; j < j1; j += NR) {
        float *p = P + (size_t)j * (size_t)K;
        const int nv = N - j < NR ? N - j : NR;
        if (!tb) {
            const __mmask16 m0 = lane_mask(nv), m1 = lane_mask(nv - 16);
            for (int k = 0; k < K; k++) {
                const float *src = B + (size_t)k * (size_t)ldb + j;
                _mm512_store_ps(p + (size_t)k * NR, _mm512_maskz_loadu_ps(m0, src));
                _mm512_store_ps(p + (size_t)k * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
            }
            continue;
        }
        /* op(B)[k][j + c] = B[(j + c) * ldb + k]: transposed 16 x 16 at a time where whole */
        int k = 0;
        if (nv == NR)
            for (; k + 16 <= K; k += 16)
                for (int c0 = 0; c0 < NR; c0 += 16)
                    transpose16(p + (size_t)k * NR + c0, NR, B + (size_t)(j + c0) * (size_t)ldb + k, (size_t)ldb);
        for (int c = 0; c < NR; c++) {
            const float *src = B + (size_t)(j + c) * (size_t)ldb;
            for (int kk = k; kk < K; kk++) p[(size_t)kk * NR + c] = c < nv ? src[kk] : 0.0f;
        }
    }
}

/* One mr x 32 tile: C[r][0..32) (+)= sum_k A(r,k) P[k][.], A(r,k) at A[r*rs + k*cs]. add_c: add the tile's
 * current value; bias: add bias[0..32). m0, m1: the valid lanes of the two halves. */
static inline __attribute__((always_inline)) void tile(const int mr, const float *A, ptrdiff_t rs, ptrdiff_t cs,
                                                       const float *P, int kc, float *C, int ldc, int add_c,
                                                       const float *bias, __mmask16 m0, __mmask16 m1) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++)
        if (r < mr) c0[r] = c1[r] = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(P + (size_t)k * NR), b1 = _mm512_load_ps(P + (size_t)k * NR + 16);
        const float *a = A + (ptrdiff_t)k * cs;
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++)
            if (r < mr) {
                const __m512 av = _mm512_set1_ps(a[(ptrdiff_t)r * rs]);
                c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
            }
    }
    const __m512 bb0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 bb1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++)
        if (r < mr) {
            float *c = C + (size_t)r * (size_t)ldc;
            __m512 x0 = c0[r], x1 = c1[r];
            if (add_c) {
                x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, c));
                x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, c + 16));
            }
            if (bias) {
                x0 = _mm512_add_ps(x0, bb0);
                x1 = _mm512_add_ps(x1, bb1);
            }
            _mm512_mask_storeu_ps(c, m0, x0);
            _mm512_mask_storeu_ps(c + 16, m1, x1);
        }
}

#define TILE_CASE(n)                                                                                             \
    case n:                                                                                                      \
        tile(n, A, rs, cs, P, kc, C, ldc, add_c, bias, m0, m1);                                                  \
        break;

static void tile_any(int mr, const float *A, ptrdiff_t rs, ptrdiff_t cs, const float *P, int kc, float *C, int ldc,
                     int add_c, const float *bias, __mmask16 m0, __mmask16 m1) {
    switch (mr) {
        TILE_CASE(12) TILE_CASE(11) TILE_CASE(10) TILE_CASE(9) TILE_CASE(8) TILE_CASE(7)
        TILE_CASE(6) TILE_CASE(5) TILE_CASE(4) TILE_CASE(3) TILE_CASE(2) TILE_CASE(1)
    default:
        break;
    }
}

/* The tile of op(A) = A^T with rows [i, i + mr), columns [k0, k0 + kc) into Ap[k * MR + r]: read in place, each
 * k would take one line at a stride of lda, and strides that are multiples of 4 KiB put the whole block in one L1
 * set; packed, the tile kernel reads one contiguous line per k. (op(A) = A is read in place: its 12 rows per k are
 * 12 sequential streams that the prefetchers follow, and packing them measured slower.) */
static void pack_at(float *Ap, const float *A, ptrdiff_t lda, int mr, int kc) {
    const __mmask16 m = lane_mask(mr);
    for (int k = 0; k < kc; k++) _mm512_mask_storeu_ps(Ap + (size_t)k * MR, m, _mm512_maskz_loadu_ps(m, A + k * lda));
}

/* Row tiles [t0, t1) of C, columns [j0, j1) (j0 a multiple of NR): columns in blocks of NCB (the block's panels,
 * KCB x NCB floats, stay in L2 while the tiles pass), K in blocks of KCB within them. */
static void rows_run(int t0, int t1, int j0, int j1, int M, int N, int K, const float *A, ptrdiff_t rs,
                     ptrdiff_t cs, const float *P, const float *bias, int beta1, float *C, int ldc,
                     const epilogue *e) {
    float Ap[KCB * MR] __attribute__((aligned(64)));
    for (int jc = j0; jc < j1; jc += NCB) {
        const int jend = j1 - jc < NCB ? j1 : jc + NCB;
        for (int k0 = 0; k0 < K; k0 += KCB) {
            const int kc = K - k0 < KCB ? K - k0 : KCB;
            const int add_c = k0 > 0 || beta1;
            const float *bk = k0 == 0 ? bias : NULL;
            for (int t = t0; t < t1; t++) {
                const int i = t * MR, mr = M - i < MR ? M - i : MR;
                /* this tile's terms of the block: [lo, hi), fewer under a band (an empty range still writes the
                 * tile: beta C + bias) */
                int lo = k0, hi = k0 + kc;
                if (e->band == MOME_BAND_K_UPTO_ROW && hi > i + mr) hi = i + mr;
                if (e->band == MOME_BAND_K_FROM_ROW && lo < i) lo = i;
                if (hi < lo) hi = lo;
                const float *a = A + (ptrdiff_t)i * rs + (ptrdiff_t)lo * cs;
                ptrdiff_t trs = rs, tcs = cs;
                if (rs == 1) { /* op(A) = A^T */
                    pack_at(Ap, a, cs, mr, hi - lo);
                    a = Ap;
                    tcs = MR;
                }
                float *c = C + (size_t)i * (size_t)ldc;
                const int jlast = e->band == MOME_BAND_COLS_UPTO_ROW ? i + mr - 1 : jend;
                for (int j = jc; j < jend && j <= jlast; j += NR) {
                    const int nv = N - j < NR ? N - j : NR;
                    tile_any(mr, a, trs, tcs, P + (size_t)j * (size_t)K + (size_t)lo * NR, hi - lo, c + j, ldc,
                             add_c, bk ? bk + j : NULL, lane_mask(nv), lane_mask(nv - 16));
                    if (e->kind != EPI_NONE && k0 + kc == K) epi_rows(e, C, ldc, (size_t)i, mr, j, nv);
                }
            }
        }
    }
}

/* Whether a product of M*N*K multiply-adds gets a second thread: below ~1 MFLOP it costs more than it brings;
 * inside a parallel region (the attention's per-head products) the calling thread does it all. The result is the
 * same either way. */
static int use_threads(int M, int N, int K, int in_parallel) {
    return !in_parallel && (double)M * (double)N * (double)K > 5e5;
}

/* The native path: 16 < M, 16 <= N, 0 < K. */
static void gemm_native(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                        int ldb, const float *bias, float beta, float *C, int ldc, const epilogue *e,
                        int in_parallel) {
    const int Np = (N + NR - 1) / NR * NR;
    const size_t need = (size_t)K * (size_t)Np;
    float *P = pack_reserve(need);
    const ptrdiff_t rs = trans_a ? 1 : lda, cs = trans_a ? lda : 1;
    const int n_tiles = (M + MR - 1) / MR, n_panels = Np / NR;
    /* Threads split C's rows, all reading every packed panel, or (C wider than tall) its columns, each packing
     * and reading only its own panels: then op(B), the larger operand, is read from the thread's own cache, and
     * no thread waits for the others' packing. Every tile is computed the same way either way. */
    const int split_cols = N > M;
    if (!use_threads(M, N, K, in_parallel)) { /* the calling thread alone, without a team of one */
        pack_panels(P, B, ldb, trans_b, K, N, 0, Np);
        rows_run(0, n_tiles, 0, N, M, N, K, A, rs, cs, P, bias, beta != 0.0f, C, ldc, e);
        return;
    }
#pragma omp parallel
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        if (split_cols) {
            const int p0 = (int)((long long)n_panels * id / nt), p1 = (int)((long long)n_panels * (id + 1) / nt);
            pack_panels(P, B, ldb, trans_b, K, N, p0 * NR, p1 * NR);
            if (p1 > p0) rows_run(0, n_tiles, p0 * NR, p1 * NR < N ? p1 * NR : N, M, N, K, A, rs, cs, P, bias,
                                  beta != 0.0f, C, ldc, e);
        } else {
#pragma omp for schedule(static)
            for (int p = 0; p < n_panels; p++) pack_panels(P, B, ldb, trans_b, K, N, p * NR, (p + 1) * NR);
            const int t0 = (int)((long long)n_tiles * id / nt), t1 = (int)((long long)n_tiles * (id + 1) / nt);
            rows_run(t0, t1, 0, N, M, N, K, A, rs, cs, P, bias, beta != 0.0f, C, ldc, e);
        }
    }
}

/* A narrow C (N < 16) with op(A) = A, as for a router's logits: each element is the dot product of a row of A and a
 * column of op(B), 16 lanes along k then the lanes summed, so it does not depend on the threads or on the other
 * rows. op(B)'s columns are B's rows when B is transposed, else they are gathered into the pack buffer. */
static void gemm_narrow(int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                        const float *bias, float beta, float *C, int ldc, const epilogue *e, int in_parallel) {
    const float *Bt = B;
    size_t ldbt = (size_t)ldb;
    if (!trans_b) {
        const size_t need = (size_t)N * (size_t)K;
        float *P = pack_reserve(need);
        for (int k = 0; k < K; k++)
            for (int j = 0; j < N; j++) P[(size_t)j * (size_t)K + (size_t)k] = B[(size_t)k * (size_t)ldb + j];
        Bt = P;
        ldbt = (size_t)K;
    }
#pragma omp parallel for schedule(static) if (use_threads(M, N, K, in_parallel))
    for (int i = 0; i < M; i++) {
        const float *a = A + (size_t)i * (size_t)lda;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 16) {
            const __mmask16 m = lane_mask(K - k);
            const __m512 av = _mm512_maskz_loadu_ps(m, a + k);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                if (j < N) acc[j] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, Bt + (size_t)j * ldbt + k), acc[j]);
        }
        float *c = C + (size_t)i * (size_t)ldc;
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
            if (j < N) {
                float v = _mm512_reduce_add_ps(acc[j]);
                if (beta != 0.0f) v += c[j];
                if (bias) v += bias[j];
                c[j] = v;
            }
        if (e->kind != EPI_NONE) epi_rows(e, C, ldc, (size_t)i, 1, 0, N);
    }
}

/* A short C (M <= 16) with op(A) = A^T and op(B) = B, as for a router's weight gradient (K tokens): threads split
 * the columns in 16-lane strips; each element sums over k in order. */
static void gemm_short_at(int M, int N, int K, const float *A, int lda, const float *B, int ldb, const float *bias,
                          float beta, float *C, int ldc, const epilogue *e, int in_parallel) {
    const int n_strips = (N + 15) / 16;
#pragma omp parallel for schedule(static) if (use_threads(M, N, K, in_parallel))
    for (int q = 0; q < n_strips; q++) {
        const int j = q * 16;
        const __mmask16 m = lane_mask(N - j);
        __m512 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (int k = 0; k < K; k++) {
            const __m512 b = _mm512_maskz_loadu_ps(m, B + (size_t)k * (size_t)ldb + j);
            const float *a = A + (size_t)k * (size_t)lda;
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                if (i < M) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i]), b, acc[i]);
        }
        const __m512 bb = bias ? _mm512_maskz_loadu_ps(m, bias + j) : _mm512_setzero_ps();
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * (size_t)ldc + j;
            __m512 v = acc[i];
            if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, c));
            if (bias) v = _mm512_add_ps(v, bb);
            _mm512_mask_storeu_ps(c, m, v);
            if (e->kind != EPI_NONE) epi_rows(e, C, ldc, (size_t)i, 1, j, N - j < 16 ? N - j : 16);
        }
    }
}

#else /* no AVX-512: every call is cblas_sgemm */

void mome_gemm_release(void) {}

#endif

static void gemm_run(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                     int ldb, const float *bias, float beta, float *C, int ldc, const epilogue *e) {
    MOME_CHECK(M >= 0 && N >= 0 && K >= 0 && (beta == 0.0f || beta == 1.0f),
               "gemm: bad arguments M=%d N=%d K=%d beta=%g", M, N, K, (double)beta);
    if (M == 0 || N == 0) return;
    int in_parallel = 0;
#ifdef _OPENMP
    in_parallel = omp_in_parallel();
#endif
#if GEMM_NATIVE
    /* a handful of rows (one decoding step) does not repay packing all of B: OpenBLAS reads it in place */
    if (K > 0 && N >= 16 && M > 16) {
        gemm_native(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc, e, in_parallel);
        return;
    }
    /* a router's products: E < 16 logits per token, and its weight gradient */
    if (K > 0 && N < 16 && !trans_a) {
        gemm_narrow(trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc, e, in_parallel);
        return;
    }
    if (K > 0 && M <= 16 && trans_a && !trans_b) {
        gemm_short_at(M, N, K, A, lda, B, ldb, bias, beta, C, ldc, e, in_parallel);
        return;
    }
#endif
    gemm_blas(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc, e, in_parallel);
}

void mome_gemm(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
               const float *bias, float beta, float *C, int ldc) {
    const epilogue e = {EPI_NONE, NULL, NULL, MOME_BAND_NONE};
    gemm_run(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, beta, C, ldc, &e);
}

void mome_gemm_band(int band, int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc) {
    MOME_CHECK(band >= MOME_BAND_NONE && band <= MOME_BAND_K_FROM_ROW, "gemm: unknown band %d", band);
    const epilogue e = {EPI_NONE, NULL, NULL, band};
    gemm_run(trans_a, trans_b, M, N, K, A, lda, B, ldb, NULL, beta, C, ldc, &e);
}

void mome_gemm_gelu(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    const float *bias, float *h, float *a, int ldc) {
    const epilogue e = {EPI_GELU, a, NULL, MOME_BAND_NONE};
    gemm_run(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, 0.0f, h, ldc, &e);
}

void mome_gemm_gelu_grad(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                         int ldb, const float *h, float *dh, int ldc) {
    const epilogue e = {EPI_GELU_GRAD, NULL, h, MOME_BAND_NONE};
    gemm_run(trans_a, trans_b, M, N, K, A, lda, B, ldb, NULL, 0.0f, dh, ldc, &e);
}
