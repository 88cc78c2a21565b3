/* block.c — the pre-LayerNorm transformer block (block.h) as a sequence of kernels.h calls: the attention half, the
 * MLP half, and their backward passes, with optional per-kernel timing (prof.h). Which buffers hold which layer,
 * and what runs in place of the MLP, is the caller's business (model.c). */
#include "mome/block.h"

#include <string.h>

#include "mome/kernels.h"
#include "mome/model.h"
#include "prof.h"

void mome_block_attn_forward(const mome_block_weights *p, const mome_block_acts *a, const mome_block_scratch *s,
                             const float *x, int B, int T, int C, int NH, double *prof) {
    const size_t BT = (size_t)B * (size_t)T;
    MOME_TIMED(prof, MOME_PROF_LAYERNORM, mome_layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, x, p->ln1w,
                                                                 p->ln1b, BT, C));
    MOME_TIMED(prof, MOME_PROF_ATTN_LINEAR, mome_matmul_forward(a->qkv, a->ln1, p->qkvw, p->qkvb, BT, C, 3 * C));
    MOME_TIMED(prof, MOME_PROF_ATTENTION, mome_attention_forward(a->atty, a->att, a->qkv, B, T, C, NH));
    MOME_TIMED(prof, MOME_PROF_ATTN_LINEAR,
               mome_matmul_forward(s->proj, a->atty, p->attprojw, p->attprojb, BT, C, C));
    MOME_TIMED(prof, MOME_PROF_RESIDUAL, mome_residual_forward(a->res2, x, s->proj, BT * (size_t)C));
    MOME_TIMED(prof, MOME_PROF_LAYERNORM, mome_layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2,
                                                                 p->ln2w, p->ln2b, BT, C));
}

void mome_block_mlp_forward(const mome_block_weights *p, const mome_block_acts *a, const mome_block_scratch *s,
                            int B, int T, int C, int F, double *prof) {
    const size_t BT = (size_t)B * (size_t)T;
    MOME_TIMED(prof, MOME_PROF_FFN, mome_matmul_gelu_forward(a->fch, a->fch_gelu, a->ln2, p->fcw, p->fcb, BT, C, F));
    MOME_TIMED(prof, MOME_PROF_FFN, mome_matmul_forward(s->proj, a->fch_gelu, p->fcprojw, p->fcprojb, BT, F, C));
}

void mome_block_residual_forward(const mome_block_acts *a, const mome_block_scratch *s, int B, int T, int C,
                                 double *prof) {
    MOME_TIMED(prof, MOME_PROF_RESIDUAL,
               mome_residual_forward(a->res3, a->res2, s->proj, (size_t)B * (size_t)T * (size_t)C));
}

void mome_block_mlp_backward(const mome_block_weights *g, const mome_block_weights *p, const mome_block_acts *a,
                             const mome_block_scratch *s, const float *dres, int B, int T, int C, int F,
                             double *prof) {
    const size_t BT = (size_t)B * (size_t)T;
    // dres holds d(res3); res3 = res2 + fcproj, so it is also d(fcproj)
    MOME_TIMED(prof, MOME_PROF_FFN, mome_matmul_gelu_backward(s->dfch, g->fcprojw, g->fcprojb, dres, a->fch_gelu,
                                                              a->fch, p->fcprojw, BT, F, C));
    MOME_TIMED(prof, MOME_PROF_FFN,
               mome_matmul_backward_to(s->dln, g->fcw, g->fcb, s->dfch, a->ln2, p->fcw, BT, C, F));
}

void mome_block_attn_backward(const mome_block_weights *g, const mome_block_weights *p, const mome_block_acts *a,
                              const mome_block_scratch *s, const float *x, float *dres, int B, int T, int C,
                              int NH, double *prof) {
    const size_t BT = (size_t)B * (size_t)T;
    // dres holds d(res3), the first part of d(res2); the FFN's path adds the second through ln2
    MOME_TIMED(prof, MOME_PROF_LAYERNORM, mome_layernorm_backward(dres, g->ln2w, g->ln2b, s->dln, a->res2, p->ln2w,
                                                                  a->ln2_mean, a->ln2_rstd, BT, C));
    // dres now holds d(res2); res2 = x + attproj
    MOME_TIMED(prof, MOME_PROF_ATTN_LINEAR, mome_matmul_backward_to(s->datty, g->attprojw, g->attprojb, dres,
                                                                    a->atty, p->attprojw, BT, C, C));
    MOME_TIMED(prof, MOME_PROF_ATTENTION, mome_attention_backward(s->dqkv, s->att_scratch, s->n_att_scratch,
                                                                  s->datty, a->qkv, a->att, B, T, C, NH));
    MOME_TIMED(prof, MOME_PROF_ATTN_LINEAR,
               mome_matmul_backward_to(s->dln, g->qkvw, g->qkvb, s->dqkv, a->ln1, p->qkvw, BT, C, 3 * C));
    MOME_TIMED(prof, MOME_PROF_LAYERNORM, mome_layernorm_backward(dres, g->ln1w, g->ln1b, s->dln, x, p->ln1w,
                                                                  a->ln1_mean, a->ln1_rstd, BT, C));
    // dres now holds d(x), the gradient of the block's input
}
