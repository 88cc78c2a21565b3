/* block.h — one pre-LayerNorm transformer block (causal multi-head attention, then a GELU MLP), forward and
 * backward on buffers the caller owns:
 *
 *     res2 = x + attn_proj(attention(qkv(ln1(x))))        (the attention half)
 *     res3 = res2 + fc_proj(gelu(fc(ln2(res2))))          (the MLP half)
 *
 * The GPT (model.c) stacks these blocks; an MoE GPT runs the attention half and its own FFN in place of the MLP;
 * other models can run stacks of blocks over any group of sequences. Kernels are those of kernels.h; backward
 * accumulates (+=) into the weight gradients like every backward kernel.
 */
#ifndef MOME_BLOCK_H
#define MOME_BLOCK_H

/* Views of one block's parameters, or of their gradients (same layout). fc* may be NULL for an attention-only
 * use (MoE blocks). */
typedef struct {
    float *ln1w, *ln1b;         /* (C) */
    float *qkvw, *qkvb;         /* (3C, C), (3C) */
    float *attprojw, *attprojb; /* (C, C), (C) */
    float *ln2w, *ln2b;         /* (C) */
    float *fcw, *fcb;           /* (F, C), (F) */
    float *fcprojw, *fcprojb;   /* (C, F), (C) */
} mome_block_weights;

/* What forward saves for backward, for up to the B x T tokens the buffers were sized for. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* (B,T,C), (B,T), (B,T) */
    float *qkv;                       /* (B,T,3C) */
    float *atty;                      /* (B,T,C) attention output before the projection */
    float *att;                       /* (B,NH,T,T) softmax probabilities */
    float *res2;                      /* (B,T,C) */
    float *ln2, *ln2_mean, *ln2_rstd; /* (B,T,C), (B,T), (B,T) */
    float *fch, *fch_gelu;            /* (B,T,F) MLP pre-activation and GELU output (unused by MoE blocks) */
    float *res3;                      /* (B,T,C) the block's output */
} mome_block_acts;

/* Work buffers shared by all blocks (not kept between calls). */
typedef struct {
    float *proj;             /* (B,T,C) a projection's output before its residual add */
    float *dln;              /* (B,T,C) gradient of a LayerNorm output */
    float *datty, *dqkv;     /* (B,T,C), (B,T,3C) */
    float *dfch;             /* (B,T,F) */
    float *att_scratch;      /* (n_att_scratch, T, T) */
    int n_att_scratch;
} mome_block_scratch;

/* Attention half: a->ln1, qkv, att, atty, res2 = x + ..., ln2 = LayerNorm(res2). x (B,T,C) may be the res3 of the
 * same acts (an inference model reusing one layer's buffers): it is read for the last time before res3 is
 * written. prof: NULL or the MOME_PROF_* timing array. */
void mome_block_attn_forward(const mome_block_weights *p, const mome_block_acts *a, const mome_block_scratch *s,
                             const float *x, int B, int T, int C, int NH, double *prof);
/* MLP half: s->proj = fc_proj(gelu(fc(a->ln2))) (a->fch, a->fch_gelu saved). */
void mome_block_mlp_forward(const mome_block_weights *p, const mome_block_acts *a, const mome_block_scratch *s,
                            int B, int T, int C, int F, double *prof);
/* a->res3 = a->res2 + s->proj: closes the block after its FFN. */
void mome_block_residual_forward(const mome_block_acts *a, const mome_block_scratch *s, int B, int T, int C,
                                 double *prof);

/* MLP half backward: dres (B,T,C) = d(res3) in; s->dln = d(ln2) (overwritten); gradients into g. */
void mome_block_mlp_backward(const mome_block_weights *g, const mome_block_weights *p, const mome_block_acts *a,
                             const mome_block_scratch *s, const float *dres, int B, int T, int C, int F,
                             double *prof);
/* Attention half backward: s->dln holds d(ln2) (from the MLP or another FFN); dres holds d(res3) in and d(x) out;
 * x is the block's input. Gradients into g. */
void mome_block_attn_backward(const mome_block_weights *g, const mome_block_weights *p, const mome_block_acts *a,
                              const mome_block_scratch *s, const float *x, float *dres, int B, int T, int C,
                              int NH, double *prof);

#endif
