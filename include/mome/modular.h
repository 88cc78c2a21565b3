/* modular.h — the modular student of "Mixture of Modular Experts" (Al-Maamari et al.): a shared token + position
 * embedding and a shared output head tied to it; one expert *trunk* (a stack of transformer blocks, block.h) per
 * domain; optionally a common trunk that every sequence passes through. Each sequence goes to one expert trunk
 * (chosen by the caller: the router, or the gold domain) or to all of them (averaging); its hidden state is the
 * mean of the outputs it went through:
 *
 *     h = (trunk_e(x) + common(x)) / 2      routed, with a common trunk
 *     h = trunk_e(x)                         routed, without
 *     h = mean over e of trunk_e(x) [and common(x)]   averaging (route -1)
 *     logits = ln_f(h) wte^T,   x = wte[tokens] + wpe
 *
 * Parameters live in one flat buffer (tensor.h): the shared tensors, the common trunk ("common/..." stacked over
 * its layers), then the expert trunks ("experts/...", stacked (E, L, ...) with expert_dim 0 so that one trunk is
 * one contiguous slice of every expert tensor). This file is the single-process model; spreading trunks over
 * ranks (sequences travel to their trunk's rank) builds on it.
 */
#ifndef MOME_MODULAR_H
#define MOME_MODULAR_H

#include <stddef.h>
#include <stdint.h>

#include "mome/block.h"
#include "mome/tensor.h"

typedef struct {
    int vocab_size, seq_len;
    int d_model, n_head, d_ff;
    int n_experts;     /* expert trunks (one per domain), >= 1 */
    int trunk_layers;  /* blocks per trunk (expert and common) */
    int common;        /* 1: a common trunk every sequence passes through */
} mome_modular_config;

typedef struct mome_modular_acts mome_modular_acts; /* private to modular.c */

typedef struct {
    mome_modular_config cfg;
    mome_tensor_table table;
    float *params, *grads;    /* table.total floats each; backward accumulates into grads */
    float *logits;            /* (max_B, max_T, V) after forward; the loss overwrites them with its gradient */
    int max_B, max_T;
    mome_modular_acts *acts;
} mome_modular;

/* Sizes > 0, d_model divisible by n_head, n_experts >= 1, trunk_layers >= 1, common 0/1: MOME_ECONFIG otherwise. */
int mome_modular_config_check(const mome_modular_config *cfg);
/* The parameter table (for checkpoints and shape checks). */
void mome_modular_table(const mome_modular_config *cfg, mome_tensor_table *tab);
int mome_modular_init(mome_modular *m, const mome_modular_config *cfg);
/* GPT-2 initialisation: N(0, 0.02) matrices and embeddings, projections into the residual stream scaled by
 * 1/sqrt(2 L), LayerNorm weights 1, biases 0; an expert trunk's values depend only on (seed, its global id). */
void mome_modular_init_weights(mome_modular *m, uint64_t seed);
/* Activation buffers for up to B sequences of up to T tokens, with room for every sequence in every trunk. */
int mome_modular_reserve(mome_modular *m, int B, int T);
void mome_modular_free(mome_modular *m);
void mome_modular_zero_grad(mome_modular *m);

/* inputs (B,T) token ids; routes (B): the expert trunk of each sequence in [0, n_experts), or -1 for the mean of
 * all trunks. Writes m->logits (B,T,V). */
void mome_modular_forward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T);
/* m->logits hold d(loss)/d(logits); accumulates the gradient into m->grads. Same inputs and routes as the
 * forward before it. */
void mome_modular_backward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T);

#endif
