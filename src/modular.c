/* modular.c — the modular student (modular.h) on one process: shared embedding and head, expert trunks and an
 * optional common trunk, each a stack of block.h blocks run over the sequences routed to it.
 *
 * A trunk gathers its sequences (in batch order) into its own input buffer, runs its blocks with activations
 * saved per trunk and layer (room for every sequence in every trunk: averaging sends all of them to all trunks),
 * and its outputs are added, weighted 1 / (number of trunks the sequence went through), into the hidden state
 * before ln_f. Backward runs the same way in reverse and scatters each trunk's input gradient back to the
 * sequences' rows. Where trunks live when there are several ranks is left to the caller.
 */
#include "mome/modular.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/kernels.h"
#include "mome/rng.h"

/* The tensors of one block, in table order (name, rank of the per-layer shape, per-layer shape, decay). */
enum { TR_LN1W, TR_LN1B, TR_QKVW, TR_QKVB, TR_PROJW, TR_PROJB, TR_LN2W, TR_LN2B, TR_FCW, TR_FCB, TR_FCPW, TR_FCPB,
       TR_N };
static const char *const trunk_names[TR_N] = {"ln1_w",       "ln1_b",       "qkv_w", "qkv_b", "attn_proj_w",
                                              "attn_proj_b", "ln2_w",       "ln2_b", "fc_w",  "fc_b",
                                              "fc_proj_w",   "fc_proj_b"};

static void trunk_shape(const mome_modular_config *c, int k, int *ndim, size_t shape[2], int *decay) {
    const size_t C = (size_t)c->d_model, F = (size_t)c->d_ff;
    static const int decays[TR_N] = {0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0};
    size_t s0 = C, s1 = 1;
    switch (k) {
    case TR_QKVW: s0 = 3 * C; s1 = C; break;
    case TR_QKVB: s0 = 3 * C; break;
    case TR_PROJW: s1 = C; break;
    case TR_FCW: s0 = F; s1 = C; break;
    case TR_FCB: s0 = F; break;
    case TR_FCPW: s1 = F; break;
    default: break;
    }
    shape[0] = s0;
    shape[1] = s1;
    *ndim = s1 > 1 ? 2 : 1;
    *decay = decays[k];
}

int mome_modular_config_check(const mome_modular_config *c) {
    if (c->vocab_size <= 0 || c->seq_len <= 0 || c->d_model <= 0 || c->n_head <= 0 || c->d_ff <= 0 ||
        c->n_experts < 1 || c->trunk_layers < 1 || (c->common != 0 && c->common != 1) ||
        c->d_model % c->n_head != 0)
        return mome_error_set(MOME_ECONFIG,
                              "modular: bad config: vocab %d, seq_len %d, d_model %d, n_head %d (must divide "
                              "d_model), d_ff %d, n_experts %d (>= 1), trunk_layers %d (>= 1), common %d (0/1)",
                              c->vocab_size, c->seq_len, c->d_model, c->n_head, c->d_ff, c->n_experts,
                              c->trunk_layers, c->common);
    return MOME_OK;
}

void mome_modular_table(const mome_modular_config *c, mome_tensor_table *tab) {
    memset(tab, 0, sizeof *tab);
    const size_t V = (size_t)c->vocab_size, Tm = (size_t)c->seq_len, C = (size_t)c->d_model;
    const size_t L = (size_t)c->trunk_layers, E = (size_t)c->n_experts;
    const size_t s_wte[2] = {V, C}, s_wpe[2] = {Tm, C}, s_c[1] = {C};
    mome_tensor_table_add(tab, "wte", 2, s_wte, 1);
    mome_tensor_table_add(tab, "wpe", 2, s_wpe, 0);
    mome_tensor_table_add(tab, "ln_f_w", 1, s_c, 0);
    mome_tensor_table_add(tab, "ln_f_b", 1, s_c, 0);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0 && !c->common) continue;
        for (int k = 0; k < TR_N; k++) {
            int nd, decay;
            size_t sh[2], shape[4];
            trunk_shape(c, k, &nd, sh, &decay);
            char name[MOME_TENSOR_NAME_MAX];
            snprintf(name, sizeof name, "%s/%s", pass == 0 ? "common" : "experts", trunk_names[k]);
            int n = 0;
            if (pass == 1) shape[n++] = E;
            shape[n++] = L;
            for (int d = 0; d < nd; d++) shape[n++] = sh[d];
            const int idx = mome_tensor_table_add(tab, name, n, shape, decay);
            if (pass == 1) tab->t[idx].expert_dim = 0;
        }
    }
}

struct mome_modular_acts {
    size_t cap;               /* max_B * max_T rows */
    int n_trunks;             /* experts, then the common trunk */
    mome_block_acts *blocks;  /* (n_trunks, L) */
    float *trunk_in;          /* (n_trunks, cap, C) each trunk's gathered input */
    int32_t *seqs;            /* (n_trunks, max_B) the sequences each trunk ran, in batch order */
    int *n_seqs;              /* (n_trunks) */
    float *weight;            /* (max_B) 1 / number of trunks each sequence went through */
    float *encoded, *h, *lnf, *lnf_mean, *lnf_rstd; /* (cap, C), (cap) */
    float *dh, *dx, *dres;    /* (cap, C) */
    mome_block_scratch scratch;
    float *block_mem;         /* one allocation behind every block's saved activations */
};

static void acts_free(mome_modular_acts *a) {
    if (!a) return;
    void *bufs[] = {a->blocks,   a->trunk_in, a->seqs,     a->n_seqs,   a->weight,         a->encoded,
                    a->h,        a->lnf,      a->lnf_mean, a->lnf_rstd, a->dh,             a->dx,
                    a->dres,     a->block_mem, a->scratch.proj, a->scratch.dln, a->scratch.datty, a->scratch.dqkv,
                    a->scratch.dfch, a->scratch.dfch_gelu, a->scratch.att_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mome_free(bufs[i]);
    mome_free(a);
}

int mome_modular_init(mome_modular *m, const mome_modular_config *cfg) {
    memset(m, 0, sizeof *m);
    int rc = mome_modular_config_check(cfg);
    if (rc) return rc;
    m->cfg = *cfg;
    mome_modular_table(cfg, &m->table);
    m->params = mome_calloc(m->table.total, sizeof(float));
    m->grads = mome_calloc(m->table.total, sizeof(float));
    return MOME_OK;
}

void mome_modular_free(mome_modular *m) {
    if (!m) return;
    acts_free(m->acts);
    mome_free(m->logits);
    mome_free(m->params);
    mome_free(m->grads);
    memset(m, 0, sizeof *m);
}

void mome_modular_zero_grad(mome_modular *m) { memset(m->grads, 0, m->table.total * sizeof(float)); }

/* The weights (or gradients, base = m->grads) of layer l of trunk t: t < n_experts an expert, else the common. */
static mome_block_weights trunk_weights(const mome_modular *m, float *base, int t, int l) {
    const mome_modular_config *c = &m->cfg;
    const int common = t == c->n_experts;
    float *p[TR_N];
    for (int k = 0; k < TR_N; k++) {
        char name[MOME_TENSOR_NAME_MAX];
        snprintf(name, sizeof name, "%s/%s", common ? "common" : "experts", trunk_names[k]);
        const int idx = mome_tensor_table_find(&m->table, name);
        MOME_CHECK(idx >= 0, "modular: tensor %s missing", name);
        const mome_tensor_info *ti = &m->table.t[idx];
        const size_t per_layer = ti->numel / ((common ? 1 : (size_t)c->n_experts) * (size_t)c->trunk_layers);
        const size_t slot = (common ? 0 : (size_t)t * (size_t)c->trunk_layers) + (size_t)l;
        p[k] = base + ti->offset + slot * per_layer;
    }
    const mome_block_weights w = {p[TR_LN1W], p[TR_LN1B], p[TR_QKVW], p[TR_QKVB], p[TR_PROJW], p[TR_PROJB],
                                  p[TR_LN2W], p[TR_LN2B], p[TR_FCW],  p[TR_FCB],  p[TR_FCPW],  p[TR_FCPB]};
    return w;
}

static float *shared_tensor(const mome_modular *m, float *base, const char *name) {
    const int idx = mome_tensor_table_find(&m->table, name);
    MOME_CHECK(idx >= 0, "modular: tensor %s missing", name);
    return base + m->table.t[idx].offset;
}

#define INIT_CHUNK 4096

void mome_modular_init_weights(mome_modular *m, uint64_t seed) {
    const mome_modular_config *c = &m->cfg;
    const float std = 0.02f, resid = 0.02f / sqrtf(2.0f * (float)c->trunk_layers);
    for (int i = 0; i < m->table.n; i++) {
        const mome_tensor_info *ti = &m->table.t[i];
        float *p = m->params + ti->offset;
        const char *leaf = strrchr(ti->name, '/');
        leaf = leaf ? leaf + 1 : ti->name;
        float s = 0.0f;
        if (strcmp(leaf, "wte") == 0 || strcmp(leaf, "wpe") == 0 || strcmp(leaf, "qkv_w") == 0 ||
            strcmp(leaf, "fc_w") == 0)
            s = std;
        else if (strcmp(leaf, "attn_proj_w") == 0 || strcmp(leaf, "fc_proj_w") == 0)
            s = resid;
        if (strstr(leaf, "ln") && strcmp(leaf + strlen(leaf) - 2, "_w") == 0) {
            for (size_t j = 0; j < ti->numel; j++) p[j] = 1.0f;
            continue;
        }
        if (s == 0.0f) continue; /* biases stay 0 */
        /* stream (seed, tensor name, trunk, chunk): an expert trunk's values depend on its global id only */
        const size_t n_slices = ti->expert_dim == 0 ? ti->shape[0] : 1, per = ti->numel / n_slices;
        const uint64_t tag = mome_fnv1a(0x6d6f64, ti->name, strlen(ti->name));
        for (size_t e = 0; e < n_slices; e++) {
            const size_t nchunk = (per + INIT_CHUNK - 1) / INIT_CHUNK;
#pragma omp parallel for schedule(static)
            for (size_t ch = 0; ch < nchunk; ch++) {
                mome_rng rng;
                mome_rng_stream(&rng, seed, tag + e, (uint64_t)ch);
                const size_t j0 = ch * INIT_CHUNK, j1 = j0 + INIT_CHUNK < per ? j0 + INIT_CHUNK : per;
                for (size_t j = j0; j < j1; j++) p[e * per + j] = s * mome_rng_normal(&rng);
            }
        }
    }
}

int mome_modular_reserve(mome_modular *m, int B, int T) {
    const mome_modular_config *c = &m->cfg;
    if (B <= 0 || T <= 0 || T > c->seq_len)
        return mome_error_set(MOME_EINVAL, "modular reserve: need B > 0 and 0 < T <= seq_len %d, got B %d T %d",
                              c->seq_len, B, T);
    if (m->acts && B <= m->max_B && T <= m->max_T) return MOME_OK;
    acts_free(m->acts);
    mome_free(m->logits);
    const size_t C = (size_t)c->d_model, F = (size_t)c->d_ff, NH = (size_t)c->n_head, L = (size_t)c->trunk_layers;
    const size_t cap = (size_t)B * (size_t)T, TT = (size_t)T * (size_t)T, f = sizeof(float);
    mome_modular_acts *a = mome_calloc(1, sizeof *a);
    a->cap = cap;
    a->n_trunks = c->n_experts + c->common;
    const size_t NT = (size_t)a->n_trunks;
    /* per block: ln1, atty, res2, ln2, res3 (C each), qkv (3C), fch, fch_gelu (F each), 4 row stats, att */
    const size_t per_block = cap * (8 * C + 2 * F + 4) + (size_t)B * NH * TT;
    a->block_mem = mome_malloc(NT * L * per_block * f);
    a->blocks = mome_calloc(NT * L, sizeof *a->blocks);
    for (size_t i = 0; i < NT * L; i++) {
        float *p = a->block_mem + i * per_block;
        mome_block_acts *b = &a->blocks[i];
        b->ln1 = p; p += cap * C;
        b->ln1_mean = p; p += cap;
        b->ln1_rstd = p; p += cap;
        b->qkv = p; p += cap * 3 * C;
        b->atty = p; p += cap * C;
        b->res2 = p; p += cap * C;
        b->ln2 = p; p += cap * C;
        b->ln2_mean = p; p += cap;
        b->ln2_rstd = p; p += cap;
        b->fch = p; p += cap * F;
        b->fch_gelu = p; p += cap * F;
        b->res3 = p; p += cap * C;
        b->att = p;
    }
    a->trunk_in = mome_malloc(NT * cap * C * f);
    a->seqs = mome_malloc(NT * (size_t)B * sizeof *a->seqs);
    a->n_seqs = mome_calloc(NT, sizeof *a->n_seqs);
    a->weight = mome_malloc((size_t)B * f);
    float **single[] = {&a->encoded, &a->h, &a->lnf, &a->dh, &a->dx, &a->dres};
    for (size_t i = 0; i < sizeof single / sizeof single[0]; i++) *single[i] = mome_malloc(cap * C * f);
    a->lnf_mean = mome_malloc(cap * f);
    a->lnf_rstd = mome_malloc(cap * f);
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    a->scratch = (mome_block_scratch){.proj = mome_malloc(cap * C * f),
                                      .dln = mome_malloc(cap * C * f),
                                      .datty = mome_malloc(cap * C * f),
                                      .dqkv = mome_malloc(cap * 3 * C * f),
                                      .dfch = mome_malloc(cap * F * f),
                                      .dfch_gelu = mome_malloc(cap * F * f),
                                      .att_scratch = mome_malloc((size_t)nt * TT * f),
                                      .n_att_scratch = nt};
    m->acts = a;
    m->logits = mome_malloc(cap * (size_t)c->vocab_size * f);
    m->max_B = B;
    m->max_T = T;
    return MOME_OK;
}

static void check_call(const mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T) {
    MOME_CHECK(m->acts, "modular: mome_modular_reserve was not called");
    MOME_CHECK(B > 0 && T > 0 && B <= m->max_B && T <= m->max_T, "modular: batch %d x %d exceeds the reserved %d x %d",
               B, T, m->max_B, m->max_T);
    for (size_t i = 0; i < (size_t)B * (size_t)T; i++)
        MOME_CHECK(inputs[i] >= 0 && inputs[i] < m->cfg.vocab_size, "modular: token %d at %zu outside [0, %d)",
                   (int)inputs[i], i, m->cfg.vocab_size);
    for (int b = 0; b < B; b++)
        MOME_CHECK(routes[b] >= -1 && routes[b] < m->cfg.n_experts,
                   "modular: route %d of sequence %d outside [-1, %d)", (int)routes[b], b, m->cfg.n_experts);
}

/* Which trunks each sequence runs through, and its weight: expert route[b] (all experts for -1), plus the
 * common trunk. */
static void plan(mome_modular *m, const int32_t *routes, int B) {
    mome_modular_acts *a = m->acts;
    const int E = m->cfg.n_experts;
    for (int t = 0; t < a->n_trunks; t++) {
        int n = 0;
        for (int b = 0; b < B; b++)
            if (t == E || routes[b] == t || routes[b] == -1) a->seqs[(size_t)t * m->max_B + n++] = b;
        a->n_seqs[t] = n;
    }
    for (int b = 0; b < B; b++) a->weight[b] = 1.0f / (float)((routes[b] == -1 ? E : 1) + m->cfg.common);
}

void mome_modular_forward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T) {
    check_call(m, inputs, routes, B, T);
    mome_modular_acts *a = m->acts;
    const mome_modular_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_ff, NH = c->n_head, L = c->trunk_layers, V = c->vocab_size;
    const size_t row = (size_t)T * (size_t)C, BT = (size_t)B * (size_t)T;
    float *wte = shared_tensor(m, m->params, "wte");
    mome_encoder_forward(a->encoded, inputs, wte, shared_tensor(m, m->params, "wpe"), B, T, C);
    plan(m, routes, B);
    memset(a->h, 0, BT * (size_t)C * sizeof(float));
    for (int t = 0; t < a->n_trunks; t++) {
        const int n = a->n_seqs[t];
        if (n == 0) continue;
        const int32_t *seqs = a->seqs + (size_t)t * m->max_B;
        float *in = a->trunk_in + (size_t)t * a->cap * C;
        for (int i = 0; i < n; i++) memcpy(in + i * row, a->encoded + seqs[i] * row, row * sizeof(float));
        const float *x = in;
        for (int l = 0; l < L; l++) {
            const mome_block_weights w = trunk_weights(m, m->params, t, l);
            const mome_block_acts *ba = &a->blocks[(size_t)t * L + l];
            mome_block_attn_forward(&w, ba, &a->scratch, x, n, T, C, NH, NULL);
            mome_block_mlp_forward(&w, ba, &a->scratch, n, T, C, F, NULL);
            mome_block_residual_forward(ba, &a->scratch, n, T, C, NULL);
            x = ba->res3;
        }
        for (int i = 0; i < n; i++) { /* h[b] += weight[b] * trunk output */
            const float wb = a->weight[seqs[i]];
            float *hb = a->h + seqs[i] * row;
            const float *o = x + i * row;
            for (size_t j = 0; j < row; j++) hb[j] += wb * o[j];
        }
    }
    mome_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->h, shared_tensor(m, m->params, "ln_f_w"),
                           shared_tensor(m, m->params, "ln_f_b"), BT, C);
    mome_matmul_forward(m->logits, a->lnf, wte, NULL, BT, C, V);
}

void mome_modular_backward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T) {
    check_call(m, inputs, routes, B, T);
    mome_modular_acts *a = m->acts;
    const mome_modular_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_ff, NH = c->n_head, L = c->trunk_layers, V = c->vocab_size;
    const size_t row = (size_t)T * (size_t)C, BT = (size_t)B * (size_t)T;
    plan(m, routes, B); /* the same plan as the forward's */
    float *wte = shared_tensor(m, m->params, "wte"), *gwte = shared_tensor(m, m->grads, "wte");
    // head: logits = lnf · wte^T; then ln_f
    mome_matmul_backward_to(a->scratch.dln, gwte, NULL, m->logits, a->lnf, wte, BT, C, V);
    memset(a->dh, 0, BT * (size_t)C * sizeof(float));
    mome_layernorm_backward(a->dh, shared_tensor(m, m->grads, "ln_f_w"), shared_tensor(m, m->grads, "ln_f_b"),
                            a->scratch.dln, a->h, shared_tensor(m, m->params, "ln_f_w"), a->lnf_mean, a->lnf_rstd,
                            BT, C);
    memset(a->dx, 0, BT * (size_t)C * sizeof(float));
    for (int t = 0; t < a->n_trunks; t++) {
        const int n = a->n_seqs[t];
        if (n == 0) continue;
        const int32_t *seqs = a->seqs + (size_t)t * m->max_B;
        const float *in = a->trunk_in + (size_t)t * a->cap * C;
        for (int i = 0; i < n; i++) { /* d(trunk output) = weight[b] * dh[b] */
            const float wb = a->weight[seqs[i]];
            const float *dhb = a->dh + seqs[i] * row;
            float *d = a->dres + i * row;
            for (size_t j = 0; j < row; j++) d[j] = wb * dhb[j];
        }
        for (int l = L - 1; l >= 0; l--) {
            const mome_block_weights w = trunk_weights(m, m->params, t, l), g = trunk_weights(m, m->grads, t, l);
            const mome_block_acts *ba = &a->blocks[(size_t)t * L + l];
            const float *x = l == 0 ? in : a->blocks[(size_t)t * L + l - 1].res3;
            mome_block_mlp_backward(&g, &w, ba, &a->scratch, a->dres, n, T, C, F, NULL);
            mome_block_attn_backward(&g, &w, ba, &a->scratch, x, a->dres, n, T, C, NH, NULL);
        }
        for (int i = 0; i < n; i++) { /* the trunk's input gradient back to the sequences' rows */
            float *dxb = a->dx + seqs[i] * row;
            const float *d = a->dres + i * row;
            for (size_t j = 0; j < row; j++) dxb[j] += d[j];
        }
    }
    mome_encoder_backward(gwte, shared_tensor(m, m->grads, "wpe"), a->dx, inputs, B, T, C);
}
