/* modular.c — the modular student (modular.h): shared embedding and head, expert trunks and an optional common
 * trunk, each a stack of block.h blocks run over the sequences routed to it.
 *
 * Forward: the embedded sequences are packed into a send buffer grouped by expert trunk (a sequence averaged over
 * all trunks appears once per trunk); with a dispatch the rows travel to the ranks holding their trunks, without
 * one the send buffer is the receive buffer. Each local trunk runs its blocks over its contiguous block of rows
 * with activations saved per trunk and layer (buffers grow to the most rows a trunk has received); the outputs go
 * back in send order and are added, weighted 1 / (number of trunks the sequence went through), into the hidden
 * state, together with the common trunk's output computed locally on every sequence. Backward sends the weighted
 * output gradients the same way, runs the trunks backward in place on the received gradient rows, and sends the
 * input gradients back to be scattered onto the sequences' rows.
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

/* The table with `count` expert trunks. */
static void table_with(const mome_modular_config *c, int count, mome_tensor_table *tab) {
    memset(tab, 0, sizeof *tab);
    const size_t V = (size_t)c->vocab_size, Tm = (size_t)c->seq_len, C = (size_t)c->d_model;
    const size_t L = (size_t)c->trunk_layers, E = (size_t)count;
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

void mome_modular_table(const mome_modular_config *c, mome_tensor_table *tab) { table_with(c, c->n_experts, tab); }

/* The activations of one trunk for up to `cap` sequences of max_T tokens: its blocks' saved values. */
typedef struct {
    int cap;                 /* sequences */
    float *mem;              /* one allocation behind every block */
    mome_block_acts *blocks; /* (L) */
} trunk_acts;

struct mome_modular_acts {
    int n_trunks;            /* local experts, then the common trunk */
    trunk_acts *trunks;      /* (n_trunks) */
    /* the plan of the last call */
    int *send_counts;        /* (E) rows this rank sends to each global expert */
    int32_t *send_seq;       /* (max_B * E) sequence of each send row, grouped by expert */
    int n_send;
    int *local_rows, *local_first; /* (n_local), (n_local + 1): the received rows of each local trunk */
    int n_recv;
    float *weight;           /* (max_B) 1 / number of trunks each sequence went through */
    int common_on;           /* the common trunk ran */
    /* dispatch rows (row = T*C floats); grown on demand */
    size_t cap_send, cap_recv; /* rows */
    float *send, *recv, *out, *back, *scratch; /* send/back (cap_send), recv/out/scratch (cap_recv) */
    float *encoded, *h, *lnf, *lnf_mean, *lnf_rstd; /* (max_B*T, C), (max_B*T) */
    float *dh, *dx;          /* (max_B*T, C) */
    int scratch_cap;         /* sequences the block scratch holds */
    mome_block_scratch bs;
    /* per trunk tensor k: offset of "experts/k" and "common/k" (0 when absent), floats of one layer */
    size_t expert_off[TR_N], common_off[TR_N], per_layer[TR_N];
};

static void block_scratch_free(mome_block_scratch *s) {
    void *bufs[] = {s->proj, s->dln, s->datty, s->dqkv, s->dfch, s->att_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mome_free(bufs[i]);
    memset(s, 0, sizeof *s);
}

static void acts_free(mome_modular_acts *a) {
    if (!a) return;
    for (int t = 0; t < a->n_trunks; t++) {
        mome_free(a->trunks[t].mem);
        mome_free(a->trunks[t].blocks);
    }
    block_scratch_free(&a->bs);
    void *bufs[] = {a->trunks, a->send_counts, a->send_seq, a->local_rows, a->local_first, a->weight,
                    a->send,   a->recv,        a->out,      a->back,       a->scratch,     a->encoded,
                    a->h,      a->lnf,         a->lnf_mean, a->lnf_rstd,   a->dh,          a->dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mome_free(bufs[i]);
    mome_free(a);
}

int mome_modular_init_experts(mome_modular *m, const mome_modular_config *cfg, int first, int count) {
    memset(m, 0, sizeof *m);
    int rc = mome_modular_config_check(cfg);
    if (rc) return rc;
    if (first < 0 || count < 1 || first + count > cfg->n_experts)
        return mome_error_set(MOME_ECONFIG, "modular: expert trunks [%d, %d) outside the model's %d", first,
                              first + count, cfg->n_experts);
    m->cfg = *cfg;
    m->expert_first = first;
    m->expert_count = count;
    m->use_common = 1;
    table_with(cfg, count, &m->table);
    const int idx = mome_tensor_table_find(&m->table, "experts/ln1_w");
    MOME_CHECK(idx >= 0, "modular: no expert tensors");
    m->n_dense = m->table.t[idx].offset;
    m->params = mome_calloc(m->table.total, sizeof(float));
    m->grads = mome_calloc(m->table.total, sizeof(float));
    return MOME_OK;
}

int mome_modular_init(mome_modular *m, const mome_modular_config *cfg) {
    return mome_modular_init_experts(m, cfg, 0, cfg->n_experts);
}

int mome_modular_set_dispatch(mome_modular *m, mome_dispatch *d) {
    if (d && (d->n_experts != m->cfg.n_experts || d->first[d->rank] != m->expert_first ||
              d->n_local != m->expert_count))
        return mome_error_set(MOME_EINVAL,
                              "modular: the dispatch gives this rank experts [%d, %d) of %d, the model holds [%d, %d) "
                              "of %d",
                              d->first[d->rank], d->first[d->rank] + d->n_local, d->n_experts, m->expert_first,
                              m->expert_first + m->expert_count, m->cfg.n_experts);
    if (!d && m->expert_count != m->cfg.n_experts)
        return mome_error_set(MOME_EINVAL, "modular: %d of %d expert trunks here, a dispatch is needed",
                              m->expert_count, m->cfg.n_experts);
    m->dispatch = d;
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

void mome_modular_zero_grad(mome_modular *m) { mome_zero(m->grads, m->table.total); }


/* The weights (or gradients, base = m->grads) of layer l of local trunk t: t < expert_count a local expert, else
 * the common trunk. */
static mome_block_weights trunk_weights(const mome_modular *m, float *base, int t, int l) {
    const mome_modular_acts *a = m->acts;
    const int common = t == m->expert_count;
    const size_t slot = (common ? 0 : (size_t)t * (size_t)m->cfg.trunk_layers) + (size_t)l;
    float *p[TR_N];
    for (int k = 0; k < TR_N; k++)
        p[k] = base + (common ? a->common_off[k] : a->expert_off[k]) + slot * a->per_layer[k];
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
        /* stream (seed, tensor name, global trunk id, chunk): a trunk's values do not depend on where it lives */
        const int is_expert = ti->expert_dim == 0;
        const size_t n_slices = is_expert ? ti->shape[0] : 1, per = ti->numel / n_slices;
        const uint64_t tag = mome_fnv1a(0x6d6f64, ti->name, strlen(ti->name));
        for (size_t e = 0; e < n_slices; e++) {
            const uint64_t id = is_expert ? (uint64_t)m->expert_first + e : 0;
            const size_t nchunk = (per + INIT_CHUNK - 1) / INIT_CHUNK;
#pragma omp parallel for schedule(static)
            for (size_t ch = 0; ch < nchunk; ch++) {
                mome_rng rng;
                mome_rng_stream(&rng, seed, tag + id, (uint64_t)ch);
                const size_t j0 = ch * INIT_CHUNK, j1 = j0 + INIT_CHUNK < per ? j0 + INIT_CHUNK : per;
                for (size_t j = j0; j < j1; j++) p[e * per + j] = s * mome_rng_normal(&rng);
            }
        }
    }
}

/* Sizes trunk t's saved activations for `cap` sequences of max_T tokens (grow only). */
static void trunk_reserve(mome_modular *m, trunk_acts *ta, int cap) {
    if (cap <= ta->cap) return;
    const mome_modular_config *c = &m->cfg;
    const size_t C = (size_t)c->d_model, F = (size_t)c->d_ff, NH = (size_t)c->n_head, L = (size_t)c->trunk_layers;
    const size_t rows = (size_t)cap * (size_t)m->max_T, TT = (size_t)m->max_T * (size_t)m->max_T;
    /* per block: ln1, atty, res2, ln2, res3 (C each), qkv (3C), fch, fch_gelu (F each), 4 row stats, att */
    const size_t per_block = rows * (8 * C + 2 * F + 4) + (size_t)cap * NH * TT;
    mome_free(ta->mem);
    ta->mem = mome_malloc(L * per_block * sizeof(float));
    if (!ta->blocks) ta->blocks = mome_calloc(L, sizeof *ta->blocks);
    for (size_t i = 0; i < L; i++) {
        float *p = ta->mem + i * per_block;
        mome_block_acts *b = &ta->blocks[i];
        b->ln1 = p; p += rows * C;
        b->ln1_mean = p; p += rows;
        b->ln1_rstd = p; p += rows;
        b->qkv = p; p += rows * 3 * C;
        b->atty = p; p += rows * C;
        b->res2 = p; p += rows * C;
        b->ln2 = p; p += rows * C;
        b->ln2_mean = p; p += rows;
        b->ln2_rstd = p; p += rows;
        b->fch = p; p += rows * F;
        b->fch_gelu = p; p += rows * F;
        b->res3 = p; p += rows * C;
        b->att = p;
    }
    ta->cap = cap;
}

/* The block scratch for `cap` sequences (grow only). */
static void scratch_reserve(mome_modular *m, int cap) {
    mome_modular_acts *a = m->acts;
    if (cap <= a->scratch_cap) return;
    block_scratch_free(&a->bs);
    const size_t C = (size_t)m->cfg.d_model, F = (size_t)m->cfg.d_ff, f = sizeof(float);
    const size_t rows = (size_t)cap * (size_t)m->max_T, TT = (size_t)m->max_T * (size_t)m->max_T;
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    a->bs = (mome_block_scratch){.proj = mome_malloc(rows * C * f),
                                 .dln = mome_malloc(rows * C * f),
                                 .datty = mome_malloc(rows * C * f),
                                 .dqkv = mome_malloc(rows * 3 * C * f),
                                 .dfch = mome_malloc(rows * F * f),
                                 .att_scratch = mome_malloc((size_t)nt * TT * f),
                                 .n_att_scratch = nt};
    a->scratch_cap = cap;
}

/* Dispatch row buffers for n_send and n_recv rows (grow only; contents are not kept). */
static void rows_reserve(mome_modular *m, size_t n_send, size_t n_recv) {
    mome_modular_acts *a = m->acts;
    const size_t row = (size_t)m->max_T * (size_t)m->cfg.d_model * sizeof(float);
    if (n_send > a->cap_send) {
        mome_free(a->send);
        mome_free(a->back);
        a->send = mome_malloc(n_send * row);
        a->back = mome_malloc(n_send * row);
        a->cap_send = n_send;
    }
    if (n_recv > a->cap_recv) {
        mome_free(a->recv);
        mome_free(a->out);
        mome_free(a->scratch);
        a->recv = mome_malloc(n_recv * row);
        a->out = mome_malloc(n_recv * row);
        a->scratch = mome_malloc(n_recv * row);
        a->cap_recv = n_recv;
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
    m->max_B = B;
    m->max_T = T;
    const size_t C = (size_t)c->d_model, cap = (size_t)B * (size_t)T, f = sizeof(float);
    const size_t E = (size_t)c->n_experts;
    mome_modular_acts *a = mome_calloc(1, sizeof *a);
    m->acts = a;
    a->n_trunks = m->expert_count + c->common;
    a->trunks = mome_calloc((size_t)a->n_trunks, sizeof *a->trunks);
    a->send_counts = mome_calloc(E, sizeof *a->send_counts);
    a->send_seq = mome_malloc((size_t)B * E * sizeof *a->send_seq);
    a->local_rows = mome_calloc((size_t)m->expert_count, sizeof *a->local_rows);
    a->local_first = mome_calloc((size_t)m->expert_count + 1, sizeof *a->local_first);
    a->weight = mome_malloc((size_t)B * f);
    float **single[] = {&a->encoded, &a->h, &a->lnf, &a->dh, &a->dx};
    for (size_t i = 0; i < sizeof single / sizeof single[0]; i++) *single[i] = mome_malloc(cap * C * f);
    a->lnf_mean = mome_malloc(cap * f);
    a->lnf_rstd = mome_malloc(cap * f);
    for (int k = 0; k < TR_N; k++) {
        char name[MOME_TENSOR_NAME_MAX];
        snprintf(name, sizeof name, "experts/%s", trunk_names[k]);
        const mome_tensor_info *ti = &m->table.t[mome_tensor_table_find(&m->table, name)];
        a->expert_off[k] = ti->offset;
        a->per_layer[k] = ti->numel / ((size_t)m->expert_count * (size_t)c->trunk_layers);
        snprintf(name, sizeof name, "common/%s", trunk_names[k]);
        const int ci = mome_tensor_table_find(&m->table, name);
        a->common_off[k] = ci >= 0 ? m->table.t[ci].offset : 0;
    }
    /* Routed training sends each sequence to one trunk: start with room for an even share of the batch (at least
     * one sequence); the buffers grow when a batch brings more. */
    for (int t = 0; t < m->expert_count; t++) trunk_reserve(m, &a->trunks[t], 1);
    if (c->common) trunk_reserve(m, &a->trunks[m->expert_count], B);
    scratch_reserve(m, B);
    rows_reserve(m, (size_t)B, (size_t)B);
    m->logits = mome_malloc(cap * (size_t)c->vocab_size * f);
    return MOME_OK;
}

static void check_call(const mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T) {
    MOME_CHECK(m->acts, "modular: mome_modular_reserve was not called");
    MOME_CHECK(B > 0 && T > 0 && B <= m->max_B && T <= m->max_T, "modular: batch %d x %d exceeds the reserved %d x %d",
               B, T, m->max_B, m->max_T);
    MOME_CHECK(m->dispatch || m->expert_count == m->cfg.n_experts,
               "modular: %d of %d expert trunks here and no dispatch", m->expert_count, m->cfg.n_experts);
    for (size_t i = 0; i < (size_t)B * (size_t)T; i++)
        MOME_CHECK(inputs[i] >= 0 && inputs[i] < m->cfg.vocab_size, "modular: token %d at %zu outside [0, %d)",
                   (int)inputs[i], i, m->cfg.vocab_size);
    for (int b = 0; b < B; b++)
        MOME_CHECK((routes[b] >= MOME_ROUTE_ALL && routes[b] < m->cfg.n_experts) ||
                       (routes[b] == MOME_ROUTE_COMMON && m->cfg.common && m->use_common),
                   "modular: route %d of sequence %d outside [-1, %d) (-2 needs a common trunk in use)",
                   (int)routes[b], b, m->cfg.n_experts);
}

/* Which trunks each sequence goes through and its weight; the send rows grouped by global expert; with a
 * dispatch, the exchange of counts (collective) and the rows each local trunk receives. */
static int plan(mome_modular *m, const int32_t *routes, int B) {
    mome_modular_acts *a = m->acts;
    const int E = m->cfg.n_experts;
    a->common_on = m->cfg.common && m->use_common;
    int n = 0;
    for (int e = 0; e < E; e++) {
        const int start = n;
        for (int b = 0; b < B; b++)
            if (routes[b] == e || routes[b] == MOME_ROUTE_ALL) a->send_seq[n++] = b;
        a->send_counts[e] = n - start;
    }
    a->n_send = n;
    for (int b = 0; b < B; b++) {
        const int experts = routes[b] == MOME_ROUTE_ALL ? E : routes[b] == MOME_ROUTE_COMMON ? 0 : 1;
        a->weight[b] = 1.0f / (float)(experts + a->common_on);
    }
    if (m->dispatch) {
        mome_dispatch *d = m->dispatch;
        const int rc = mome_dispatch_plan(d, a->send_counts);
        if (rc) return rc;
        a->n_recv = (int)mome_dispatch_recv_rows(d);
        for (int i = 0; i < m->expert_count; i++) {
            a->local_rows[i] = d->expert_rows[i];
            a->local_first[i] = d->expert_first[i];
        }
    } else {
        a->n_recv = n;
        int first = 0;
        for (int i = 0; i < E; i++) {
            a->local_rows[i] = a->send_counts[i];
            a->local_first[i] = first;
            first += a->send_counts[i];
        }
    }
    a->local_first[m->expert_count] = a->n_recv;
    rows_reserve(m, (size_t)a->n_send, (size_t)a->n_recv);
    int most = 0;
    for (int i = 0; i < m->expert_count; i++) {
        trunk_reserve(m, &a->trunks[i], a->local_rows[i]);
        if (a->local_rows[i] > most) most = a->local_rows[i];
    }
    scratch_reserve(m, most);
    return MOME_OK;
}

/* Runs local trunk t forward over n sequences x (n, T, C); returns its output (the last block's res3). */
static const float *trunk_forward(mome_modular *m, int t, const float *x, int n, int T) {
    const mome_modular_config *c = &m->cfg;
    mome_modular_acts *a = m->acts;
    for (int l = 0; l < c->trunk_layers; l++) {
        const mome_block_weights w = trunk_weights(m, m->params, t, l);
        const mome_block_acts *ba = &a->trunks[t].blocks[l];
        mome_block_attn_forward(&w, ba, &a->bs, x, n, T, c->d_model, c->n_head, NULL);
        mome_block_mlp_forward(&w, ba, &a->bs, n, T, c->d_model, c->d_ff, NULL);
        mome_block_residual_forward(ba, &a->bs, n, T, c->d_model, NULL);
        x = ba->res3;
    }
    return x;
}

/* Local trunk t backward: dres (n, T, C) holds d(output) in and d(input) out; x is the trunk's input. */
static void trunk_backward(mome_modular *m, int t, const float *x, float *dres, int n, int T) {
    const mome_modular_config *c = &m->cfg;
    mome_modular_acts *a = m->acts;
    for (int l = c->trunk_layers - 1; l >= 0; l--) {
        const mome_block_weights w = trunk_weights(m, m->params, t, l), g = trunk_weights(m, m->grads, t, l);
        const mome_block_acts *ba = &a->trunks[t].blocks[l];
        const float *xl = l == 0 ? x : a->trunks[t].blocks[l - 1].res3;
        mome_block_mlp_backward(&g, &w, ba, &a->bs, dres, n, T, c->d_model, c->d_ff, NULL);
        mome_block_attn_backward(&g, &w, ba, &a->bs, xl, dres, n, T, c->d_model, c->n_head, NULL);
    }
}

/* rows[i] = weight[s] * src[s] for i < n, s = seq[i] (or i when seq is NULL); rows of `row` floats. */
static void gather_scaled(float *rows, const int32_t *seq, const float *src, const float *weight, int n, size_t row) {
    for (int i = 0; i < n; i++) {
        const int s = seq ? seq[i] : i;
        const float w = weight[s], *in = src + (size_t)s * row;
        float *out = rows + (size_t)i * row;
        for (size_t j = 0; j < row; j++) out[j] = w * in[j];
    }
}

/* dst[seq[i]] += weight[seq[i]] * rows[i] (weight NULL: 1) for i < n. */
static void scatter_add(float *dst, const int32_t *seq, const float *rows, const float *weight, int n, size_t row) {
    for (int i = 0; i < n; i++) {
        const float w = weight ? weight[seq[i]] : 1.0f, *in = rows + (size_t)i * row;
        float *out = dst + (size_t)seq[i] * row;
        for (size_t j = 0; j < row; j++) out[j] += w * in[j];
    }
}

/* Collective: rows to their trunks' ranks (reverse 0, send order -> grouped by local trunk) or back (reverse 1). */
static void exchange(mome_modular *m, int reverse, const float *in, float *out, size_t row) {
    const int rc = reverse ? mome_dispatch_reverse(m->dispatch, in, out, m->acts->scratch, (int)row)
                           : mome_dispatch_forward(m->dispatch, in, out, m->acts->scratch, (int)row);
    MOME_CHECK(rc == MOME_OK, "modular: dispatch: %s", mome_error_message());
    m->bytes_sent += m->dispatch->bytes_sent;
}

void mome_modular_forward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T) {
    check_call(m, inputs, routes, B, T);
    mome_modular_acts *a = m->acts;
    const mome_modular_config *c = &m->cfg;
    const int C = c->d_model, V = c->vocab_size;
    const size_t row = (size_t)T * (size_t)C, BT = (size_t)B * (size_t)T;
    float *wte = shared_tensor(m, m->params, "wte");
    mome_encoder_forward(a->encoded, inputs, wte, shared_tensor(m, m->params, "wpe"), B, T, C);
    int rc = plan(m, routes, B);
    MOME_CHECK(rc == MOME_OK, "modular: dispatch plan: %s", mome_error_message());
    for (int i = 0; i < a->n_send; i++)
        memcpy(a->send + (size_t)i * row, a->encoded + (size_t)a->send_seq[i] * row, row * sizeof(float));
    /* without a dispatch the send buffer is the received one, and the outputs are already in send order */
    const float *recv = m->dispatch ? a->recv : a->send, *back = m->dispatch ? a->back : a->out;
    m->bytes_sent = 0;
    if (m->dispatch) exchange(m, 0, a->send, a->recv, row);
    for (int t = 0; t < m->expert_count; t++) {
        const int n = a->local_rows[t];
        if (n == 0) continue;
        const size_t first = (size_t)a->local_first[t] * row;
        memcpy(a->out + first, trunk_forward(m, t, recv + first, n, T), (size_t)n * row * sizeof(float));
    }
    if (m->dispatch) exchange(m, 1, a->out, a->back, row);
    /* h = weight * common(x), then += weight * each expert trunk's output (in send order) */
    if (a->common_on)
        gather_scaled(a->h, NULL, trunk_forward(m, m->expert_count, a->encoded, B, T), a->weight, B, row);
    else
        memset(a->h, 0, BT * (size_t)C * sizeof(float));
    scatter_add(a->h, a->send_seq, back, a->weight, a->n_send, row);
    mome_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->h, shared_tensor(m, m->params, "ln_f_w"),
                           shared_tensor(m, m->params, "ln_f_b"), BT, C);
    mome_matmul_forward(m->logits, a->lnf, wte, NULL, BT, C, V);
}

void mome_modular_backward(mome_modular *m, const int32_t *inputs, const int32_t *routes, int B, int T) {
    check_call(m, inputs, routes, B, T);
    mome_modular_acts *a = m->acts;
    const mome_modular_config *c = &m->cfg;
    const int C = c->d_model, V = c->vocab_size;
    const size_t row = (size_t)T * (size_t)C, BT = (size_t)B * (size_t)T;
    /* The same plan as the forward's (routes are the same); with a dispatch the counts are exchanged again. */
    int rc = plan(m, routes, B);
    MOME_CHECK(rc == MOME_OK, "modular: dispatch plan: %s", mome_error_message());
    float *wte = shared_tensor(m, m->params, "wte"), *gwte = shared_tensor(m, m->grads, "wte");
    /* head: logits = lnf · wte^T; then ln_f */
    mome_matmul_backward_to(a->bs.dln, gwte, NULL, m->logits, a->lnf, wte, BT, C, V);
    memset(a->dh, 0, BT * (size_t)C * sizeof(float));
    mome_layernorm_backward(a->dh, shared_tensor(m, m->grads, "ln_f_w"), shared_tensor(m, m->grads, "ln_f_b"),
                            a->bs.dln, a->h, shared_tensor(m, m->params, "ln_f_w"), a->lnf_mean, a->lnf_rstd,
                            BT, C);
    /* d(trunk output) = weight[b] * dh[b] in send order; without a dispatch that is already the received order,
     * and the trunks' inputs are still in the send buffer. */
    float *dsend = m->dispatch ? a->back : a->out, *drecv = a->out;
    const float *x_recv = m->dispatch ? a->recv : a->send;
    gather_scaled(dsend, a->send_seq, a->dh, a->weight, a->n_send, row);
    m->bytes_sent = 0;
    if (m->dispatch) exchange(m, 0, dsend, drecv, row);
    for (int t = 0; t < m->expert_count; t++) { /* in place: each block of drecv becomes d(trunk input) */
        const int n = a->local_rows[t];
        if (n == 0) continue;
        const size_t first = (size_t)a->local_first[t] * row;
        trunk_backward(m, t, x_recv + first, drecv + first, n, T);
    }
    if (m->dispatch) exchange(m, 1, drecv, a->back, row);
    /* dx = the common trunk's input gradient (run in place on dx), then += the expert trunks' */
    if (a->common_on) {
        gather_scaled(a->dx, NULL, a->dh, a->weight, B, row);
        trunk_backward(m, m->expert_count, a->encoded, a->dx, B, T);
    } else {
        memset(a->dx, 0, BT * (size_t)C * sizeof(float));
    }
    scatter_add(a->dx, a->send_seq, m->dispatch ? a->back : drecv, NULL, a->n_send, row);
    mome_encoder_backward(gwte, shared_tensor(m, m->grads, "wpe"), a->dx, inputs, B, T, C);
}

double mome_modular_flops_per_token(const mome_modular_config *c, int T) {
    /* a routed sequence runs one expert trunk and the common trunk: their blocks, the attention scores and the
     * tied head (as mome_gpt_flops_per_token counts a dense GPT) */
    const double L = (double)c->trunk_layers * (1.0 + c->common), C = c->d_model, F = c->d_ff, V = c->vocab_size;
    const double t_avg = 0.5 * ((double)T + 1.0);
    return 2.0 * (L * (4.0 * C * C + 2.0 * C * F) + V * C) + 2.0 * 2.0 * L * C * t_avg;
}
