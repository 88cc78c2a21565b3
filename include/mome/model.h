/* model.h — the dense GPT: pre-LayerNorm decoder with learned positions, causal multi-head attention,
 * GELU (tanh) MLP and an output head tied to the token embedding.
 *
 * All parameters live in one flat buffer laid out by a mome_tensor_table; gradients use the same layout.
 * The model produces logits; the loss (cross-entropy, later KD) is computed outside by kernels in loss.h that
 * overwrite the logits with their gradient in place, and mome_gpt_backward then consumes that gradient.
 * Activation buffers are sized once by mome_gpt_reserve, so a training step allocates nothing.
 */
#ifndef MOME_MODEL_H
#define MOME_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "mome/tensor.h"

typedef struct {
    int vocab_size; /* V */
    int seq_len;    /* T_max: number of learned positions */
    int n_layer;    /* L */
    int n_head;     /* NH; d_model % n_head == 0 */
    int d_model;    /* C */
    int d_ff;       /* F: MLP hidden size (usually 4*C) */
} mome_gpt_config;

/* Indices into the tensor table of a GPT, in buffer order. Per-layer tensors are stacked over layers. */
enum {
    MOME_GPT_WTE,      /* (V, C) token embedding, also the output head */
    MOME_GPT_WPE,      /* (T_max, C) */
    MOME_GPT_LN1W,     /* (L, C) */
    MOME_GPT_LN1B,     /* (L, C) */
    MOME_GPT_QKVW,     /* (L, 3C, C) */
    MOME_GPT_QKVB,     /* (L, 3C) */
    MOME_GPT_ATTPROJW, /* (L, C, C) */
    MOME_GPT_ATTPROJB, /* (L, C) */
    MOME_GPT_LN2W,     /* (L, C) */
    MOME_GPT_LN2B,     /* (L, C) */
    MOME_GPT_FCW,      /* (L, F, C) */
    MOME_GPT_FCB,      /* (L, F) */
    MOME_GPT_FCPROJW,  /* (L, C, F) */
    MOME_GPT_FCPROJB,  /* (L, C) */
    MOME_GPT_LNFW,     /* (C) */
    MOME_GPT_LNFB,     /* (C) */
    MOME_GPT_NTENSORS
};

typedef struct mome_gpt_acts mome_gpt_acts; /* activation buffers, private to model.c */

typedef struct {
    mome_gpt_config cfg;
    mome_tensor_table table; /* names, shapes, offsets of every parameter tensor */
    float *params;           /* table.total floats */
    float *grads;            /* table.total floats, same layout; backward accumulates (+=) into it */
    int max_B, max_T;        /* capacity of the activation buffers (mome_gpt_reserve) */
    mome_gpt_acts *acts;
    float *logits;           /* (max_B, max_T, V): logits after forward; the loss kernels overwrite them
                                with d(loss)/d(logits) before backward */
} mome_gpt;

/* Checks a config: positive sizes, d_model divisible by n_head. Returns MOME_ECONFIG with a message. */
int mome_gpt_config_check(const mome_gpt_config *cfg);
/* Builds the tensor table of a config without allocating (for checkpoints and shape checks). */
void mome_gpt_table(const mome_gpt_config *cfg, mome_tensor_table *tab);
/* Allocates parameters and gradients (zeroed). */
int mome_gpt_init(mome_gpt *m, const mome_gpt_config *cfg);
/* GPT-2 initialisation from a seed: N(0, 0.02) for matrices and embeddings, residual projections scaled by
 * 1/sqrt(2L), LayerNorm weights 1, biases 0. Deterministic for a seed, independent of thread count. */
void mome_gpt_init_weights(mome_gpt *m, uint64_t seed);
/* Sizes the activation buffers for up to B sequences of up to T tokens (T <= seq_len). */
int mome_gpt_reserve(mome_gpt *m, int B, int T);
void mome_gpt_free(mome_gpt *m);

/* inputs is (B, T) token ids. Writes m->logits (B, T, V). */
void mome_gpt_forward(mome_gpt *m, const int32_t *inputs, int B, int T);
/* Expects m->logits to hold d(loss)/d(logits) (B, T, V); accumulates parameter gradients into m->grads. */
void mome_gpt_backward(mome_gpt *m, const int32_t *inputs, int B, int T);
void mome_gpt_zero_grad(mome_gpt *m);

/* Forward FLOPs per token of a training step's forward pass (matmuls and attention), for MFU. */
double mome_gpt_flops_per_token(const mome_gpt_config *cfg, int T);

#endif
