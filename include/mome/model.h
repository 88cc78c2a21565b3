/* model.h — the GPT: pre-LayerNorm decoder with learned positions, causal multi-head attention, a GELU (tanh)
 * MLP or a token-level Mixture-of-Experts FFN (moe.h) in every block, and an output head tied to the token
 * embedding.
 *
 * All parameters live in one flat buffer laid out by a mome_tensor_table; gradients use the same layout.
 * The model produces logits; the loss (cross-entropy, later KD) is computed outside by kernels in loss.h that
 * overwrite the logits with their gradient in place, and mome_gpt_backward then consumes that gradient.
 * Activation buffers are sized once by mome_gpt_reserve, so a training step allocates nothing.
 */
#ifndef MOME_MODEL_H
#define MOME_MODEL_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "mome/dispatch.h"
#include "mome/moe.h"
#include "mome/tensor.h"

typedef struct {
    int vocab_size; /* V */
    int seq_len;    /* T_max: number of learned positions */
    int n_layer;    /* L */
    int n_head;     /* NH; d_model % n_head == 0 */
    int d_model;    /* C */
    int d_ff;       /* F: MLP hidden size (usually 4*C); with experts, each expert's hidden size */
    /* Mixture of Experts (all zero: the dense model; the fields below are ignored when n_experts == 0). */
    int n_experts;          /* E; 0: every block has the dense MLP */
    int top_k;              /* experts per token, 1 <= top_k <= E */
    float capacity_factor;  /* 0: dropless; > 0: ceil(capacity_factor * N * top_k / E) rows per expert */
    int shared_d_ff;        /* hidden size of the shared (common) expert; 0: none */
    float aux_coef, z_coef; /* Switch load-balancing and router z-loss coefficients */
    /* Combine weights: with top_k > 1 they are renormalised over the chosen experts (w = p / sum chosen p);
     * with top_k == 1 the weight is the raw gate probability (Switch Transformer), since a renormalised
     * single weight is always 1 and the gate would get no gradient from the output. */
} mome_gpt_config;

/* Indices into the tensor table of a dense GPT, in buffer order. Per-layer tensors are stacked over layers.
 * An MoE GPT (n_experts > 0) has the same tensors minus the four MLP ones (so indices up to MOME_GPT_LN2B hold;
 * ln_f_w, ln_f_b follow at 10, 11), then the dense "blocks/gate_w" (L, E, C) and, with shared_d_ff = Fs > 0,
 * "blocks/shared_fc_w" (L, Fs, C), "blocks/shared_fc_b" (L, Fs), "blocks/shared_proj_w" (L, C, Fs),
 * "blocks/shared_proj_b" (L, C); and LAST this rank's experts, El = expert_count, expert_dim = 1:
 * "blocks/experts_fc_w" (L, El, F, C), "blocks/experts_fc_b" (L, El, F), "blocks/experts_proj_w" (L, El, C, F),
 * "blocks/experts_proj_b" (L, El, C). Look MoE tensors up by name (mome_tensor_table_find). */
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

/* Kernel categories of the optional timing (mome_gpt.prof, used by `mome bench --profile`). */
enum {
    MOME_PROF_EMBED,       /* token + position embedding, forward and backward */
    MOME_PROF_LAYERNORM,   /* every LayerNorm */
    MOME_PROF_ATTN_LINEAR, /* qkv and output projections of attention */
    MOME_PROF_ATTENTION,   /* q k^T, softmax, att v (per head) */
    MOME_PROF_RESIDUAL,    /* residual adds */
    MOME_PROF_FFN,         /* dense MLP, or the whole MoE layer: gate, gather, experts, combine, all-to-all */
    MOME_PROF_ALLTOALL,    /* the MoE all-to-all alone (also counted in FFN) */
    MOME_PROF_HEAD,        /* tied output head (logits) */
    MOME_PROF_MEMSET,      /* zeroing of gradient scratch in backward */
    MOME_PROF_N
};
extern const char *const mome_prof_names[MOME_PROF_N];

/* mome_gpt_set_parallel exists (train.c tests this). */
#define MOME_GPT_HAS_EXPERT_PARALLEL 1

typedef struct {
    mome_gpt_config cfg;
    mome_tensor_table table; /* names, shapes, offsets of every parameter tensor */
    float *params;           /* table.total floats */
    float *grads;            /* table.total floats, same layout; backward accumulates (+=) into it */
    int max_B, max_T;        /* capacity of the activation buffers (mome_gpt_reserve) */
    mome_gpt_acts *acts;
    float *logits;           /* (max_B, max_T, V): logits after forward; the loss kernels overwrite them
                                with d(loss)/d(logits) before backward */
    size_t n_dense;          /* params [0, n_dense) are dense (replicated on every rank); [n_dense, table.total)
                                are this rank's experts. For a dense model n_dense == table.total. */
    int expert_first;        /* global id of this rank's first expert */
    int expert_count;        /* experts held by this rank (== n_experts on one process) */
    double aux_loss, z_loss; /* from the last forward: sums over layers of the layer values (unscaled) */
    double dropped_frac;     /* from the last forward: dropped assignments / all assignments, over layers */
    double *expert_load;     /* (L, E): load fraction per layer and global expert, from the last forward
                                (NULL for a dense model) */
    /* Parallel MoE (mome_gpt_set_parallel); all unset on one process. */
    int dp_global;           /* 1: routing statistics over the tokens of all ranks of dp_comm */
    MPI_Comm dp_comm;        /* valid when dp_global */
    mome_dispatch *ep;       /* NULL: all experts local */
    double n_tokens_global;  /* tokens of the last forward over dp_comm (or local) */
    int inference;           /* mome_gpt_set_inference: no gradients, one layer of activations reused */
    double *prof;            /* NULL, or (MOME_PROF_N) seconds that forward and backward add per kernel category */
    mome_moe_gate_mode gate_mode; /* gate mode of every MoE layer (zeroed: TOPK); set with mome_gpt_set_gate_mode */
} mome_gpt;

/* Checks a config: positive sizes, d_model divisible by n_head; with experts 1 <= top_k <= E, capacity_factor
 * >= 0, shared_d_ff >= 0, finite coefficients. Returns MOME_ECONFIG with a message. */
int mome_gpt_config_check(const mome_gpt_config *cfg);
/* Builds the tensor table of a config without allocating (for checkpoints and shape checks); an MoE model's
 * table holds all E experts (the single-process layout). */
void mome_gpt_table(const mome_gpt_config *cfg, mome_tensor_table *tab);
/* The same with expert_count experts in the expert tensors (ignored for a dense model). */
void mome_gpt_table_experts(const mome_gpt_config *cfg, int expert_count, mome_tensor_table *tab);
/* Allocates parameters and gradients (zeroed). == mome_gpt_init_experts(m, cfg, 0, cfg->n_experts). */
int mome_gpt_init(mome_gpt *m, const mome_gpt_config *cfg);
/* Allocates a model holding the global experts [expert_first, expert_first + expert_count) (need
 * expert_count >= 1 and expert_first + expert_count <= n_experts; 0, 0 for a dense model). */
int mome_gpt_init_experts(mome_gpt *m, const mome_gpt_config *cfg, int expert_first, int expert_count);
/* GPT-2 initialisation from a seed: N(0, 0.02) for matrices and embeddings (incl. the gate and the experts' and
 * shared expert's fc), residual projections (incl. the experts' and shared expert's proj) scaled by
 * 1/sqrt(2L), LayerNorm weights 1, biases 0. Deterministic for a seed, independent of thread count; an
 * expert's values depend only on (seed, layer, global expert id), so a model split over ranks holds exactly
 * the slices of the single-process model. */
void mome_gpt_init_weights(mome_gpt *m, uint64_t seed);
/* Sizes the activation buffers (and one mome_moe per layer for B*T tokens) for up to B sequences of up to T
 * tokens (T <= seq_len). */
int mome_gpt_reserve(mome_gpt *m, int B, int T);
/* Makes m inference-only (a teacher, evaluation, generation): frees the gradients and the activation buffers;
 * the next mome_gpt_reserve sizes the activations of one layer, which every layer reuses, so a forward needs
 * about 1/L of the memory and stays in cache better. Forward results are identical; mome_gpt_backward aborts. */
void mome_gpt_set_inference(mome_gpt *m);
void mome_gpt_free(mome_gpt *m);

/* inputs is (B, T) token ids. Writes m->logits (B, T, V); for an MoE model also aux_loss, z_loss,
 * dropped_frac and expert_load. Each MoE block computes y = MoE(ln2(x')) over its N = B*T rows (capacity,
 * load balance and z-loss over those N tokens) and x'' = x' + y. A single-process forward needs all experts
 * (expert_count == n_experts). */
void mome_gpt_forward(mome_gpt *m, const int32_t *inputs, int B, int T);
/* Expects m->logits to hold d(loss)/d(logits) (B, T, V); accumulates parameter gradients into m->grads.
 * The total loss whose gradient this computes is
 *     Lg + aux_grad_scale * sum over layers (aux_coef * aux_l + z_coef * z_l)
 * where Lg is the loss whose logits gradient was written (carrying its own scale, e.g. 1/(B*T) for a mean).
 * For a dense model aux_grad_scale is unused. */
void mome_gpt_backward_ex(mome_gpt *m, const int32_t *inputs, int B, int T, float aux_grad_scale);
/* == mome_gpt_backward_ex(m, inputs, B, T, 1.0f). */
void mome_gpt_backward(mome_gpt *m, const int32_t *inputs, int B, int T);
void mome_gpt_zero_grad(mome_gpt *m);
/* The MoE layer of block `layer` (its plan and stats of the last forward), for tests and diagnostics; NULL for a
 * dense model or before mome_gpt_reserve. */
const mome_moe *mome_gpt_moe_layer(const mome_gpt *m, int layer);

/* Expert and data parallelism of an MoE model (no effect on a dense model). Collective semantics from then on:
 * every forward/backward is collective over dp_comm (and ep's comm).
 *  - Routing statistics are those of the global token set of dp_comm: capacity = ceil(cf * N_global * k / E),
 *    admission in global (rank of dp_comm, token, slot) order, f_e and P_e over all tokens, z-loss the mean over
 *    all tokens; aux_loss, z_loss, dropped_frac, expert_load are the global values (equal on every rank). So a
 *    global batch split over ranks in rank order routes exactly as on one process. Backward gives each rank's
 *    share of the gradient of aux_grad_scale * (aux_coef * aux + z_coef * z) (sum over ranks = the whole), so
 *    with logits gradients scaled by 1/N_global, summing the dense gradients over dp_comm gives the gradient of
 *    the global loss.
 *  - ep != NULL: experts live on the ranks of ep->comm (this model holds [ep->first[rank], ep->first[rank+1]),
 *    which must equal [expert_first, expert_first + expert_count)); rows travel to their owners and back with
 *    mome_dispatch, in forward and backward. Expert gradients are complete on their owner (rows from all ranks
 *    of ep->comm). ep == NULL: all experts local (expert_count == n_experts).
 * dp_comm may be MPI_COMM_NULL for local statistics. Buffers for received rows are sized for the worst case
 * (all rows of all EP ranks to one rank), per layer. An expert range mismatch is a fatal invariant (MOME_CHECK).
 * Call before or after mome_gpt_reserve, not between a forward and its backward. */
void mome_gpt_set_parallel(mome_gpt *m, MPI_Comm dp_comm, mome_dispatch *ep);

/* Sets the gate mode (moe.h: TOPK, ALL or KA) of every MoE layer, layer l with mode->layer replaced by l, from
 * the next forward on; kept across mome_gpt_reserve and mome_gpt_set_inference. Not between a forward and its
 * backward. When the reserved layers hold fewer slots per token than the mode needs (E for ALL, n for KA), the
 * activation buffers are reallocated for the current max_B x max_T with that many (activations of the last
 * forward are lost); otherwise it allocates nothing, so a caller can set a new KA counter every step. Under data
 * parallelism set mode->token_base to this rank's first global token (rank * B*T) for split-invariant draws.
 * Returns MOME_EINVAL for a dense model, MOME_ECONFIG for an invalid mode (model unchanged). */
int mome_gpt_set_gate_mode(mome_gpt *m, const mome_moe_gate_mode *mode);

/* Incremental decoding with a key/value cache (sampling continuations, generate.c): a forward over a prefix keeps
 * every layer's keys and values, and each later position costs one row per sequence instead of a forward over
 * the whole sequence again. Collective like mome_gpt_forward under mome_gpt_set_parallel (every rank makes the
 * same calls). The sampled positions route through the MoE layers without capacity limits (dropless), as
 * inference usually does; the prefix routes as in mome_gpt_forward. Uses the model's activation buffers: a
 * forward or backward in between loses the cache's scratch, not its keys and values. Needs a model with
 * per-layer activations (not mome_gpt_set_inference) reserved for at least B x T. */
typedef struct mome_gpt_kv mome_gpt_kv;
/* A cache for B sequences of up to T positions; NULL with the error set if the model cannot hold it. */
mome_gpt_kv *mome_gpt_kv_new(const mome_gpt *m, int B, int T);
void mome_gpt_kv_free(mome_gpt_kv *kv);
/* mome_gpt_forward(m, rows, B, n) (rows (B, n), n <= T), keeping the keys and values of the n positions;
 * m->logits as after that forward. */
void mome_gpt_kv_prefill(mome_gpt *m, mome_gpt_kv *kv, const int32_t *rows, int n);
/* Appends position n (the number of positions cached) with token tok[b] in sequence b; m->logits (B, V) then
 * holds that position's logits, the distribution of the token after it. */
void mome_gpt_kv_step(mome_gpt *m, mome_gpt_kv *kv, const int32_t *tok);

/* Forward FLOPs per token of a training step's forward pass (matmuls and attention), for MFU. For an MoE model
 * only the active parameters count: the gate, top_k experts and the shared expert per token. */
double mome_gpt_flops_per_token(const mome_gpt_config *cfg, int T);

#endif
