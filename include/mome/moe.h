/* moe.h — the token-level Mixture-of-Experts FFN layer (single process), in stages that the expert-parallel
 * version separates with MPI all-to-all.
 *
 * The layer replaces a block's MLP: x (N, C) -> y (N, C), N = B*T tokens.
 *   gate (fp32):   logits = x Wg^T (Wg (E, C), no bias); probs = softmax over the E experts;
 *                  top-k experts per token (k = top_k), chosen by logit, ties -> lower expert index; slot 0 is
 *                  the most probable; weights w_s = p_s / sum_{chosen} p (renormalize = 1) or w_s = p_s (0).
 *   experts:       E independent GELU(tanh) MLPs E_e(x) = proj_w[e] gelu(fc_w[e] x + fc_b[e]) + proj_b[e].
 *   shared expert: optional dense GELU MLP every token passes through (shared_d_ff > 0).
 *   y[t] = sum over kept slots s of w[t,s] E_{expert[t,s]}(x[t])  +  shared(x[t]).
 *   capacity:      capacity_factor > 0: each expert admits at most ceil(capacity_factor * N * k / E)
 *                  assignments, in the order (token index, then slot); later ones are DROPPED: they contribute
 *                  nothing to y and get no gradient (the residual connection outside the layer carries the
 *                  token). capacity_factor == 0: dropless.
 *   aux loss:      Switch load balancing aux = E * sum_e f_e P_e, f_e = fraction of the N*k assignments (before
 *                  dropping) routed to e (a constant for the gradient, as in Switch), P_e = mean_t probs[t,e].
 *   z-loss:        z = mean_t logsumexp(logits[t,:])^2.
 * Gate modes (mome_moe_set_gate_mode; a teacher in "Every Expert Matters" distillation, Kim et al. 2025). The
 * description above is MOME_GATE_TOPK, the default. The other two modes are dropless (capacity ignored), use k
 * slots per token for the call (plan.k; the buffers must hold them: cfg.max_slots >= k), and keep the aux and
 * z-loss definitions, f_e counting the assignments actually made (N*k of them):
 *   ALL:  k = E, every token uses every expert; slot s is expert s (index order, NOT probability order) and
 *         w_s = p_s, the softmax over all E logits (they sum to 1; no renormalisation).
 *   KA:   knowledge augmentation, k = n experts per token. Per token, with probability lambda: n experts drawn
 *         WITHOUT replacement from the softmax (sequential draws, each from the probabilities of the experts not
 *         drawn yet, renormalised); otherwise the top n by logit (ties -> lower index). The chosen set is then
 *         ordered by logit (descending, ties -> lower index), so slot 0 is the most probable, and
 *         w_s = p_s / sum_{chosen} p (the softmax over the chosen logits). The random numbers of token t come
 *         from mome_rng_stream(seed, counter, (layer << 40) + token_base + t) (see mome_moe_gate_mode), so
 *         they depend neither on the thread count nor on the other tokens; lambda = 0 draws nothing and routes
 *         bit-identically to TOPK with top_k = n and renormalize = 1.
 *   In both, the chosen set is a constant for backward; gradients are exact through the weights into the
 *   gate (KA: through the renormalisation over the chosen set). ALL equals KA with n = E up to float rounding
 *   (KA divides by sum p, which is 1 up to rounding, and sums the experts in another order: y, dx and the
 *   gradients agree to ~1e-7 relative to their largest value; test_moe_modes.c allows 1e-5).
 * The layer reports aux and z (unscaled); backward adds grad_scale * (aux_coef * d aux + z_coef * d z) to the
 * gate's logits gradient, on top of the gradient coming from dy. So with dy = grad_scale * dL/dy, backward
 * produces the gradients of grad_scale * (L + aux_coef * aux + z_coef * z).
 *
 * Stages (each a function below; mome_moe_forward / mome_moe_backward chain them for one process):
 *   forward:  (1) route    x -> gate logits/probs -> dispatch plan (per expert: its (token, slot) rows,
 *                          counts, offsets; per (token, slot): expert, weight, grouped row or -1 if dropped)
 *             (2) gather   x -> rows_in (n_rows, C) grouped by expert (expert e's rows are
 *                          [offsets[e], offsets[e+1]), in (token, slot) order)
 *             (3) experts  rows_in -> rows_out (n_rows, C) for a range of experts (sgemm per expert)
 *             (4) combine  rows_out -> y (N, C), weighted; then y += shared(x)
 *   backward: (4') combine backward: dy -> drows_out (n_rows, C) and dweight (N, k)
 *             (3') experts backward: drows_out -> drows_in, accumulating expert weight gradients
 *             (2') gather backward: dx += scatter of drows_in by token
 *             (1') gate backward: dweight -> renormalisation -> softmax -> logits (+ aux and z-loss) -> dWg, dx
 *             plus the shared expert's backward into dx.
 * The expert kernels take pointers to the first expert of a range and a count of experts, so a rank that
 * holds experts [e0, e1) passes (experts_fc_w + e0*F*C, ..., n_experts = e1 - e0) with its received rows
 * grouped by expert, counts[i] rows for expert e0 + i.
 *
 * Conventions as in kernels.h: outputs first; row-major float32; weights (out, in) like nn.Linear; backward
 * ACCUMULATES (+=) into parameter gradients and into dx; every matmul is mome_gemm (through
 * mome_matmul_*); bit-identical results from run to run for a given thread count. All buffers are sized by
 * mome_moe_init for up to max_N tokens; no call allocates afterwards. Not thread-safe per mome_moe object.
 * Left to others: where the parameters live (the model's flat buffer; mome_moe_params are views into it),
 * MPI dispatch between ranks, and the residual/LayerNorm around the layer.
 */
#ifndef MOME_MOE_H
#define MOME_MOE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_embd;            /* C: model width */
    int n_experts;         /* E >= 1 */
    int d_ff;              /* F: hidden size of each expert */
    int top_k;             /* k, 1 <= k <= E */
    int shared_d_ff;       /* Fs: hidden size of the shared expert; 0 = no shared expert */
    int renormalize;       /* 1: weights renormalised over the chosen k (w = p / sum chosen p); 0: w = p */
    float capacity_factor; /* 0: dropless; > 0: capacity ceil(capacity_factor * N * k / E) per expert */
    float aux_coef;        /* coefficient of the load-balancing loss in backward */
    float z_coef;          /* coefficient of the router z-loss in backward */
    int max_slots;         /* slots per token the buffers hold: 0 = top_k (TOPK only, or KA with n <= top_k);
                              n_experts to allow every gate mode (ALL uses E slots, KA n). Rows cost
                              max_N * max_slots * (3C + 3F) floats or so, hence not by default. */
} mome_moe_config;

/* How the gate chooses experts (see the header comment). */
typedef enum {
    MOME_GATE_TOPK = 0, /* top_k by logit, capacity and renormalize as configured (the default) */
    MOME_GATE_ALL = 1,  /* all E experts, weights = softmax over all logits, dropless */
    MOME_GATE_KA = 2    /* knowledge augmentation: n experts, sampled with probability lambda, else top n */
} mome_moe_gate_kind;

typedef struct {
    mome_moe_gate_kind kind;
    int ka_n;            /* KA: experts per token, 1 <= n <= E; 0 = the default E - 1 (1 when E == 1) */
    float ka_lambda;     /* KA: probability, per layer and token, of sampling instead of taking the top n; [0, 1] */
    uint64_t seed;       /* KA: seed of the draws (the caller's; give it its own purpose, e.g. a stream) */
    uint64_t counter;    /* KA: call counter chosen by the caller (e.g. the step, times micro-steps): the draws are
                            a function of (seed, counter, layer, token) only, so a resumed run redraws them */
    uint32_t layer;      /* KA: layer id in the stream (mome_gpt_set_gate_mode sets layer l's to l) */
    uint64_t token_base; /* KA: global index of this call's token 0 (0 on one process; rank * N under data
                            parallelism, so a split batch draws as the whole); token_base + t < 2^40 */
} mome_moe_gate_mode;

/* Views of the layer's parameter tensors (or of their gradients, same shapes). Experts are stacked so that
 * expert e is slice e of each experts_* tensor (one contiguous block per expert). The shared_* pointers are
 * NULL when cfg.shared_d_ff == 0. */
typedef struct {
    float *gate_w;         /* (E, C) */
    float *experts_fc_w;   /* (E, F, C) */
    float *experts_fc_b;   /* (E, F) */
    float *experts_proj_w; /* (E, C, F) */
    float *experts_proj_b; /* (E, C) */
    float *shared_fc_w;    /* (Fs, C) */
    float *shared_fc_b;    /* (Fs) */
    float *shared_proj_w;  /* (C, Fs) */
    float *shared_proj_b;  /* (C) */
} mome_moe_params;

/* Dispatch plan of one call: who goes where. Filled by mome_moe_route; arrays sized for max_N tokens. */
typedef struct {
    size_t N;          /* tokens of this call */
    int E, k;          /* experts, slots per token of this call (top_k; E in ALL mode; n in KA mode) */
    size_t capacity;   /* per-expert capacity of this call; 0 = dropless */
    int32_t *expert;   /* (N, k) chosen expert per (token, slot); slot 0 has the largest probability
                          (ALL mode: slot s is expert s) */
    float *weight;     /* (N, k) combine weight per (token, slot) (renormalised or raw probability) */
    int64_t *pos;      /* (N, k) row in the grouped buffers, or -1 if the assignment was dropped */
    size_t *routed;    /* (E) assignments per expert before capacity dropping (sum = N*k) */
    size_t *counts;    /* (E) kept rows per expert (<= capacity when capacity > 0) */
    size_t *offsets;   /* (E+1) expert e's rows are [offsets[e], offsets[e+1]); offsets[E] = n_rows */
    int32_t *row_token;/* (N*k) token of grouped row r (r < n_rows) */
    int32_t *row_slot; /* (N*k) slot of grouped row r */
    size_t n_rows;     /* kept assignments */
    size_t n_dropped;  /* N*k - n_rows */
} mome_moe_plan;

/* Statistics of the last mome_moe_route / mome_moe_forward. */
typedef struct {
    double aux_loss;      /* E * sum_e f_e P_e (unscaled by aux_coef) */
    double z_loss;        /* mean_t logsumexp(logits)^2 (unscaled by z_coef) */
    size_t n_tokens;      /* N */
    size_t n_assign;      /* N*k */
    size_t n_dropped;     /* dropped assignments */
    double dropped_frac;  /* n_dropped / (N*k) */
    size_t capacity;      /* per expert; 0 = dropless */
    const size_t *routed; /* (E) assignments per expert before dropping (points into the plan) */
    const size_t *kept;   /* (E) kept assignments per expert (points into the plan) */
    const double *load;   /* (E) routed / (N*k): the load fractions f_e; they sum to 1 */
} mome_moe_stats;

typedef struct {
    mome_moe_config cfg;
    size_t max_N;         /* capacity of every buffer below, in tokens */
    int max_slots;        /* slots per token of the row buffers (cfg.max_slots, or top_k when 0) */
    mome_moe_gate_mode gate; /* gate mode of the next calls (zeroed: TOPK); set with mome_moe_set_gate_mode */
    mome_moe_params p;    /* parameters (views set by the caller, e.g. with mome_moe_params_bind) */
    mome_moe_params g;    /* gradients, same shapes; backward accumulates (+=) into them */
    mome_moe_plan plan;   /* dispatch plan of the last forward */
    mome_moe_stats stats; /* statistics of the last forward */
    /* gate, saved for backward */
    float *logits;        /* (max_N, E) */
    float *probs;         /* (max_N, E) softmax of logits */
    float *lse;           /* (max_N) logsumexp of each row of logits */
    double *load;         /* (E) load fractions of the last call */
    double *prob_mean;    /* (E) P_e of the last call */
    /* grouped rows, saved for backward (max_rows = max_N * max_slots) */
    float *rows_in;       /* (max_rows, C) gathered inputs */
    float *rows_h;        /* (max_rows, F) fc pre-activation */
    float *rows_a;        /* (max_rows, F) gelu(rows_h) */
    float *rows_out;      /* (max_rows, C) expert outputs */
    /* shared expert, saved for backward (NULL without one) */
    float *sh_h;          /* (max_N, Fs) */
    float *sh_a;          /* (max_N, Fs) */
    float *sh_out;        /* (max_N, C) */
    /* backward scratch */
    float *drows_out;     /* (max_rows, C) */
    float *drows_in;      /* (max_rows, C) */
    float *dscratch_h;    /* (max(max_rows * F, max_N * Fs)) d(fc pre-activation) */
    float *dweight;       /* (max_N, max_slots) */
    float *dlogits;       /* (max_N, E) */
    int shares_scratch;   /* the backward scratch belongs to another layer (mome_moe_share_scratch) */
} mome_moe;

/* ---- configuration and parameters ---- */
/* Checks sizes (C, E, F > 0, 1 <= k <= E, Fs >= 0, capacity_factor >= 0 and finite, coefficients finite,
 * renormalize 0/1, max_slots 0 or in [k, E]). MOME_ECONFIG with a message naming the field, expected and got. */
int mome_moe_config_check(const mome_moe_config *cfg);
/* Floats in all parameter tensors of a layer (gate, experts, shared expert), laid out as mome_moe_params_bind
 * lays them. */
size_t mome_moe_num_params(const mome_moe_config *cfg);
/* Points p's members into base (mome_moe_num_params floats), in the order of mome_moe_params; the shared
 * pointers are NULL without a shared expert. */
void mome_moe_params_bind(mome_moe_params *p, float *base, const mome_moe_config *cfg);
/* Per-expert capacity for N tokens: ceil(capacity_factor * N * k / E), or 0 when dropless. */
size_t mome_moe_capacity(const mome_moe_config *cfg, size_t N);
/* The same for the layer's current gate mode: mome_moe_capacity in TOPK mode, 0 (dropless) in ALL and KA. */
size_t mome_moe_gate_capacity(const mome_moe *m, size_t N);
/* Slots per token that a gate mode uses on a layer of this config: top_k (TOPK), E (ALL), n (KA). */
int mome_moe_gate_slots(const mome_moe_config *cfg, const mome_moe_gate_mode *mode);
/* Checks a gate mode against a config (kind known, 0 <= ka_n <= E, lambda in [0, 1]; the slots need not fit
 * max_slots here). MOME_ECONFIG with a message. */
int mome_moe_gate_mode_check(const mome_moe_config *cfg, const mome_moe_gate_mode *mode);

/* ---- lifecycle ---- */
/* Checks cfg and sizes every buffer for up to max_N tokens (max_N > 0) of up to max_slots slots each. The gate
 * mode starts as TOPK. m->p and m->g are left NULL: the caller points them at the parameters and gradients.
 * Returns MOME_ECONFIG / MOME_EINVAL with a message. */
int mome_moe_init(mome_moe *m, const mome_moe_config *cfg, size_t max_N);
/* Frees the buffers (not the parameters); accepts a zeroed or already freed struct. */
void mome_moe_free(mome_moe *m);
/* Frees m's backward scratch (drows_out .. dlogits) and uses owner's instead, which must have the same config and
 * max_N: the layers of a model run their backward passes one after another, so one set serves them all. owner
 * must outlive m's use; mome_moe_free(m) leaves the shared buffers alone. */
void mome_moe_share_scratch(mome_moe *m, const mome_moe *owner);
/* Sets the gate mode of the following calls (copied; ka_n = 0 resolved to its default). Not between a forward and
 * its backward. MOME_ECONFIG if the mode is invalid or needs more slots than m->max_slots (the layer is left
 * unchanged). Allocates nothing. */
int mome_moe_set_gate_mode(mome_moe *m, const mome_moe_gate_mode *mode);

/* ---- the whole layer, one process ---- */
/* y (N, C) = MoE(x (N, C)); overwrites y. Fills m->plan and m->stats; saves what backward needs. */
void mome_moe_forward(mome_moe *m, float *y, const float *x, size_t N);
/* Must follow mome_moe_forward with the same x. dy (N, C) is d(loss)/dy (already scaled by grad_scale).
 * dx (N, C) += d/dx; m->g += parameter gradients, including grad_scale * (aux_coef * d aux + z_coef * d z). */
void mome_moe_backward(mome_moe *m, float *dx, const float *dy, const float *x, size_t N, float grad_scale);

/* ---- stage 1: route ---- */
/* Gate forward and dispatch plan for x (N, C) in the layer's gate mode: writes m->logits, m->probs, m->lse
 * (N rows), m->plan (plan.k = the mode's slots) and m->stats (aux and z-loss values, counts, load, dropped
 * fraction). */
void mome_moe_route(mome_moe *m, const float *x, size_t N);
/* Admission, row order and offsets of a plan whose experts (plan.expert) are chosen: assignment j (in token,
 * slot order) of expert e is kept iff before[e] + j < capacity (capacity 0: all kept; before NULL: zeros). With
 * before[e] counting the assignments of lower ranks, admission follows the global (rank, token, slot) order. */
void mome_moe_plan_admit(mome_moe_plan *pl, size_t capacity, const int64_t *before);
/* Gate backward. dweight (N, plan.k) is d(loss)/d(plan.weight) (0 for dropped slots); adds
 * grad_scale * (aux_coef * d aux + z_coef * d z). dgate_w (E, C) += ..., dx (N, C) += ...; dx may be NULL.
 * Uses m->dlogits as scratch. */
void mome_moe_route_backward(mome_moe *m, float *dx, float *dgate_w, const float *dweight, const float *x,
                             size_t N, float grad_scale);

/* ---- stage 2: gather rows per expert ---- */
/* rows (n_rows, C)[r] = x (N, C)[plan.row_token[r]]. */
void mome_moe_gather_forward(float *rows, const float *x, const mome_moe_plan *plan, int C);
/* dx (N, C)[t] += sum of drows (n_rows, C) over the kept rows of token t (summed in slot order). */
void mome_moe_gather_backward(float *dx, const float *drows, const mome_moe_plan *plan, int C);

/* ---- stage 3: experts on grouped rows, for a range of n_exp experts ---- */
/* Rows are grouped by expert: counts (n_exp) rows for expert 0 of the range, then expert 1, ...; the weight
 * pointers point at the first expert of the range. For each expert i with rows R_i:
 *   h (rows, F) = R_i fc_w[i]^T + fc_b[i];  a = gelu(h);  out (rows, C) = a proj_w[i]^T + proj_b[i].
 * out (n, C), h (n, F), a (n, F) are overwritten; in is (n, C); n = sum counts.
 * fc_w (n_exp, F, C), fc_b (n_exp, F), proj_w (n_exp, C, F), proj_b (n_exp, C). */
void mome_moe_experts_forward(float *out, float *h, float *a, const float *in, const size_t *counts, int n_exp,
                              const float *fc_w, const float *fc_b, const float *proj_w, const float *proj_b,
                              int C, int F);
/* din (n, C) = ... (overwritten), dfc_w (n_exp, F, C), dfc_b (n_exp, F), dproj_w (n_exp, C, F), dproj_b (n_exp, C) += ...
 * from dout (n, C); in, h, a as saved by forward; dh (n, F) is scratch (overwritten). din may be NULL. */
void mome_moe_experts_backward(float *din, float *dfc_w, float *dfc_b, float *dproj_w, float *dproj_b, float *dh, const float *dout, const float *in, const float *h, const float *a,
                               const size_t *counts, int n_exp, const float *fc_w, const float *proj_w, int C,
                               int F);

/* ---- stage 4: combine ---- */
/* y (N, C)[t] = sum over kept slots s of plan.weight[t,s] * rows (n_rows, C)[plan.pos[t,s]] (slot order);
 * tokens with no kept slot get 0. Overwrites y. */
void mome_moe_combine_forward(float *y, const float *rows, const mome_moe_plan *plan, int C);
/* drows (n_rows, C)[pos[t,s]] = weight[t,s] * dy[t] (overwritten); dweight (N, k)[t,s] = <dy[t], rows[pos]>
 * (overwritten; 0 for dropped slots). rows are the expert outputs saved by forward. */
void mome_moe_combine_backward(float *drows, float *dweight, const float *dy, const float *rows,
                               const mome_moe_plan *plan, int C);

#endif
