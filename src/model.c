/* model.c — the dense GPT (see model.h): parameter table, initialisation, activation buffers, forward and
 * backward composed from the kernels in kernels.h, and the FLOP count used for MFU.
 *
 * Pre-LayerNorm GPT-2 as in karpathy/llm.c train_gpt2.c:
 *     x0 = wte[tok] + wpe[t]
 *     per layer l: x' = x + proj(attn(ln1(x))) ;  x'' = x' + fc_proj(gelu(fc(ln2(x'))))
 *     logits = ln_f(x_L) · wte^T                   (output head tied to the token embedding)
 * The loss is not computed here: loss.h overwrites m->logits with d(loss)/d(logits), which backward consumes.
 * Activations for a (B,T) call are packed densely at the start of buffers sized for (max_B, max_T), so any
 * B <= max_B, T <= max_T works without reallocation; backward must follow a forward with the same inputs.
 */
#include "mome/model.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/kernels.h"
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
    float *dfch_gelu; /* (B,T,F) */
    float *scratch;   /* (n_scratch, T,T) attention backward */
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
    return MOME_OK;
}

void mome_gpt_table(const mome_gpt_config *cfg, mome_tensor_table *tab) {
    memset(tab, 0, sizeof *tab);
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
    memset(m, 0, sizeof *m);
    int rc = mome_gpt_config_check(cfg);
    if (rc) return rc;
    m->cfg = *cfg;
    mome_gpt_table(cfg, &m->table);
    m->params = mome_calloc(m->table.total, sizeof(float));
    m->grads = mome_calloc(m->table.total, sizeof(float));
    return MOME_OK;
}

/* Elements per RNG stream in the initialisation: each chunk of a tensor draws from its own stream
 * (seed, tensor, chunk), so chunks can be filled in parallel and the result never depends on threads. */
#define INIT_CHUNK 4096

void mome_gpt_init_weights(mome_gpt *m, uint64_t seed) {
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
    float **bufs[] = {&a->ln1,     &a->ln1_mean, &a->ln1_rstd, &a->qkv,      &a->atty,     &a->att,
                      &a->res2,    &a->ln2,      &a->ln2_mean, &a->ln2_rstd, &a->fch,      &a->fch_gelu,
                      &a->res3,    &a->encoded,  &a->lnf,      &a->lnf_mean, &a->lnf_rstd, &a->proj,
                      &a->dres,    &a->dln,      &a->datty,    &a->dqkv,     &a->dfch,     &a->dfch_gelu,
                      &a->scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        mome_free(*bufs[i]);
        *bufs[i] = NULL;
    }
    mome_free(a);
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
    const size_t L = (size_t)c->n_layer, C = (size_t)c->d_model, F = (size_t)c->d_ff, NH = (size_t)c->n_head;
    const size_t BT = (size_t)B * (size_t)T, TT = (size_t)T * (size_t)T;
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
    a->fch = mome_malloc(L * BT * F * f);
    a->fch_gelu = mome_malloc(L * BT * F * f);
    a->res3 = mome_malloc(L * BT * C * f);
    a->encoded = mome_malloc(BT * C * f);
    a->lnf = mome_malloc(BT * C * f);
    a->lnf_mean = mome_malloc(BT * f);
    a->lnf_rstd = mome_malloc(BT * f);
    a->proj = mome_malloc(BT * C * f);
    a->dres = mome_malloc(BT * C * f);
    a->dln = mome_malloc(BT * C * f);
    a->datty = mome_malloc(BT * C * f);
    a->dqkv = mome_malloc(BT * 3 * C * f);
    a->dfch = mome_malloc(BT * F * f);
    a->dfch_gelu = mome_malloc(BT * F * f);
    a->scratch = mome_malloc((size_t)a->n_scratch * TT * f);
    m->acts = a;
    m->logits = mome_malloc(BT * (size_t)c->vocab_size * f);
    m->max_B = B;
    m->max_T = T;
    return MOME_OK;
}

void mome_gpt_free(mome_gpt *m) {
    if (!m) return;
    acts_free(m->acts);
    mome_free(m->logits);
    mome_free(m->params);
    mome_free(m->grads);
    memset(m, 0, sizeof *m);
}

void mome_gpt_zero_grad(mome_gpt *m) { memset(m->grads, 0, m->table.total * sizeof(float)); }

/* Pointers to the tensors of layer l (or the whole tensor for the non-layer ones) in a flat buffer. */
typedef struct {
    float *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw,
        *fcprojb, *lnfw, *lnfb;
} layer_view;

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
    v.fcw = base + t->t[MOME_GPT_FCW].offset + ul * F * C;
    v.fcb = base + t->t[MOME_GPT_FCB].offset + ul * F;
    v.fcprojw = base + t->t[MOME_GPT_FCPROJW].offset + ul * C * F;
    v.fcprojb = base + t->t[MOME_GPT_FCPROJB].offset + ul * C;
    v.lnfw = base + t->t[MOME_GPT_LNFW].offset;
    v.lnfb = base + t->t[MOME_GPT_LNFB].offset;
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

void mome_gpt_forward(mome_gpt *m, const int32_t *inputs, int B, int T) {
    check_call(m, inputs, B, T);
    mome_gpt_acts *a = m->acts;
    const int L = m->cfg.n_layer, C = m->cfg.d_model, F = m->cfg.d_ff, NH = m->cfg.n_head, V = m->cfg.vocab_size;
    const size_t BT = (size_t)B * (size_t)T, cap = a->cap_bt;
    const size_t att_cap = (size_t)m->max_B * NH * (size_t)m->max_T * (size_t)m->max_T;

    layer_view p0 = view_of(m, m->params, 0);
    mome_encoder_forward(a->encoded, inputs, p0.wte, p0.wpe, B, T, C);
    const float *x = a->encoded; // (B,T,C) input of the current layer
    for (int l = 0; l < L; l++) {
        layer_view p = view_of(m, m->params, l);
        const size_t ul = (size_t)l;
        float *ln1 = a->ln1 + ul * cap * C, *ln1_mean = a->ln1_mean + ul * cap, *ln1_rstd = a->ln1_rstd + ul * cap;
        float *qkv = a->qkv + ul * cap * 3 * C, *atty = a->atty + ul * cap * C, *att = a->att + ul * att_cap;
        float *res2 = a->res2 + ul * cap * C, *ln2 = a->ln2 + ul * cap * C;
        float *ln2_mean = a->ln2_mean + ul * cap, *ln2_rstd = a->ln2_rstd + ul * cap;
        float *fch = a->fch + ul * cap * F, *fch_gelu = a->fch_gelu + ul * cap * F, *res3 = a->res3 + ul * cap * C;

        mome_layernorm_forward(ln1, ln1_mean, ln1_rstd, x, p.ln1w, p.ln1b, BT, C);
        mome_matmul_forward(qkv, ln1, p.qkvw, p.qkvb, BT, C, 3 * C);
        mome_attention_forward(atty, att, qkv, B, T, C, NH);
        mome_matmul_forward(a->proj, atty, p.attprojw, p.attprojb, BT, C, C);
        mome_residual_forward(res2, x, a->proj, BT * C);
        mome_layernorm_forward(ln2, ln2_mean, ln2_rstd, res2, p.ln2w, p.ln2b, BT, C);
        mome_matmul_forward(fch, ln2, p.fcw, p.fcb, BT, C, F);
        mome_gelu_forward(fch_gelu, fch, BT * F);
        mome_matmul_forward(a->proj, fch_gelu, p.fcprojw, p.fcprojb, BT, F, C);
        mome_residual_forward(res3, res2, a->proj, BT * C);
        x = res3;
    }
    mome_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, x, p0.lnfw, p0.lnfb, BT, C);
    mome_matmul_forward(m->logits, a->lnf, p0.wte, NULL, BT, C, V);
}

void mome_gpt_backward(mome_gpt *m, const int32_t *inputs, int B, int T) {
    check_call(m, inputs, B, T);
    mome_gpt_acts *a = m->acts;
    const int L = m->cfg.n_layer, C = m->cfg.d_model, F = m->cfg.d_ff, NH = m->cfg.n_head, V = m->cfg.vocab_size;
    const size_t BT = (size_t)B * (size_t)T, cap = a->cap_bt;
    const size_t att_cap = (size_t)m->max_B * NH * (size_t)m->max_T * (size_t)m->max_T;
    const size_t fC = BT * (size_t)C * sizeof(float), fF = BT * (size_t)F * sizeof(float);

    layer_view p0 = view_of(m, m->params, 0), g0 = view_of(m, m->grads, 0);
    const float *xL = L > 0 ? a->res3 + (size_t)(L - 1) * cap * C : a->encoded;
    // head: logits = lnf · wte^T
    memset(a->dln, 0, fC);
    mome_matmul_backward(a->dln, g0.wte, NULL, m->logits, a->lnf, p0.wte, BT, C, V);
    memset(a->dres, 0, fC);
    mome_layernorm_backward(a->dres, g0.lnfw, g0.lnfb, a->dln, xL, p0.lnfw, a->lnf_mean, a->lnf_rstd, BT, C);

    for (int l = L - 1; l >= 0; l--) {
        layer_view p = view_of(m, m->params, l), g = view_of(m, m->grads, l);
        const size_t ul = (size_t)l;
        const float *x = l == 0 ? a->encoded : a->res3 + (ul - 1) * cap * C;
        const float *ln1 = a->ln1 + ul * cap * C, *ln1_mean = a->ln1_mean + ul * cap;
        const float *ln1_rstd = a->ln1_rstd + ul * cap;
        const float *qkv = a->qkv + ul * cap * 3 * C, *atty = a->atty + ul * cap * C, *att = a->att + ul * att_cap;
        const float *res2 = a->res2 + ul * cap * C, *ln2 = a->ln2 + ul * cap * C;
        const float *ln2_mean = a->ln2_mean + ul * cap, *ln2_rstd = a->ln2_rstd + ul * cap;
        const float *fch = a->fch + ul * cap * F, *fch_gelu = a->fch_gelu + ul * cap * F;

        // dres holds d(res3); res3 = res2 + fcproj, so it is also d(fcproj) and the first part of d(res2)
        memset(a->dfch_gelu, 0, fF);
        mome_matmul_backward(a->dfch_gelu, g.fcprojw, g.fcprojb, a->dres, fch_gelu, p.fcprojw, BT, F, C);
        memset(a->dfch, 0, fF);
        mome_gelu_backward(a->dfch, fch, a->dfch_gelu, BT * F);
        memset(a->dln, 0, fC);
        mome_matmul_backward(a->dln, g.fcw, g.fcb, a->dfch, ln2, p.fcw, BT, C, F);
        mome_layernorm_backward(a->dres, g.ln2w, g.ln2b, a->dln, res2, p.ln2w, ln2_mean, ln2_rstd, BT, C);
        // dres now holds d(res2); res2 = x + attproj
        memset(a->datty, 0, fC);
        mome_matmul_backward(a->datty, g.attprojw, g.attprojb, a->dres, atty, p.attprojw, BT, C, C);
        memset(a->dqkv, 0, 3 * fC);
        mome_attention_backward(a->dqkv, a->scratch, a->n_scratch, a->datty, qkv, att, B, T, C, NH);
        memset(a->dln, 0, fC);
        mome_matmul_backward(a->dln, g.qkvw, g.qkvb, a->dqkv, ln1, p.qkvw, BT, C, 3 * C);
        mome_layernorm_backward(a->dres, g.ln1w, g.ln1b, a->dln, x, p.ln1w, ln1_mean, ln1_rstd, BT, C);
        // dres now holds d(x), the gradient of this layer's input
    }
    mome_encoder_backward(g0.wte, g0.wpe, a->dres, inputs, B, T, C);
}

/* Forward FLOPs per token (a multiply-add counts 2):
 *   matmuls: 2 * (L * (3C*C + C*C + C*F + F*C) + V*C)       weights of the blocks plus the tied LM head
 *   attention: per layer, q·k^T and att·v each cost 2*C per attended position; with causal masking a token
 *              attends (T+1)/2 positions on average:  L * 2 * 2 * C * (T+1)/2
 * (Embeddings, LayerNorm, GELU and softmax are ignored.) A training step costs about 3x this (forward +
 * backward), which the caller applies. */
double mome_gpt_flops_per_token(const mome_gpt_config *cfg, int T) {
    const double L = cfg->n_layer, C = cfg->d_model, F = cfg->d_ff, V = cfg->vocab_size;
    const double matmul_params = L * (4.0 * C * C + 2.0 * C * F) + V * C;
    const double t_avg = 0.5 * ((double)T + 1.0);
    return 2.0 * matmul_params + 2.0 * 2.0 * L * C * t_avg;
}
