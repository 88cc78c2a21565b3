/* kernels.h — the numerical kernels of the dense GPT, in _forward/_backward pairs.
 *
 * Conventions (as in karpathy/llm.c train_gpt2.c):
 *  - outputs first, then inputs and weights, then sizes; every buffer has a shape comment;
 *  - tensors are row-major float32; weights are (out, in) like PyTorch nn.Linear;
 *  - backward kernels ACCUMULATE (+=) into every gradient they write, so callers zero them first;
 *  - the linear layers' and the attention's per-head products go through mome_gemm (gemm.h: mome's AVX-512
 *    kernel, else cblas_sgemm); the *_ref variants are plain loops kept to test them against;
 *  - results are bit-identical from run to run for a given thread count: loops are split statically and no
 *    reduction depends on scheduling.
 * The losses (cross-entropy over the vocabulary) are in loss.h; composition into a model is in model.c.
 */
#ifndef MOME_KERNELS_H
#define MOME_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- encoder: token + position embedding ---- */
/* out (B,T,C) = wte[inp[b,t]] (V,C) + wpe[t] (T_max,C); inp is (B,T). */
void mome_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B, int T, int C);
/* dwte (V,C) += scatter of dout (B,T,C) by token; dwpe (T_max,C) += sum over b. */
void mome_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B, int T, int C);

/* ---- layernorm over the last dimension, eps 1e-5 ---- */
/* out (N,C) = (inp - mean) * rstd * w (C) + b (C); mean, rstd (N) are saved for backward. */
void mome_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                            size_t N, int C);
/* dinp (N,C), dw (C), db (C) += ... from dout (N,C). */
void mome_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                             const float *mean, const float *rstd, size_t N, int C);

/* ---- matmul: out = inp · w^T + bias ---- */
/* out (N,OC) = inp (N,IC) · w (OC,IC)^T + bias (OC); bias may be NULL. Overwrites out. */
void mome_matmul_forward(float *out, const float *inp, const float *w, const float *bias, size_t N, int IC, int OC);
/* dinp (N,IC) += dout · w; dw (OC,IC) += dout^T · inp; dbias (OC) += column sums of dout.
 * dinp and dbias may be NULL (not needed). */
void mome_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w,
                          size_t N, int IC, int OC);
/* As mome_matmul_backward, but dinp (not NULL) is overwritten rather than accumulated into (dw and dbias still
 * accumulate): saves zeroing dinp and reading it back. */
void mome_matmul_backward_to(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                             const float *w, size_t N, int IC, int OC);
/* The MLP's two GELU neighbours, with GELU fused into the product (gemm.h):
 * forward:  h (N,OC) = inp · w^T + bias, a (N,OC) = gelu(h)   (the first linear layer and its activation);
 * backward: dh (N,IC) = (dout · w) * gelu'(h), overwritten; dw (OC,IC) += dout^T · inp; dbias += column sums of
 *           dout   (the second linear layer, whose input inp = gelu(h), and the activation's backward pass). */
void mome_matmul_gelu_forward(float *h, float *a, const float *inp, const float *w, const float *bias, size_t N,
                              int IC, int OC);
void mome_matmul_gelu_backward(float *dh, float *dw, float *dbias, const float *dout, const float *inp,
                               const float *h, const float *w, size_t N, int IC, int OC);
/* Naive-loop references with the same contract. */
void mome_matmul_forward_ref(float *out, const float *inp, const float *w, const float *bias, size_t N, int IC,
                             int OC);
void mome_matmul_backward_ref(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                              const float *w, size_t N, int IC, int OC);

/* ---- causal multi-head self-attention ---- */
/* qkv (B,T,3C) holds [q | k | v] per token, head h using channels [h*hs, (h+1)*hs) of each, hs = C/NH.
 * out (B,T,C) = softmax(q k^T / sqrt(hs), causal) v per head; att (B,NH,T,T) receives the softmax
 * probabilities (0 above the diagonal), which backward reuses. */
void mome_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
/* dqkv (B,T,3C) = d(loss)/d(qkv) from dout (B,T,C), overwritten (each of q, k and v of a head is one product).
 * scratch holds n_scratch work areas of T*T floats each; the (b,h) pairs are spread over min(n_scratch, threads)
 * threads (n_scratch >= 1). */
void mome_attention_backward(float *dqkv, float *scratch, int n_scratch, const float *dout, const float *qkv,
                             const float *att, int B, int T, int C, int NH);
/* One new position per row against cached keys and values (incremental decoding): q (B) rows of stride q_stride
 * hold each row's query (C channels); kv (B, T_cap, 2C) holds [k | v] of the row's positions 0..n-1 (the new one
 * included). out (B, C) = softmax(q k^T / sqrt(hs)) v per head over those n positions; att (B*NH, n) scratch. */
void mome_attention_step(float *out, float *att, const float *q, int q_stride, const float *kv, int B, int T_cap,
                         int n, int C, int NH);
/* Naive-loop references: same contract; the reference backward needs no scratch. */
void mome_attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
void mome_attention_backward_ref(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T,
                                 int C, int NH);

/* ---- GELU, tanh approximation (PyTorch approximate='tanh') ---- */
/* out (n) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
void mome_gelu_forward(float *out, const float *inp, size_t n);
/* dinp (n) += gelu'(inp) * dout. */
void mome_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
/* dinp (n) = gelu'(inp) * dout (overwrites). */
void mome_gelu_backward_to(float *dinp, const float *inp, const float *dout, size_t n);

/* ---- residual add ---- */
/* out (n) = a + b. */
void mome_residual_forward(float *out, const float *a, const float *b, size_t n);
/* x[0..n) = 0 on all threads (a model's gradients: tens of MB, which one thread's memset takes twice as long to
 * clear) */
void mome_zero(float *x, size_t n);
/* da (n) += dout; db (n) += dout. */
void mome_residual_backward(float *da, float *db, const float *dout, size_t n);

#endif
