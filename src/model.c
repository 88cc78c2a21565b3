/* model.c — the GPT (see model.h): parameter table, initialisation, activation buffers, forward and
 * backward composed from the kernels in kernels.h (dense MLP) or the MoE layer of moe.h (one mome_moe per
 * block, its parameters viewed in the model's flat buffer), and the FLOP count used for MFU.
 *
 * Pre-LayerNorm GPT-2 as in karpathy/llm.c train_gpt2.c:
 *     x0 = wte[tok] + wpe[t]
 *     per layer l: x' = x + proj(attn(ln1(x))) ;  x'' = x' + fc_proj(gelu(fc(ln2(x'))))
 *     logits = ln_f(x_L) · wte^T                   (output head tied to the token embedding)
 * The loss is not computed here: loss.h overwrites m->logits with d(loss)/d(logits), which backward consumes.
 * MoE model: the MLP of every block is replaced by mome_moe_forward on the N = B*T rows of ln2(x'), each block
 * with its own mome_moe (its plan and saved activations); its parameters are views into the flat buffer.
 * Activations for a (B,T) call are packed densely at the start of buffers sized for (max_B, max_T), so any
 * B <= max_B, T <= max_T works without reallocation; backward must follow a forward with the same inputs.
 */
#include "mome/model.h"

#include "mome/block.h"
#include "prof.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/kernels.h"
#include "mome/moe.h"
#include "mome/rng.h"

struct mome_gpt_acts {
    size_t cap_bt; /* max_B * max_T */
    int n_scratch; /* attention backward work areas */
    /* per layer, stacked over L (each layer's slice is cap_bt rows, or max_B*NH*max_T^2 for att) */
    float *ln1;       /* (L, B,T,C) */
    float *ln1_mean;  /* (L, B,T) */
    float *ln1_rstd;  /* (L, B,T) */
    float *qkv;       /* (L, B,T,3C) */
    float *atty;      /* (L, B,T,C) */
    float *att;       /* (L, B,NH,T,T) softmax probabilities */
    float *res2;      /* (L, B,T,C) residual after attention */
    float *ln2;       /* (L, B,T,C) */
    float *ln2_mean;  /* (L, B,T) */
    float *ln2_rstd;  /* (L, B,T) */
    float *fch;       /* (L, B,T,F) */
    float *fch_gelu;  /* (L, B,T,F) */
    float *res3;      /* (L, B,T,C) residual after the MLP */
    /* single */
    float *encoded;   /* (B,T,C) */
    float *lnf;       /* (B,T,C) */
    float *lnf_mean;  /* (B,T) */
    float *lnf_rstd;  /* (B,T) */
    float *proj;      /* (B,T,C) forward scratch: output of a projection before the residual add */
    /* backward scratch */
    float *dres;      /* (B,T,C) gradient of the residual stream */
    float *dln;       /* (B,T,C) */
    float *datty;     /* (B,T,C) */
    float *dqkv;      /* (B,T,3C) */
    float *dfch;      /* (B,T,F) */
    float *scratch;   /* (n_scratch, T,T) attention backward */
    /* MoE model: one layer object per block (fch, fch_gelu, dfch are then NULL) */
    int n_moe;        /* L, or 0 for a dense model */
    mome_moe *moe;    /* (L) */
    /* parallel MoE (mome_gpt_set_parallel); R_ep = ep size * cap_bt * k received rows at most */
    size_t cap_ep;    /* R_ep, or 0 when not allocated */
    float *ep_in;     /* (L, R_ep, C) received rows, saved for backward */
    float *ep_h;      /* (L, R_ep, F) */
    float *ep_a;      /* (L, R_ep, F) */
    float *ep_out;    /* (R_ep, C) expert outputs / d(received rows) */
    float *ep_dout;   /* (R_ep, C) */
    float *ep_scr;    /* (R_ep, C) dispatch scratch */
    float *ep_dh;     /* (R_ep, F) */
    size_t *ep_rows;  /* (n_local) rows per local expert */
    int *send_counts; /* (E) */
    double *red;      /* (2E + 3) allreduce buffer */
    int64_t *before;  /* (E) rows routed to each expert by lower ranks of dp_comm */
    int64_t *mine;    /* (E) */
};

int mome_gpt_config_check(const mome_gpt_config *c) {
    if (c->vocab_size <= 0 || c->seq_len <= 0 || c->n_layer <= 0 || c->n_head <= 0 || c->d_model <= 0 ||
        c->d_ff <= 0)
        return mome_error_set(MOME_ECONFIG,
                              "model config: every size must be positive, got vocab_size %d seq_len %d n_layer %d "
                              "n_head %d d_model %d d_ff %d",
                              c->vocab_size, c->seq_len, c->n_layer, c->n_head, c->d_model, c->d_ff);
    if (c->d_model % c->n_head != 0)
        return mome_error_set(MOME_ECONFIG, "model config: d_model %d is not divisible by n_head %d", c->d_model,
                              c->n_head);
    if (c->n_experts < 0)
        return mome_error_set(MOME_ECONFIG, "model config: n_experts must be >= 0 (0 = dense), got %d",
                              c->n_experts);
    if (c->n_experts > 0) {
        if (c->top_k < 1 || c->top_k > c->n_experts)
            return mome_error_set(MOME_ECONFIG, "model config: top_k must be in [1, n_experts = %d], got %d",
                                  c->n_experts, c->top_k);
        if (!isfinite(c->capacity_factor) || c->capacity_factor < 0.0f)
            return mome_error_set(MOME_ECONFIG,
                                  "model config: capacity_factor must be finite and >= 0 (0 = dropless), got %g",
                                  (double)c->capacity_factor);
        if (c->shared_d_ff < 0)
            return mome_error_set(MOME_ECONFIG, "model config: shared_d_ff must be >= 0 (0 = none), got %d",
                                  c->shared_d_ff);
        if (!isfinite(c->aux_coef) || !isfinite(c->z_coef))
            return mome_error_set(MOME_ECONFIG, "model config: aux_coef and z_coef must be finite, got %g and %g",
                                  (double)c->aux_coef, (double)c->z_coef);
    }
    return MOME_OK;
}

/* The MoE table: the dense tensors minus the MLP, then gate and shared expert (dense), then the El experts. */
static void moe_table(const mome_gpt_config *cfg, int El, mome_tensor_table *tab) {
    const size_t V = (size_t)cfg->vocab_size, Tm = (size_t)cfg->seq_len, L = (size_t)cfg->n_layer;
    const size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff, E = (size_t)cfg->n_experts;
    const size_t Fs = (size_t)cfg->shared_d_ff, uEl = (size_t)El;
    const struct {
        const char *name;
        int ndim;
        size_t shape[4];
        int decay;
        int expert; /* 1: expert tensor (expert_dim 1) */
    } spec[] = {
        {"wte", 2, {V, C, 1, 1}, 1, 0},
        {"wpe", 2, {Tm, C, 1, 1}, 0, 0},
        {"blocks/ln1_w", 2, {L, C, 1, 1}, 0, 0},
        {"blocks/ln1_b", 2, {L, C, 1, 1}, 0, 0},
        {"blocks/qkv_w", 3, {L, 3 * C, C, 1}, 1, 0},
        {"blocks/qkv_b", 2, {L, 3 * C, 1, 1}, 0, 0},
        {"blocks/attn_proj_w", 3, {L, C, C, 1}, 1, 0},
        {"blocks/attn_proj_b", 2, {L, C, 1, 1}, 0, 0},
        {"blocks/ln2_w", 2, {L, C, 1, 1}, 0, 0},
        {"blocks/ln2_b", 2, {L, C, 1, 1}, 0, 0},
        {"ln_f_w", 1, {C, 1, 1, 1}, 0, 0},
        {"ln_f_b", 1, {C, 1, 1, 1}, 0, 0},
        {"blocks/gate_w", 3, {L, E, C, 1}, 1, 0},
        {"blocks/shared_fc_w", 3, {L, Fs, C, 1}, 1, 0},
        {"blocks/shared_fc_b", 2, {L, Fs, 1, 1}, 0, 0},
        {"blocks/shared_proj_w", 3, {L, C, Fs, 1}, 1, 0},
        {"blocks/shared_proj_b", 2, {L, C, 1, 1}, 0, 0},
        {"blocks/experts_fc_w", 4, {L, uEl, F, C}, 1, 1},
        {"blocks/experts_fc_b", 3, {L, uEl, F, 1}, 0, 1},
        {"blocks/experts_proj_w", 4, {L, uEl, C, F}, 1, 1},
        {"blocks/experts_proj_b", 3, {L, uEl, C, 1}, 0, 1},
    };
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        if (Fs == 0 && strncmp(spec[i].name, "blocks/shared_", 14) == 0) continue;
        int idx = mome_tensor_table_add(tab, spec[i].name, spec[i].ndim, spec[i].shape, spec[i].decay);
        if (spec[i].expert) tab->t[idx].expert_dim = 1;
    }
}

void mome_gpt_table(const mome_gpt_config *cfg, mome_tensor_table *tab) {
    mome_gpt_table_experts(cfg, cfg->n_experts, tab);
}

void mome_gpt_table_experts(const mome_gpt_config *cfg, int expert_count, mome_tensor_table *tab) {
    memset(tab, 0, sizeof *tab);
    if (cfg->n_experts > 0) {
        moe_table(cfg, expert_count, tab);
        return;
    }
    const size_t V = (size_t)cfg->vocab_size, Tm = (size_t)cfg->seq_len, L = (size_t)cfg->n_layer;
    const size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff;
    /* Order and names follow the enum in model.h. */
    const struct {
        const char *name;
        int ndim;
        size_t shape[3];
        int decay;
    } spec[MOME_GPT_NTENSORS] = {
        {"wte", 2, {V, C, 1}, 1},
        {"wpe", 2, {Tm, C, 1}, 0},
        {"blocks/ln1_w", 2, {L, C, 1}, 0},
        {"blocks/ln1_b", 2, {L, C, 1}, 0},
        {"blocks/qkv_w", 3, {L, 3 * C, C}, 1},
        {"blocks/qkv_b", 2, {L, 3 * C, 1}, 0},
        {"blocks/attn_proj_w", 3, {L, C, C}, 1},
        {"blocks/attn_proj_b", 2, {L, C, 1}, 0},
        {"blocks/ln2_w", 2, {L, C, 1}, 0},
        {"blocks/ln2_b", 2, {L, C, 1}, 0},
        {"blocks/fc_w", 3, {L, F, C}, 1},
        {"blocks/fc_b", 2, {L, F, 1}, 0},
        {"blocks/fc_proj_w", 3, {L, C, F}, 1},
        {"blocks/fc_proj_b", 2, {L, C, 1}, 0},
        {"ln_f_w", 1, {C, 1, 1}, 0},
        {"ln_f_b", 1, {C, 1, 1}, 0},
    };
    for (int i = 0; i < MOME_GPT_NTENSORS; i++) {
        int idx = mome_tensor_table_add(tab, spec[i].name, spec[i].ndim, spec[i].shape, spec[i].decay);
        MOME_CHECK(idx == i, "gpt table: %s got index %d, expected %d", spec[i].name, idx, i);
    }
}

int mome_gpt_init(mome_gpt *m, const mome_gpt_config *cfg) {
    return mome_gpt_init_experts(m, cfg, 0, cfg->n_experts > 0 ? cfg->n_experts : 0);
}

int mome_gpt_init_experts(mome_gpt *m, const mome_gpt_config *cfg, int expert_first, int expert_count) {
    memset(m, 0, sizeof *m);
    int rc = mome_gpt_config_check(cfg);
    if (rc) return rc;
    if (cfg->n_experts > 0) {
        if (expert_count < 1 || expert_first < 0 || expert_first > cfg->n_experts - expert_count)
            return mome_error_set(MOME_EINVAL,
                                  "gpt init: expert range [%d, %d + %d) is not a non-empty range inside [0, %d)",
                                  expert_first, expert_first, expert_count, cfg->n_experts);
    } else if (expert_first != 0 || expert_count != 0) {
        return mome_error_set(MOME_EINVAL, "gpt init: a dense model takes expert range 0, 0, got %d, %d",
                              expert_first, expert_count);
    }
    m->cfg = *cfg;
    mome_gpt_table_experts(cfg, expert_count, &m->table);
    m->params = mome_calloc(m->table.total, sizeof(float));
    m->grads = mome_calloc(m->table.total, sizeof(float));
    m->expert_first = expert_first;
    m->expert_count = expert_count;
    m->n_dense = m->table.total;
    if (cfg->n_experts > 0) {
        const int k = mome_tensor_table_find(&m->table, "blocks/experts_fc_w");
        MOME_CHECK(k >= 0 && k == m->table.n - 4, "gpt init: expert tensors are not the last four (%d of %d)", k,
                   m->table.n);
        m->n_dense = m->table.t[k].offset;
        m->expert_load = mome_calloc((size_t)cfg->n_layer * (size_t)cfg->n_experts, sizeof(double));
    }
    return MOME_OK;
}

/* Elements per RNG stream in the initialisation: each chunk of a tensor draws from its own stream
 * (seed, tensor, chunk), so chunks can be filled in parallel and the result never depends on threads. */
#define INIT_CHUNK 4096

/* p[0, n) = s * N(0, 1), chunk ch drawing from stream (seed, a, b0 + ch). */
static void fill_normal(float *p, size_t n, float s, uint64_t seed, uint64_t a, uint64_t b0) {
    const size_t nchunk = (n + INIT_CHUNK - 1) / INIT_CHUNK;
#pragma omp parallel for schedule(static)
    for (size_t ch = 0; ch < nchunk; ch++) {
        mome_rng rng;
        mome_rng_stream(&rng, seed, a, b0 + (uint64_t)ch);
        const size_t i0 = ch * INIT_CHUNK;
        const size_t i1 = i0 + INIT_CHUNK < n ? i0 + INIT_CHUNK : n;
        for (size_t i = i0; i < i1; i++) p[i] = s * mome_rng_normal(&rng);
    }
}

/* MoE model: std by name for the dense tensors (stream per table index, as in the dense model); each expert
 * slice (layer l, global expert e) of an expert tensor draws from its own streams keyed by (tensor name, l, e),
 * so the values do not depend on which experts this rank holds. */
static void init_weights_moe(mome_gpt *m, uint64_t seed) {
    const mome_gpt_config *c = &m->cfg;
    const float std = 0.02f;
    const float resid_std = 0.02f / sqrtf(2.0f * (float)c->n_layer);
    memset(m->params, 0, m->table.total * sizeof(float));
    static const char *const normal[] = {"wte", "wpe", "blocks/qkv_w", "blocks/gate_w", "blocks/shared_fc_w"};
    static const char *const resid[] = {"blocks/attn_proj_w", "blocks/shared_proj_w"};
    static const char *const ones[] = {"blocks/ln1_w", "blocks/ln2_w", "ln_f_w"};
    for (int k = 0; k < m->table.n; k++) {
        const mome_tensor_info *ti = &m->table.t[k];
        float *p = m->params + ti->offset;
        if (ti->expert_dim == 1) {
            const int is_fc_w = strcmp(ti->name, "blocks/experts_fc_w") == 0;
            const int is_proj_w = strcmp(ti->name, "blocks/experts_proj_w") == 0;
            if (!is_fc_w && !is_proj_w) continue; /* biases stay 0 */
            const float s = is_fc_w ? std : resid_std;
            const size_t per = ti->shape[2] * ti->shape[3]; /* one expert's slice */
            for (size_t l = 0; l < ti->shape[0]; l++)
                for (size_t i = 0; i < ti->shape[1]; i++) {
                    const uint64_t e = (uint64_t)m->expert_first + i;
                    const uint64_t key = ((uint64_t)l * (uint64_t)c->n_experts + e) << 24;
                    fill_normal(p + (l * ti->shape[1] + i) * per, per, s, seed,
                                0x6d6f650000ULL + (uint64_t)is_proj_w, key);
                }
            continue;
        }
        float s = 0.0f;
        for (size_t i = 0; i < sizeof normal / sizeof normal[0]; i++)
            if (strcmp(ti->name, normal[i]) == 0) s = std;
        for (size_t i = 0; i < sizeof resid / sizeof resid[0]; i++)
            if (strcmp(ti->name, resid[i]) == 0) s = resid_std;
        for (size_t i = 0; i < sizeof ones / sizeof ones[0]; i++)
            if (strcmp(ti->name, ones[i]) == 0)
                for (size_t j = 0; j < ti->numel; j++) p[j] = 1.0f;
        if (s > 0.0f) fill_normal(p, ti->numel, s, seed, 0x6770740000ULL + (uint64_t)k, 0);
    }
}

void mome_gpt_init_weights(mome_gpt *m, uint64_t seed) {
    if (m->cfg.n_experts > 0) {
        init_weights_moe(m, seed);
        return;
    }
    const mome_gpt_config *c = &m->cfg;
    const float std = 0.02f;
    const float resid_std = 0.02f / sqrtf(2.0f * (float)c->n_layer);
    memset(m->params, 0, m->table.total * sizeof(float));
    for (int k = 0; k < m->table.n; k++) {
        const mome_tensor_info *ti = &m->table.t[k];
        float *p = m->params + ti->offset;
        float s = 0.0f;
        switch (k) {
        case MOME_GPT_WTE:
        case MOME_GPT_WPE:
        case MOME_GPT_QKVW:
        case MOME_GPT_FCW: s = std; break;
        case MOME_GPT_ATTPROJW:
        case MOME_GPT_FCPROJW: s = resid_std; break;
        case MOME_GPT_LN1W:
        case MOME_GPT_LN2W:
        case MOME_GPT_LNFW:
            for (size_t i = 0; i < ti->numel; i++) p[i] = 1.0f;
            continue;
        default: continue; /* biases stay 0 */
        }
        const size_t nchunk = (ti->numel + INIT_CHUNK - 1) / INIT_CHUNK;
#pragma omp parallel for schedule(static)
        for (size_t ch = 0; ch < nchunk; ch++) {
            mome_rng rng;
            mome_rng_stream(&rng, seed, 0x6770740000ULL + (uint64_t)k, (uint64_t)ch);
            const size_t i0 = ch * INIT_CHUNK;
            const size_t i1 = i0 + INIT_CHUNK < ti->numel ? i0 + INIT_CHUNK : ti->numel;
            for (size_t i = i0; i < i1; i++) p[i] = s * mome_rng_normal(&rng);
        }
    }
}

static void acts_free(mome_gpt_acts *a) {
    if (!a) return;
    for (int l = a->n_moe - 1; l >= 0; l--) mome_moe_free(&a->moe[l]); /* layer 0 owns the shared scratch */
    mome_free(a->moe);
    void *ep_bufs[] = {a->ep_in, a->ep_h,    a->ep_a,        a->ep_out, a->ep_dout, a->ep_scr, a->ep_dh,
                       a->ep_rows, a->send_counts, a->red,    a->before,  a->mine};
    for (size_t i = 0; i < sizeof ep_bufs / sizeof ep_bufs[0]; i++) mome_free(ep_bufs[i]);
    float **bufs[] = {&a->ln1,     &a->ln1_mean, &a->ln1_rstd, &a->qkv,      &a->atty,     &a->att,
                      &a->res2,    &a->ln2,      &a->ln2_mean, &a->ln2_rstd, &a->fch,      &a->fch_gelu,
                      &a->res3,    &a->encoded,  &a->lnf,      &a->lnf_mean, &a->lnf_rstd, &a->proj,
                      &a->dres,    &a->dln,      &a->datty,    &a->dqkv,     &a->dfch,
                      &a->scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        mome_free(*bufs[i]);
        *bufs[i] = NULL;
    }
    mome_free(a);
}

/* Sizes the parallel MoE buffers for the current activation capacity and m->ep (no-op when not needed). */
static void ep_buffers(mome_gpt *m) {
    mome_gpt_acts *a = m->acts;
    if (!a || a->n_moe == 0 || (!m->dp_global && !m->ep)) return;
    const size_t L = (size_t)m->cfg.n_layer, C = (size_t)m->cfg.d_model, F = (size_t)m->cfg.d_ff;
    const size_t E = (size_t)m->cfg.n_experts, f = sizeof(float);
    /* rows per token: top_k, or more when the gate mode needs them (moe.h max_slots) */
    const size_t P = m->ep ? (size_t)m->ep->size : 1, R = P * a->cap_bt * (size_t)a->moe[0].max_slots;
    if (a->red && a->cap_ep == R) return;
    float **fb[] = {&a->ep_in, &a->ep_h, &a->ep_a, &a->ep_out, &a->ep_dout, &a->ep_scr, &a->ep_dh};
    for (size_t i = 0; i < sizeof fb / sizeof fb[0]; i++) {
        mome_free(*fb[i]);
        *fb[i] = NULL;
    }
    mome_free(a->ep_rows);
    mome_free(a->send_counts);
    mome_free(a->red);
    mome_free(a->before);
    mome_free(a->mine);
    a->cap_ep = R;
    if (m->ep) {
        a->ep_in = mome_malloc(L * R * C * f);
        a->ep_h = mome_malloc(L * R * F * f);
        a->ep_a = mome_malloc(L * R * F * f);
        a->ep_out = mome_malloc(R * C * f);
        a->ep_dout = mome_malloc(R * C * f);
        a->ep_scr = mome_malloc(R * C * f);
        a->ep_dh = mome_malloc(R * F * f);
    }
    a->ep_rows = mome_calloc(E, sizeof *a->ep_rows);
    a->send_counts = mome_calloc(E, sizeof *a->send_counts);
    a->red = mome_calloc(2 * E + 3, sizeof *a->red);
    a->before = mome_calloc(E, sizeof *a->before);
    a->mine = mome_calloc(E, sizeof *a->mine);
}

void mome_gpt_set_parallel(mome_gpt *m, MPI_Comm dp_comm, mome_dispatch *ep) {
    if (m->cfg.n_experts == 0) return;
    if (ep) {
        MOME_CHECK(ep->n_experts == m->cfg.n_experts && ep->first[ep->rank] == m->expert_first &&
                       ep->n_local == m->expert_count,
                   "gpt set_parallel: the dispatch gives rank %d experts [%d, %d) of %d, the model holds [%d, %d) of "
                   "%d",
                   ep->rank, ep->first[ep->rank], ep->first[ep->rank] + ep->n_local, ep->n_experts,
                   m->expert_first, m->expert_first + m->expert_count, m->cfg.n_experts);
    } else {
        MOME_CHECK(m->expert_count == m->cfg.n_experts,
                   "gpt set_parallel: without expert parallelism the model must hold all %d experts, it holds %d",
                   m->cfg.n_experts, m->expert_count);
    }
    m->dp_global = dp_comm != MPI_COMM_NULL;
    m->dp_comm = dp_comm;
    m->ep = ep;
    if (m->acts) {
        m->acts->cap_ep = 0; /* resize for the new group */
        mome_free(m->acts->red);
        m->acts->red = NULL;
        ep_buffers(m);
    }
}

/* The config of every MoE layer. max_slots: more than top_k only when the gate mode needs more (moe.h). */
static mome_moe_config moe_config(const mome_gpt *m) {
    const mome_gpt_config *c = &m->cfg;
    mome_moe_config mc = {.n_embd = c->d_model, .n_experts = c->n_experts, .d_ff = c->d_ff,
                          .top_k = c->top_k, .shared_d_ff = c->shared_d_ff,
                          .renormalize = c->top_k > 1, .capacity_factor = c->capacity_factor,
                          .aux_coef = c->aux_coef, .z_coef = c->z_coef};
    const int slots = mome_moe_gate_slots(&mc, &m->gate_mode);
    if (slots > c->top_k) mc.max_slots = slots;
    return mc;
}

/* The gate mode of layer l: the model's with layer id l (the KA draws differ between layers). */
static int set_layer_gate(mome_moe *moe, const mome_moe_gate_mode *mode, int l) {
    mome_moe_gate_mode g = *mode;
    g.layer = (uint32_t)l;
    return mome_moe_set_gate_mode(moe, &g);
}

int mome_gpt_set_gate_mode(mome_gpt *m, const mome_moe_gate_mode *mode) {
    if (m->cfg.n_experts == 0) return mome_error_set(MOME_EINVAL, "gpt set_gate_mode: a dense model has no gate");
    const mome_moe_config mc = moe_config(m);
    int rc = mome_moe_gate_mode_check(&mc, mode);
    if (rc) return rc;
    m->gate_mode = *mode;
    mome_gpt_acts *a = m->acts;
    if (!a) return MOME_OK; /* mome_gpt_reserve applies it */
    if (mome_moe_gate_slots(&mc, mode) > a->moe[0].max_slots) {
        /* the layers' row buffers are too small: reallocate the activations with the mode's slots */
        const int B = m->max_B, T = m->max_T;
        acts_free(a);
        mome_free(m->logits);
        m->acts = NULL;
        m->logits = NULL;
        m->max_B = m->max_T = 0;
        return mome_gpt_reserve(m, B, T);
    }
    for (int l = 0; l < a->n_moe; l++) {
        rc = set_layer_gate(&a->moe[l], mode, l);
        if (rc) return rc; /* cannot happen: checked above */
    }
    return MOME_OK;
}

int mome_gpt_reserve(mome_gpt *m, int B, int T) {
    const mome_gpt_config *c = &m->cfg;
    if (B <= 0 || T <= 0 || T > c->seq_len)
        return mome_error_set(MOME_EINVAL, "gpt reserve: need B > 0 and 0 < T <= seq_len %d, got B %d T %d",
                              c->seq_len, B, T);
    if (m->acts && B <= m->max_B && T <= m->max_T) return MOME_OK;
    if (m->acts) { /* grow to cover both the old and the new capacity */
        if (B < m->max_B) B = m->max_B;
        if (T < m->max_T) T = m->max_T;
    }
    acts_free(m->acts);
    mome_free(m->logits);
    m->acts = NULL;
    m->logits = NULL;
    /* An inference model keeps one layer of activations (every layer overwrites it); routing state (moe) stays
     * per layer. */
    const size_t L = m->inference ? 1 : (size_t)c->n_layer, C = (size_t)c->d_model, F = (size_t)c->d_ff;
    const size_t NH = (size_t)c->n_head, BT = (size_t)B * (size_t)T, TT = (size_t)T * (size_t)T;
    mome_gpt_acts *a = mome_calloc(1, sizeof *a);
    a->cap_bt = BT;
    a->n_scratch = 1;
#ifdef _OPENMP
    a->n_scratch = omp_get_max_threads();
#endif
    const size_t f = sizeof(float);
    a->ln1 = mome_malloc(L * BT * C * f);
    a->ln1_mean = mome_malloc(L * BT * f);
    a->ln1_rstd = mome_malloc(L * BT * f);
    a->qkv = mome_malloc(L * BT * 3 * C * f);
    a->atty = mome_malloc(L * BT * C * f);
    a->att = mome_malloc(L * (size_t)B * NH * TT * f);
    a->res2 = mome_malloc(L * BT * C * f);
    a->ln2 = mome_malloc(L * BT * C * f);
    a->ln2_mean = mome_malloc(L * BT * f);
    a->ln2_rstd = mome_malloc(L * BT * f);
    if (c->n_experts == 0) {
        a->fch = mome_malloc(L * BT * F * f);
        a->fch_gelu = mome_malloc(L * BT * F * f);
        if (!m->inference) {
            a->dfch = mome_malloc(BT * F * f);
        }
    } else {
        const mome_moe_config mc = moe_config(m);
        a->moe = mome_calloc((size_t)c->n_layer, sizeof *a->moe);
        for (size_t l = 0; l < (size_t)c->n_layer; l++) {
            int rc = mome_moe_init(&a->moe[l], &mc, BT);
            if (!rc) rc = set_layer_gate(&a->moe[l], &m->gate_mode, (int)l);
            if (rc) {
                acts_free(a);
                return rc;
            }
            a->n_moe = (int)l + 1;
            if (l > 0) mome_moe_share_scratch(&a->moe[l], &a->moe[0]); /* backward runs one layer at a time */
        }
    }
    a->res3 = mome_malloc(L * BT * C * f);
    a->encoded = mome_malloc(BT * C * f);
    a->lnf = mome_malloc(BT * C * f);
    a->lnf_mean = mome_malloc(BT * f);
    a->lnf_rstd = mome_malloc(BT * f);
    a->proj = mome_malloc(BT * C * f);
    if (!m->inference) {
        a->dres = mome_malloc(BT * C * f);
        a->dln = mome_malloc(BT * C * f);
        a->datty = mome_malloc(BT * C * f);
        a->dqkv = mome_malloc(BT * 3 * C * f);
        a->scratch = mome_malloc((size_t)a->n_scratch * TT * f);
    }
    m->acts = a;
    ep_buffers(m);
    m->logits = mome_malloc(BT * (size_t)c->vocab_size * f);
    m->max_B = B;
    m->max_T = T;
    return MOME_OK;
}

void mome_gpt_set_inference(mome_gpt *m) {
    acts_free(m->acts);
    mome_free(m->logits);
    mome_free(m->grads);
    m->acts = NULL;
    m->logits = NULL;
    m->grads = NULL;
    m->max_B = m->max_T = 0;
    m->inference = 1;
}

void mome_gpt_free(mome_gpt *m) {
    if (!m) return;
    acts_free(m->acts);
    mome_free(m->logits);
    mome_free(m->params);
    mome_free(m->grads);
    mome_free(m->expert_load);
    memset(m, 0, sizeof *m);
}

void mome_gpt_zero_grad(mome_gpt *m) {
    MOME_CHECK(!m->inference, "gpt: an inference-only model has no gradients");
    mome_zero(m->grads, m->table.total);
}

const mome_moe *mome_gpt_moe_layer(const mome_gpt *m, int layer) {
    if (!m->acts || layer < 0 || layer >= m->acts->n_moe) return NULL;
    return &m->acts->moe[layer];
}

/* Pointers to the tensors of layer l (or the whole tensor for the non-layer ones) in a flat buffer. */
typedef struct {
    float *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw,
        *fcprojb, *lnfw, *lnfb;
    mome_moe_params moe; /* MoE model: the layer's gate, shared expert and this rank's experts */
} layer_view;

/* Start of tensor `name` in base, plus `skip` floats; NULL if the table has no such tensor. */
static float *tensor_at(const mome_tensor_table *t, float *base, const char *name, size_t skip) {
    const int k = mome_tensor_table_find(t, name);
    return k < 0 ? NULL : base + t->t[k].offset + skip;
}

static layer_view view_of(const mome_gpt *m, float *base, int l) {
    const mome_tensor_table *t = &m->table;
    const size_t C = (size_t)m->cfg.d_model, F = (size_t)m->cfg.d_ff, ul = (size_t)l;
    layer_view v;
    v.wte = base + t->t[MOME_GPT_WTE].offset;
    v.wpe = base + t->t[MOME_GPT_WPE].offset;
    v.ln1w = base + t->t[MOME_GPT_LN1W].offset + ul * C;
    v.ln1b = base + t->t[MOME_GPT_LN1B].offset + ul * C;
    v.qkvw = base + t->t[MOME_GPT_QKVW].offset + ul * 3 * C * C;
    v.qkvb = base + t->t[MOME_GPT_QKVB].offset + ul * 3 * C;
    v.attprojw = base + t->t[MOME_GPT_ATTPROJW].offset + ul * C * C;
    v.attprojb = base + t->t[MOME_GPT_ATTPROJB].offset + ul * C;
    v.ln2w = base + t->t[MOME_GPT_LN2W].offset + ul * C;
    v.ln2b = base + t->t[MOME_GPT_LN2B].offset + ul * C;
    memset(&v.moe, 0, sizeof v.moe);
    if (m->cfg.n_experts == 0) {
        v.fcw = base + t->t[MOME_GPT_FCW].offset + ul * F * C;
        v.fcb = base + t->t[MOME_GPT_FCB].offset + ul * F;
        v.fcprojw = base + t->t[MOME_GPT_FCPROJW].offset + ul * C * F;
        v.fcprojb = base + t->t[MOME_GPT_FCPROJB].offset + ul * C;
        v.lnfw = base + t->t[MOME_GPT_LNFW].offset;
        v.lnfb = base + t->t[MOME_GPT_LNFB].offset;
        return v;
    }
    const size_t E = (size_t)m->cfg.n_experts, El = (size_t)m->expert_count, Fs = (size_t)m->cfg.shared_d_ff;
    v.fcw = v.fcb = v.fcprojw = v.fcprojb = NULL;
    v.lnfw = tensor_at(t, base, "ln_f_w", 0);
    v.lnfb = tensor_at(t, base, "ln_f_b", 0);
    v.moe.gate_w = tensor_at(t, base, "blocks/gate_w", ul * E * C);
    v.moe.experts_fc_w = tensor_at(t, base, "blocks/experts_fc_w", ul * El * F * C);
    v.moe.experts_fc_b = tensor_at(t, base, "blocks/experts_fc_b", ul * El * F);
    v.moe.experts_proj_w = tensor_at(t, base, "blocks/experts_proj_w", ul * El * C * F);
    v.moe.experts_proj_b = tensor_at(t, base, "blocks/experts_proj_b", ul * El * C);
    if (Fs > 0) {
        v.moe.shared_fc_w = tensor_at(t, base, "blocks/shared_fc_w", ul * Fs * C);
        v.moe.shared_fc_b = tensor_at(t, base, "blocks/shared_fc_b", ul * Fs);
        v.moe.shared_proj_w = tensor_at(t, base, "blocks/shared_proj_w", ul * C * Fs);
        v.moe.shared_proj_b = tensor_at(t, base, "blocks/shared_proj_b", ul * C);
    }
    return v;
}

static void check_call(const mome_gpt *m, const int32_t *inputs, int B, int T) {
    MOME_CHECK(m->acts, "gpt: mome_gpt_reserve was not called");
    MOME_CHECK(B > 0 && T > 0 && B <= m->max_B && T <= m->max_T,
               "gpt: batch %d x %d exceeds the reserved %d x %d", B, T, m->max_B, m->max_T);
    const size_t BT = (size_t)B * (size_t)T;
    for (size_t i = 0; i < BT; i++)
        MOME_CHECK(inputs[i] >= 0 && inputs[i] < m->cfg.vocab_size, "gpt: token %d at %zu outside [0, %d)",
                   (int)inputs[i], i, m->cfg.vocab_size);
}

#define TIMED(m, cat, call) MOME_TIMED((m)->prof, cat, call)

/* ---------------------------------------------------------------------------------- parallel MoE layer */

static void mpi_ok(int e, const char *what) { MOME_CHECK(e == MPI_SUCCESS, "gpt: %s failed (MPI error %d)", what, e); }

/* Routes x (N, C) with the statistics of the global token set of dp_comm (see mome_gpt_set_parallel). */
static void route_global(mome_gpt *m, mome_moe *moe, const float *x, size_t N) {
    mome_moe_route(moe, x, N);
    m->n_tokens_global = (double)N;
    if (!m->dp_global) return;
    mome_gpt_acts *a = m->acts;
    mome_moe_plan *pl = &moe->plan;
    const int E = m->cfg.n_experts, k = pl->k; /* slots of this call: top_k, or the gate mode's */
    double *red = a->red; /* [N, routed (E), sum of probs (E), sum of lse^2] */
    memset(red, 0, (2 * (size_t)E + 2) * sizeof *red);
    red[0] = (double)N;
    for (int e = 0; e < E; e++) {
        red[1 + e] = (double)pl->routed[e];
        a->mine[e] = (int64_t)pl->routed[e];
    }
    for (size_t t = 0; t < N; t++) {
        const float *p = moe->probs + t * (size_t)E;
        for (int e = 0; e < E; e++) red[1 + E + e] += p[e];
        red[1 + 2 * E] += (double)moe->lse[t] * moe->lse[t];
    }
    mpi_ok(MPI_Allreduce(MPI_IN_PLACE, red, 2 * E + 2, MPI_DOUBLE, MPI_SUM, m->dp_comm), "MPI_Allreduce(routing)");
    mpi_ok(MPI_Exscan(a->mine, a->before, E, MPI_INT64_T, MPI_SUM, m->dp_comm), "MPI_Exscan(routed)");
    int rank = 0;
    MPI_Comm_rank(m->dp_comm, &rank);
    if (rank == 0) memset(a->before, 0, (size_t)E * sizeof *a->before); /* Exscan leaves rank 0 undefined */
    const double Ng = red[0], nk = Ng * k;
    const size_t capacity = mome_moe_gate_capacity(moe, (size_t)Ng); /* 0 (dropless) in ALL and KA mode */
    mome_moe_plan_admit(pl, capacity, a->before);
    double aux = 0.0, dropped = 0.0;
    for (int e = 0; e < E; e++) {
        moe->load[e] = nk > 0 ? red[1 + e] / nk : 0.0;
        moe->prob_mean[e] = Ng > 0 ? red[1 + E + e] / Ng : 0.0;
        aux += moe->load[e] * moe->prob_mean[e];
        if (capacity > 0 && red[1 + e] > (double)capacity) dropped += red[1 + e] - (double)capacity;
    }
    mome_moe_stats *st = &moe->stats;
    st->aux_loss = (double)E * aux;
    st->z_loss = Ng > 0 ? red[1 + 2 * E] / Ng : 0.0;
    st->n_tokens = (size_t)Ng;
    st->n_assign = (size_t)nk;
    st->n_dropped = (size_t)dropped;
    st->dropped_frac = nk > 0 ? dropped / nk : 0.0;
    st->capacity = capacity;
    m->n_tokens_global = Ng;
}

static void ep_plan(mome_gpt *m, const mome_moe_plan *pl) {
    mome_gpt_acts *a = m->acts;
    for (int e = 0; e < m->cfg.n_experts; e++) a->send_counts[e] = (int)pl->counts[e];
    MOME_CHECK(mome_dispatch_plan(m->ep, a->send_counts) == MOME_OK, "gpt: dispatch plan failed: %s",
               mome_error_message());
    MOME_CHECK(m->ep->n_recv <= a->cap_ep, "gpt: %zu received rows exceed the reserved %zu", m->ep->n_recv,
               a->cap_ep);
    for (int i = 0; i < m->ep->n_local; i++) a->ep_rows[i] = (size_t)m->ep->expert_rows[i];
}

/* The MoE layer l with global routing and, with m->ep, the experts on their owners: y (N, C) = MoE(x). */
static void moe_forward_par(mome_gpt *m, int l, mome_moe *moe, float *y, const float *x, size_t N) {
    mome_gpt_acts *a = m->acts;
    const int C = m->cfg.d_model, F = m->cfg.d_ff, Fs = m->cfg.shared_d_ff;
    const mome_moe_params *p = &moe->p;
    route_global(m, moe, x, N);
    const mome_moe_plan *pl = &moe->plan;
    mome_moe_gather_forward(moe->rows_in, x, pl, C);
    if (m->ep) {
        const size_t R = a->cap_ep, ul = (size_t)l;
        float *in = a->ep_in + ul * R * C, *h = a->ep_h + ul * R * F, *act = a->ep_a + ul * R * F;
        ep_plan(m, pl);
        int rc;
        TIMED(m, MOME_PROF_ALLTOALL, rc = mome_dispatch_forward(m->ep, moe->rows_in, in, a->ep_scr, C));
        MOME_CHECK(rc == MOME_OK, "gpt: dispatch forward failed: %s", mome_error_message());
        mome_moe_experts_forward(a->ep_out, h, act, in, a->ep_rows, m->ep->n_local, p->experts_fc_w,
                                 p->experts_fc_b, p->experts_proj_w, p->experts_proj_b, C, F);
        TIMED(m, MOME_PROF_ALLTOALL, rc = mome_dispatch_reverse(m->ep, a->ep_out, moe->rows_out, a->ep_scr, C));
        MOME_CHECK(rc == MOME_OK, "gpt: dispatch reverse failed: %s", mome_error_message());
    } else {
        mome_moe_experts_forward(moe->rows_out, moe->rows_h, moe->rows_a, moe->rows_in, pl->counts,
                                 m->cfg.n_experts, p->experts_fc_w, p->experts_fc_b, p->experts_proj_w,
                                 p->experts_proj_b, C, F);
    }
    mome_moe_combine_forward(y, moe->rows_out, pl, C);
    if (Fs > 0) {
        mome_matmul_gelu_forward(moe->sh_h, moe->sh_a, x, p->shared_fc_w, p->shared_fc_b, N, C, Fs);
        mome_matmul_forward(moe->sh_out, moe->sh_a, p->shared_proj_w, p->shared_proj_b, N, Fs, C);
        mome_residual_forward(y, y, moe->sh_out, N * (size_t)C);
    }
}

/* Backward of moe_forward_par: dx (N, C) += ..., gradients into moe->g (this rank's experts). */
static void moe_backward_par(mome_gpt *m, int l, mome_moe *moe, float *dx, const float *dy, const float *x,
                             size_t N, float grad_scale) {
    mome_gpt_acts *a = m->acts;
    const int C = m->cfg.d_model, F = m->cfg.d_ff, Fs = m->cfg.shared_d_ff;
    const mome_moe_params *p = &moe->p, *g = &moe->g;
    const mome_moe_plan *pl = &moe->plan;
    mome_moe_combine_backward(moe->drows_out, moe->dweight, dy, moe->rows_out, pl, C);
    if (m->ep) {
        const size_t R = a->cap_ep, ul = (size_t)l;
        const float *in = a->ep_in + ul * R * C, *h = a->ep_h + ul * R * F, *act = a->ep_a + ul * R * F;
        ep_plan(m, pl); /* the same counts as in forward */
        int rc;
        TIMED(m, MOME_PROF_ALLTOALL, rc = mome_dispatch_forward(m->ep, moe->drows_out, a->ep_dout, a->ep_scr, C));
        MOME_CHECK(rc == MOME_OK, "gpt: dispatch forward (gradients) failed: %s", mome_error_message());
        /* the experts' backward writes all n_recv rows of ep_out (their rows sum to it): no zeroing */
        mome_moe_experts_backward(a->ep_out, g->experts_fc_w, g->experts_fc_b, g->experts_proj_w,
                                  g->experts_proj_b, a->ep_dh, a->ep_dout, in, h, act, a->ep_rows,
                                  m->ep->n_local, p->experts_fc_w, p->experts_proj_w, C, F);
        TIMED(m, MOME_PROF_ALLTOALL, rc = mome_dispatch_reverse(m->ep, a->ep_out, moe->drows_in, a->ep_scr, C));
        MOME_CHECK(rc == MOME_OK, "gpt: dispatch reverse (gradients) failed: %s", mome_error_message());
    } else {
        mome_moe_experts_backward(moe->drows_in, g->experts_fc_w, g->experts_fc_b, g->experts_proj_w,
                                  g->experts_proj_b, moe->dscratch_h, moe->drows_out,
                                  moe->rows_in, moe->rows_h, moe->rows_a, pl->counts, m->cfg.n_experts,
                                  p->experts_fc_w, p->experts_proj_w, C, F);
    }
    mome_moe_gather_backward(dx, moe->drows_in, pl, C);
    /* route backward scales the aux and z terms by 1/N (local): rescale to 1/N_global */
    const float gs = m->n_tokens_global > 0 ? (float)((double)grad_scale * (double)N / m->n_tokens_global) : 0.0f;
    mome_moe_route_backward(moe, dx, g->gate_w, moe->dweight, x, N, gs);
    if (Fs > 0) {
        mome_matmul_gelu_backward(moe->dscratch_h, g->shared_proj_w, g->shared_proj_b, dy, moe->sh_a, moe->sh_h,
                                  p->shared_proj_w, N, Fs, C);
        mome_matmul_backward(dx, g->shared_fc_w, g->shared_fc_b, moe->dscratch_h, x, p->shared_fc_w, N, C, Fs);
    }
}

const char *const mome_prof_names[MOME_PROF_N] = {"embedding", "layernorm", "attn_linear", "attention",
                                                   "residual",  "ffn",       "alltoall",    "head",
                                                   "memset"};

/* The block.h views of layer l: its weights (from a layer_view), its saved activations (slot ul of the stacked
 * buffers) and the shared scratch. */
static mome_block_weights block_weights(const layer_view *v) {
    const mome_block_weights w = {v->ln1w, v->ln1b, v->qkvw, v->qkvb, v->attprojw, v->attprojb,
                                  v->ln2w, v->ln2b, v->fcw,  v->fcb,  v->fcprojw,  v->fcprojb};
    return w;
}

static mome_block_acts block_acts(const mome_gpt *m, size_t ul) {
    const mome_gpt_acts *a = m->acts;
    const size_t C = (size_t)m->cfg.d_model, F = (size_t)m->cfg.d_ff, cap = a->cap_bt;
    const size_t att_cap = (size_t)m->max_B * (size_t)m->cfg.n_head * (size_t)m->max_T * (size_t)m->max_T;
    mome_block_acts b = {
        .ln1 = a->ln1 + ul * cap * C,       .ln1_mean = a->ln1_mean + ul * cap, .ln1_rstd = a->ln1_rstd + ul * cap,
        .qkv = a->qkv + ul * cap * 3 * C,   .atty = a->atty + ul * cap * C,     .att = a->att + ul * att_cap,
        .res2 = a->res2 + ul * cap * C,     .ln2 = a->ln2 + ul * cap * C,       .ln2_mean = a->ln2_mean + ul * cap,
        .ln2_rstd = a->ln2_rstd + ul * cap, .res3 = a->res3 + ul * cap * C,
    };
    if (a->fch) {
        b.fch = a->fch + ul * cap * F;
        b.fch_gelu = a->fch_gelu + ul * cap * F;
    }
    return b;
}

static mome_block_scratch block_scratch(const mome_gpt *m) {
    const mome_gpt_acts *a = m->acts;
    const mome_block_scratch s = {a->proj, a->dln, a->datty, a->dqkv, a->dfch, a->scratch,
                                  a->n_scratch};
    return s;
}

void mome_gpt_forward(mome_gpt *m, const int32_t *inputs, int B, int T) {
    check_call(m, inputs, B, T);
    mome_gpt_acts *a = m->acts;
    const int L = m->cfg.n_layer, C = m->cfg.d_model, F = m->cfg.d_ff, NH = m->cfg.n_head, V = m->cfg.vocab_size;
    const size_t BT = (size_t)B * (size_t)T;

    const int E = m->cfg.n_experts;
    const int par = E > 0 && (m->dp_global || m->ep);
    MOME_CHECK(E == 0 || m->expert_count == E || m->ep,
               "gpt forward: a single-process MoE forward needs all %d experts, this model holds %d (from %d)", E,
               m->expert_count, m->expert_first);
    double aux = 0.0, z = 0.0;
    size_t n_assign = 0, n_dropped = 0;

    layer_view p0 = view_of(m, m->params, 0);
    const mome_block_scratch sc = block_scratch(m);
    TIMED(m, MOME_PROF_EMBED, mome_encoder_forward(a->encoded, inputs, p0.wte, p0.wpe, B, T, C));
    const float *x = a->encoded; // (B,T,C) input of the current layer
    for (int l = 0; l < L; l++) {
        layer_view p = view_of(m, m->params, l);
        const mome_block_weights w = block_weights(&p);
        /* activation slot of this layer; inference reuses slot 0 (res3 then overwrites this layer's input x
         * only after its last use, in the first residual add) */
        const mome_block_acts ba = block_acts(m, m->inference ? 0 : (size_t)l);
        mome_block_attn_forward(&w, &ba, &sc, x, B, T, C, NH, m->prof);
        if (a->n_moe == 0) {
            mome_block_mlp_forward(&w, &ba, &sc, B, T, C, F, m->prof);
        } else {
            mome_moe *moe = &a->moe[l];
            moe->p = p.moe;
            if (par)
                TIMED(m, MOME_PROF_FFN, moe_forward_par(m, l, moe, a->proj, ba.ln2, BT));
            else
                TIMED(m, MOME_PROF_FFN, mome_moe_forward(moe, a->proj, ba.ln2, BT));
            const mome_moe_stats *st = &moe->stats;
            aux += st->aux_loss;
            z += st->z_loss;
            n_assign += st->n_assign;
            n_dropped += st->n_dropped;
            for (int e = 0; e < E; e++) m->expert_load[(size_t)l * (size_t)E + (size_t)e] = st->load[e];
        }
        mome_block_residual_forward(&ba, &sc, B, T, C, m->prof);
        x = ba.res3;
    }
    TIMED(m, MOME_PROF_LAYERNORM, mome_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, x, p0.lnfw, p0.lnfb, BT, C));
    TIMED(m, MOME_PROF_HEAD, mome_matmul_forward(m->logits, a->lnf, p0.wte, NULL, BT, C, V));
    if (E > 0) {
        m->aux_loss = aux;
        m->z_loss = z;
        m->dropped_frac = n_assign ? (double)n_dropped / (double)n_assign : 0.0;
    }
}

/* ---------------------------------------------------------------------------------- incremental decoding */

struct mome_gpt_kv {
    int B, T, n; /* sequences, positions it can hold, positions cached */
    float *kv;   /* (L, B, T, 2C): [k | v] of each position of each layer */
    float *att;  /* (B * NH, T): one step's attention weights */
};

mome_gpt_kv *mome_gpt_kv_new(const mome_gpt *m, int B, int T) {
    if (!m->acts || m->inference || B < 1 || T < 1 || B > m->max_B || T > m->max_T) {
        mome_error_set(MOME_EINVAL, "gpt kv cache: needs a training-mode model reserved for %d x %d (it has %d x %d%s)",
                       B, T, m->max_B, m->max_T, m->inference ? ", inference mode" : "");
        return NULL;
    }
    mome_gpt_kv *kv = mome_calloc(1, sizeof *kv);
    kv->B = B;
    kv->T = T;
    const size_t C = (size_t)m->cfg.d_model;
    kv->kv = mome_malloc((size_t)m->cfg.n_layer * (size_t)B * (size_t)T * 2 * C * sizeof(float));
    kv->att = mome_malloc((size_t)B * (size_t)m->cfg.n_head * (size_t)T * sizeof(float));
    return kv;
}

void mome_gpt_kv_free(mome_gpt_kv *kv) {
    if (!kv) return;
    mome_free(kv->kv);
    mome_free(kv->att);
    mome_free(kv);
}

/* Keys and values of sequence b, position t, layer l in the cache. */
static float *kv_at(const mome_gpt *m, const mome_gpt_kv *kv, int l, int b, int t) {
    const size_t C2 = 2 * (size_t)m->cfg.d_model;
    return kv->kv + (((size_t)l * (size_t)kv->B + (size_t)b) * (size_t)kv->T + (size_t)t) * C2;
}

void mome_gpt_kv_prefill(mome_gpt *m, mome_gpt_kv *kv, const int32_t *rows, int n) {
    MOME_CHECK(n >= 1 && n <= kv->T, "gpt kv prefill: %d positions, the cache holds %d", n, kv->T);
    mome_gpt_forward(m, rows, kv->B, n);
    const int C = m->cfg.d_model;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const float *qkv = block_acts(m, (size_t)l).qkv; /* (B, n, 3C): [q | k | v] */
        for (int b = 0; b < kv->B; b++)
            for (int t = 0; t < n; t++)
                memcpy(kv_at(m, kv, l, b, t), qkv + ((size_t)b * n + t) * 3 * (size_t)C + C,
                       2 * (size_t)C * sizeof(float));
    }
    kv->n = n;
}

void mome_gpt_kv_step(mome_gpt *m, mome_gpt_kv *kv, const int32_t *tok) {
    const int B = kv->B, t = kv->n, L = m->cfg.n_layer, C = m->cfg.d_model, F = m->cfg.d_ff, NH = m->cfg.n_head;
    const int V = m->cfg.vocab_size, E = m->cfg.n_experts;
    MOME_CHECK(t >= 1 && t < kv->T, "gpt kv step: position %d outside [1, %d) (prefill first)", t, kv->T);
    for (int b = 0; b < B; b++)
        MOME_CHECK(tok[b] >= 0 && tok[b] < V, "gpt kv step: token %d of sequence %d outside [0, %d)", (int)tok[b], b,
                   V);
    const int par = E > 0 && (m->dp_global || m->ep);
    mome_gpt_acts *a = m->acts;
    const mome_block_scratch sc = block_scratch(m);
    const mome_block_acts s = block_acts(m, 0); /* one row per sequence: layer 0's buffers serve every layer */
    const layer_view p0 = view_of(m, m->params, 0);
    const size_t BC = (size_t)B * (size_t)C;
    mome_encoder_forward(a->encoded, tok, p0.wte, p0.wpe + (size_t)t * C, B, 1, C);
    const float *x = a->encoded;
    for (int l = 0; l < L; l++) {
        const layer_view p = view_of(m, m->params, l);
        mome_layernorm_forward(s.ln1, s.ln1_mean, s.ln1_rstd, x, p.ln1w, p.ln1b, (size_t)B, C);
        mome_matmul_forward(s.qkv, s.ln1, p.qkvw, p.qkvb, (size_t)B, C, 3 * C);
        for (int b = 0; b < B; b++)
            memcpy(kv_at(m, kv, l, b, t), s.qkv + (size_t)b * 3 * C + C, 2 * (size_t)C * sizeof(float));
        mome_attention_step(s.atty, kv->att, s.qkv, 3 * C, kv_at(m, kv, l, 0, 0), B, kv->T, t + 1, C, NH);
        mome_matmul_forward(sc.proj, s.atty, p.attprojw, p.attprojb, (size_t)B, C, C);
        mome_residual_forward(s.res2, x, sc.proj, BC);
        mome_layernorm_forward(s.ln2, s.ln2_mean, s.ln2_rstd, s.res2, p.ln2w, p.ln2b, (size_t)B, C);
        if (a->n_moe == 0) {
            mome_matmul_gelu_forward(s.fch, s.fch_gelu, s.ln2, p.fcw, p.fcb, (size_t)B, C, F);
            mome_matmul_forward(sc.proj, s.fch_gelu, p.fcprojw, p.fcprojb, (size_t)B, F, C);
        } else {
            mome_moe *moe = &a->moe[l];
            moe->p = p.moe;
            const float cf = moe->cfg.capacity_factor;
            moe->cfg.capacity_factor = 0.0f; /* dropless */
            if (par)
                moe_forward_par(m, l, moe, sc.proj, s.ln2, (size_t)B);
            else
                mome_moe_forward(moe, sc.proj, s.ln2, (size_t)B);
            moe->cfg.capacity_factor = cf;
        }
        mome_residual_forward(s.res3, s.res2, sc.proj, BC);
        x = s.res3;
    }
    mome_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, x, p0.lnfw, p0.lnfb, (size_t)B, C);
    mome_matmul_forward(m->logits, a->lnf, p0.wte, NULL, (size_t)B, C, V);
    kv->n = t + 1;
}

void mome_gpt_backward(mome_gpt *m, const int32_t *inputs, int B, int T) {
    mome_gpt_backward_ex(m, inputs, B, T, 1.0f);
}

void mome_gpt_backward_ex(mome_gpt *m, const int32_t *inputs, int B, int T, float aux_grad_scale) {
    check_call(m, inputs, B, T);
    MOME_CHECK(!m->inference, "gpt: backward on an inference-only model");
    mome_gpt_acts *a = m->acts;
    const int L = m->cfg.n_layer, C = m->cfg.d_model, F = m->cfg.d_ff, NH = m->cfg.n_head, V = m->cfg.vocab_size;
    const size_t BT = (size_t)B * (size_t)T, cap = a->cap_bt;

    layer_view p0 = view_of(m, m->params, 0), g0 = view_of(m, m->grads, 0);
    const float *xL = L > 0 ? a->res3 + (size_t)(L - 1) * cap * C : a->encoded;
    // head: logits = lnf · wte^T
    TIMED(m, MOME_PROF_HEAD, mome_matmul_backward_to(a->dln, g0.wte, NULL, m->logits, a->lnf, p0.wte, BT, C, V));
    TIMED(m, MOME_PROF_MEMSET, mome_zero(a->dres, BT * (size_t)C));
    TIMED(m, MOME_PROF_LAYERNORM,
          mome_layernorm_backward(a->dres, g0.lnfw, g0.lnfb, a->dln, xL, p0.lnfw, a->lnf_mean, a->lnf_rstd, BT, C));

    const mome_block_scratch sc = block_scratch(m);
    for (int l = L - 1; l >= 0; l--) {
        layer_view p = view_of(m, m->params, l), g = view_of(m, m->grads, l);
        const mome_block_weights w = block_weights(&p), gw = block_weights(&g);
        const mome_block_acts ba = block_acts(m, (size_t)l);
        const float *x = l == 0 ? a->encoded : a->res3 + ((size_t)l - 1) * cap * C;
        // dres holds d(res3); the FFN writes d(ln2) to dln
        if (a->n_moe == 0) {
            mome_block_mlp_backward(&gw, &w, &ba, &sc, a->dres, B, T, C, F, m->prof);
        } else {
            mome_moe *moe = &a->moe[l];
            moe->p = p.moe;
            moe->g = g.moe;
            TIMED(m, MOME_PROF_MEMSET, mome_zero(a->dln, BT * (size_t)C));
            if (m->dp_global || m->ep)
                TIMED(m, MOME_PROF_FFN, moe_backward_par(m, l, moe, a->dln, a->dres, ba.ln2, BT, aux_grad_scale));
            else
                TIMED(m, MOME_PROF_FFN, mome_moe_backward(moe, a->dln, a->dres, ba.ln2, BT, aux_grad_scale));
        }
        mome_block_attn_backward(&gw, &w, &ba, &sc, x, a->dres, B, T, C, NH, m->prof);
        // dres now holds d(x), the gradient of this layer's input
    }
    TIMED(m, MOME_PROF_EMBED, mome_encoder_backward(g0.wte, g0.wpe, a->dres, inputs, B, T, C));
}

/* Forward FLOPs per token (a multiply-add counts 2):
 *   matmuls: 2 * (L * (3C*C + C*C + C*F + F*C) + V*C)       weights of the blocks plus the tied LM head
 *            (MoE: C*F + F*C per block becomes E*C + top_k*2*C*F + 2*C*Fs, the active weights)
 *   attention: per layer, q·k^T and att·v each cost 2*C per attended position; with causal masking a token
 *              attends (T+1)/2 positions on average:  L * 2 * 2 * C * (T+1)/2
 * (Embeddings, LayerNorm, GELU and softmax are ignored.) A training step costs about 3x this (forward +
 * backward), which the caller applies. */
double mome_gpt_flops_per_token(const mome_gpt_config *cfg, int T) {
    const double L = cfg->n_layer, C = cfg->d_model, F = cfg->d_ff, V = cfg->vocab_size;
    double ffn = 2.0 * C * F; /* dense MLP; MoE: gate E*C + top_k experts 2CF + shared expert 2C*Fs */
    if (cfg->n_experts > 0)
        ffn = (double)cfg->n_experts * C + (double)cfg->top_k * 2.0 * C * F + 2.0 * C * (double)cfg->shared_d_ff;
    const double matmul_params = L * (4.0 * C * C + ffn) + V * C;
    const double t_avg = 0.5 * ((double)T + 1.0);
    return 2.0 * matmul_params + 2.0 * 2.0 * L * C * t_avg;
}
