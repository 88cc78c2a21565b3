/* modular.h — the modular student of "Mixture of Modular Experts" (Al-Maamari et al.): a shared token + position
 * embedding and a shared output head tied to it; one expert *trunk* (a stack of transformer blocks, block.h) per
 * domain; optionally a common trunk that every sequence passes through. Each sequence goes to one expert trunk
 * (chosen by the caller: the router, or the gold domain) or to all of them (averaging); its hidden state is the
 * mean of the outputs it went through:
 *
 *     h = (trunk_e(x) + common(x)) / 2      routed, with a common trunk
 *     h = trunk_e(x)                         routed, without
 *     h = mean over e of trunk_e(x) [and common(x)]   averaging (route MOME_ROUTE_ALL)
 *     h = common(x)                          route MOME_ROUTE_COMMON (an evaluation variant)
 *     logits = ln_f(h) wte^T,   x = wte[tokens] + wpe
 *
 * Parameters live in one flat buffer (tensor.h): the shared tensors, the common trunk ("common/..." stacked over
 * its layers), then this rank's expert trunks ("experts/...", stacked (E_local, L, ...) with expert_dim 0 so that
 * one trunk is one contiguous slice of every expert tensor). Everything before the experts (n_dense floats) is
 * replicated on every rank.
 *
 * Expert trunks may be spread over ranks (mome_modular_set_dispatch): a sequence's embedded input (T x C floats,
 * one dispatch row) travels to the rank holding its trunk and the trunk's output comes back, with the same
 * dispatch.h mechanism as the token-level MoE; backward sends the output gradient the same way and the input
 * gradient back. The common trunk runs where the sequence is. Forward and backward are then collective over the
 * dispatch's communicator: every rank calls them, with its own sequences (possibly of other routes).
 */
#ifndef MOME_MODULAR_H
#define MOME_MODULAR_H

#include <stddef.h>
#include <stdint.h>

#include "mome/block.h"
#include "mome/dispatch.h"
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
    int expert_first, expert_count; /* this rank's expert trunks (global ids) */
    size_t n_dense;           /* floats of the replicated tensors (shared + common), before the experts */
    int use_common;           /* 1 (default): sequences pass through the common trunk when the model has one;
                               * 0: expert trunks alone (an evaluation variant) */
    mome_dispatch *dispatch; /* NULL: every expert trunk is on this rank */
    size_t bytes_sent;        /* dispatch bytes of the last forward or backward (0 without dispatch) */
    mome_modular_acts *acts;
} mome_modular;

enum {
    MOME_ROUTE_ALL = -1,    /* every expert trunk, averaged */
    MOME_ROUTE_COMMON = -2, /* the common trunk alone (models with a common trunk) */
};

/* Sizes > 0, d_model divisible by n_head, n_experts >= 1, trunk_layers >= 1, common 0/1: MOME_ECONFIG otherwise. */
int mome_modular_config_check(const mome_modular_config *cfg);
/* The parameter table with every expert trunk (what checkpoints hold). */
void mome_modular_table(const mome_modular_config *cfg, mome_tensor_table *tab);
/* Every expert trunk on this process. */
int mome_modular_init(mome_modular *m, const mome_modular_config *cfg);
/* Expert trunks [first, first + count) on this process (count >= 1). */
int mome_modular_init_experts(mome_modular *m, const mome_modular_config *cfg, int first, int count);
/* Spreads the expert trunks over d's ranks: d must partition cfg.n_experts so that this rank holds exactly
 * [expert_first, expert_first + expert_count). NULL: all local. */
int mome_modular_set_dispatch(mome_modular *m, mome_dispatch *d);
/* GPT-2 initialisation: N(0, 0.02) matrices and embeddings, projections into the residual stream scaled by
 * 1/sqrt(2 L), LayerNorm weights 1, biases 0; an expert trunk's values depend only on (seed, its global id). */
void mome_modular_init_weights(mome_modular *m, uint64_t seed);
/* Activation buffers for up to B sequences of up to T tokens on this rank. */
int mome_modular_reserve(mome_modular *m, int B, int T);
void mome_modular_free(mome_modular *m);
void mome_modular_zero_grad(mome_modular *m);

/* inputs (B,T) token ids; routes (B): the expert trunk of each sequence in [0, n_experts), MOME_ROUTE_ALL or
 * MOME_ROUTE_COMMON. Writes m->logits (B,T,V). Activation buffers for the sequences a trunk receives from other
 * ranks grow when a batch needs more than ever before (no allocation once the largest batch has been seen). */
void mome_modular_forward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T);
/* m->logits hold d(loss)/d(logits); accumulates the gradient into m->grads. Same inputs and routes as the
 * forward before it. */
void mome_modular_backward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T);

/* Forward FLOPs per token of a routed sequence (one expert trunk, the common trunk if any, the head), counted
 * like mome_gpt_flops_per_token (matrix products only). */
double mome_modular_flops_per_token(const mome_modular_config *cfg, int T);

#endif
