/* gemm.h — the single-precision matrix product behind every matmul of the model.
 *
 *   C (M,N) = op(A) (M,K) · op(B) (K,N)  [+ C if beta = 1]  [+ bias (N), broadcast over the rows]
 *
 * row-major, op(X) = X or X^T as in cblas_sgemm with alpha 1. On an AVX-512 build it runs mome's own kernel:
 * B is packed once per call into 32-column panels, and the threads split the rows of C (or its columns, when C is
 * wider than tall), running 12 x 32 register tiles. C narrower than 16 columns (a router's logits) takes a
 * dot-product kernel, and 16 rows or fewer with A transposed (a router's weight gradient) a column-strip kernel.
 * Every element of C is summed in the same order whatever the thread count and whichever rows share the call, so
 * results are bit-identical from run to run, across thread counts and across the ways the rows are split between
 * ranks. Called inside a parallel region, the calling thread runs it alone. Elsewhere (no AVX-512; 16 rows or
 * fewer with A not transposed, as in one decoding step) the same call goes to cblas_sgemm. */
#ifndef MOME_GEMM_H
#define MOME_GEMM_H

#include <stddef.h>

/* beta is 0 (overwrite C) or 1 (accumulate into C); bias (N) may be NULL. */
void mome_gemm(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
               const float *bias, float beta, float *C, int ldc);

/* The same product (beta 0) with GELU (tanh form) fused into the tile's last pass, while it is still in L1:
 *   mome_gemm_gelu:      h = op(A) op(B) + bias, and a = gelu(h)    (h and a both (M,N) with stride ldc)
 *   mome_gemm_gelu_grad: dh = (op(A) op(B)) * gelu'(h), element-wise (the backward pass of a = gelu(h)) */
void mome_gemm_gelu(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    const float *bias, float *h, float *a, int ldc);
void mome_gemm_gelu_grad(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                         int ldb, const float *h, float *dh, int ldc);

/* Causal structure that a product may skip (the attention's products over a T x T score matrix, i and j being
 * row and column indices of C, and k the inner index):
 *   MOME_BAND_COLS_UPTO_ROW: only C[i][j] with j <= i are wanted. Register tiles lying wholly above the diagonal
 *                            are not computed and C there is left as it was; tiles across it are computed whole.
 *   MOME_BAND_K_UPTO_ROW:    op(A)(i,k) is zero for k > i; the product leaves those terms out.
 *   MOME_BAND_K_FROM_ROW:    op(A)(i,k) is zero for k < i; the product leaves those terms out.
 * Left-out terms are exact zeros, so C has the same bits as the full product (mome_gemm), which is also what the
 * paths other than mome's own kernel compute. */
enum { MOME_BAND_NONE, MOME_BAND_COLS_UPTO_ROW, MOME_BAND_K_UPTO_ROW, MOME_BAND_K_FROM_ROW };
void mome_gemm_band(int band, int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc);

/* Whether mome_gemm uses its own kernel in this build (1) or always cblas_sgemm (0). */
int mome_gemm_native(void);

/* Frees the packing buffer (kept between calls so that training steps allocate nothing). */
void mome_gemm_release(void);

#endif
