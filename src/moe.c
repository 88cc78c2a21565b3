/* moe.c — the token-level Mixture-of-Experts FFN layer, single process (see moe.h): gate with top-k routing
 * (or the ALL / KA gate modes of a distillation teacher), capacity dropping, load-balancing and z-loss; gather
 * rows per expert; per-expert GELU MLPs with sgemm; weighted combine; and the backward of each stage.
 *
 * The stages are separate functions so that the expert-parallel version can put MPI all-to-all between
 * gather and experts, and between experts and combine. Loops over tokens use OpenMP with a static schedule
 * and each output element is written by one thread in a fixed order; the dispatch plan (counting, capacity
 * admission, prefix sums) is a short serial pass over the N*k assignments. So results are bit-identical from
 * run to run for a given thread count. Left to others: MPI dispatch, the parameter buffer, the residual.
 */
#include "mome/moe.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "mome/common.h"
#include "mome/kernels.h"
#include "mome/rng.h"

/* ------------------------------------------------------------------------------------------ configuration */

int mome_moe_config_check(const mome_moe_config *c) {
    if (c->n_embd <= 0 || c->n_experts <= 0 || c->d_ff <= 0)
        return mome_error_set(MOME_ECONFIG, "moe config: need n_embd, n_experts, d_ff > 0, got %d, %d, %d",
                              c->n_embd, c->n_experts, c->d_ff);
    if (c->top_k < 1 || c->top_k > c->n_experts)
        return mome_error_set(MOME_ECONFIG, "moe config: top_k must be in [1, n_experts = %d], got %d",
                              c->n_experts, c->top_k);
    if (c->shared_d_ff < 0)
        return mome_error_set(MOME_ECONFIG, "moe config: shared_d_ff must be >= 0 (0 = none), got %d",
                              c->shared_d_ff);
    if (c->renormalize != 0 && c->renormalize != 1)
        return mome_error_set(MOME_ECONFIG, "moe config: renormalize must be 0 or 1, got %d", c->renormalize);
    if (!isfinite(c->capacity_factor) || c->capacity_factor < 0.0f)
        return mome_error_set(MOME_ECONFIG, "moe config: capacity_factor must be finite and >= 0 (0 = dropless), "
                              "got %g", (double)c->capacity_factor);
    if (!isfinite(c->aux_coef) || !isfinite(c->z_coef))
        return mome_error_set(MOME_ECONFIG, "moe config: aux_coef and z_coef must be finite, got %g and %g",
                              (double)c->aux_coef, (double)c->z_coef);
    if (c->max_slots != 0 && (c->max_slots < c->top_k || c->max_slots > c->n_experts))
        return mome_error_set(MOME_ECONFIG, "moe config: max_slots must be 0 (= top_k) or in [top_k = %d, n_experts "
                              "= %d], got %d", c->top_k, c->n_experts, c->max_slots);
    return MOME_OK;
}

int mome_moe_gate_mode_check(const mome_moe_config *c, const mome_moe_gate_mode *g) {
    if (g->kind != MOME_GATE_TOPK && g->kind != MOME_GATE_ALL && g->kind != MOME_GATE_KA)
        return mome_error_set(MOME_ECONFIG, "moe gate mode: kind must be TOPK (0), ALL (1) or KA (2), got %d",
                              (int)g->kind);
    if (g->kind != MOME_GATE_KA) return MOME_OK;
    if (g->ka_n < 0 || g->ka_n > c->n_experts)
        return mome_error_set(MOME_ECONFIG, "moe gate mode: KA n must be in [1, n_experts = %d] (0 = n_experts - 1), "
                              "got %d", c->n_experts, g->ka_n);
    if (!(g->ka_lambda >= 0.0f && g->ka_lambda <= 1.0f)) /* also rejects NaN */
        return mome_error_set(MOME_ECONFIG, "moe gate mode: KA lambda must be in [0, 1], got %g", (double)g->ka_lambda);
    return MOME_OK;
}

int mome_moe_gate_slots(const mome_moe_config *c, const mome_moe_gate_mode *g) {
    switch (g->kind) {
    case MOME_GATE_ALL: return c->n_experts;
    case MOME_GATE_KA: return g->ka_n > 0 ? g->ka_n : (c->n_experts > 1 ? c->n_experts - 1 : 1);
    default: return c->top_k;
    }
}

size_t mome_moe_num_params(const mome_moe_config *c) {
    const size_t C = (size_t)c->n_embd, E = (size_t)c->n_experts, F = (size_t)c->d_ff, Fs = (size_t)c->shared_d_ff;
    size_t n = E * C + E * F * C + E * F + E * C * F + E * C;
    if (Fs > 0) n += Fs * C + Fs + C * Fs + C;
    return n;
}

void mome_moe_params_bind(mome_moe_params *p, float *base, const mome_moe_config *c) {
    const size_t C = (size_t)c->n_embd, E = (size_t)c->n_experts, F = (size_t)c->d_ff, Fs = (size_t)c->shared_d_ff;
    float *q = base;
    p->gate_w = q;
    q += E * C;
    p->experts_fc_w = q;
    q += E * F * C;
    p->experts_fc_b = q;
    q += E * F;
    p->experts_proj_w = q;
    q += E * C * F;
    p->experts_proj_b = q;
    q += E * C;
    if (Fs > 0) {
        p->shared_fc_w = q;
        q += Fs * C;
        p->shared_fc_b = q;
        q += Fs;
        p->shared_proj_w = q;
        q += C * Fs;
        p->shared_proj_b = q;
    } else {
        p->shared_fc_w = p->shared_fc_b = p->shared_proj_w = p->shared_proj_b = NULL;
    }
}

size_t mome_moe_capacity(const mome_moe_config *c, size_t N) {
    if (c->capacity_factor <= 0.0f) return 0;
    return (size_t)ceil((double)c->capacity_factor * (double)N * (double)c->top_k / (double)c->n_experts);
}

size_t mome_moe_gate_capacity(const mome_moe *m, size_t N) {
    return m->gate.kind == MOME_GATE_TOPK ? mome_moe_capacity(&m->cfg, N) : 0;
}

/* -------------------------------------------------------------------------------------------- lifecycle */

int mome_moe_init(mome_moe *m, const mome_moe_config *cfg, size_t max_N) {
    memset(m, 0, sizeof *m);
    int rc = mome_moe_config_check(cfg);
    if (rc) return rc;
    const int slots = cfg->max_slots > 0 ? cfg->max_slots : cfg->top_k;
    if (max_N == 0 || max_N > (size_t)INT32_MAX / (size_t)slots)
        return mome_error_set(MOME_EINVAL, "moe init: max_N must be in [1, %d], got %zu", INT32_MAX / slots, max_N);
    m->cfg = *cfg;
    m->max_N = max_N;
    m->max_slots = slots;
    const size_t C = (size_t)cfg->n_embd, E = (size_t)cfg->n_experts, F = (size_t)cfg->d_ff;
    const size_t Fs = (size_t)cfg->shared_d_ff, R = max_N * (size_t)slots, f = sizeof(float);
    mome_moe_plan *pl = &m->plan;
    pl->E = cfg->n_experts;
    pl->k = cfg->top_k;
    pl->expert = mome_malloc(R * sizeof *pl->expert);
    pl->weight = mome_malloc(R * sizeof *pl->weight);
    pl->pos = mome_malloc(R * sizeof *pl->pos);
    pl->routed = mome_calloc(E, sizeof *pl->routed);
    pl->counts = mome_calloc(E, sizeof *pl->counts);
    pl->offsets = mome_calloc(E + 1, sizeof *pl->offsets);
    pl->row_token = mome_malloc(R * sizeof *pl->row_token);
    pl->row_slot = mome_malloc(R * sizeof *pl->row_slot);
    m->logits = mome_malloc(max_N * E * f);
    m->probs = mome_malloc(max_N * E * f);
    m->lse = mome_malloc(max_N * f);
    m->load = mome_calloc(E, sizeof *m->load);
    m->prob_mean = mome_calloc(E, sizeof *m->prob_mean);
    m->rows_in = mome_malloc(R * C * f);
    m->rows_h = mome_malloc(R * F * f);
    m->rows_a = mome_malloc(R * F * f);
    m->rows_out = mome_malloc(R * C * f);
    if (Fs > 0) {
        m->sh_h = mome_malloc(max_N * Fs * f);
        m->sh_a = mome_malloc(max_N * Fs * f);
        m->sh_out = mome_malloc(max_N * C * f);
    }
    m->drows_out = mome_malloc(R * C * f);
    m->drows_in = mome_malloc(R * C * f);
    const size_t nscr = R * F > max_N * Fs ? R * F : max_N * Fs;
    m->dscratch_h = mome_malloc(nscr * f);
    m->dweight = mome_malloc(R * f);
    m->dlogits = mome_malloc(max_N * E * f);
    m->stats.routed = pl->routed;
    m->stats.kept = pl->counts;
    m->stats.load = m->load;
    return MOME_OK;
}

static void free_scratch(mome_moe *m) {
    if (!m->shares_scratch) {
        void *bufs[] = {m->drows_out, m->drows_in, m->dscratch_h, m->dweight, m->dlogits};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mome_free(bufs[i]);
    }
    m->drows_out = m->drows_in = m->dscratch_h = m->dweight = m->dlogits = NULL;
}

void mome_moe_share_scratch(mome_moe *m, const mome_moe *owner) {
    MOME_CHECK(owner != m && owner->max_N == m->max_N && owner->cfg.n_embd == m->cfg.n_embd &&
                   owner->cfg.d_ff == m->cfg.d_ff && owner->cfg.top_k == m->cfg.top_k &&
                   owner->cfg.n_experts == m->cfg.n_experts && owner->cfg.shared_d_ff == m->cfg.shared_d_ff &&
                   owner->max_slots == m->max_slots,
               "moe: scratch can only be shared between layers of the same shape");
    free_scratch(m);
    m->drows_out = owner->drows_out;
    m->drows_in = owner->drows_in;
    m->dscratch_h = owner->dscratch_h;
    m->dweight = owner->dweight;
    m->dlogits = owner->dlogits;
    m->shares_scratch = 1;
}

int mome_moe_set_gate_mode(mome_moe *m, const mome_moe_gate_mode *mode) {
    int rc = mome_moe_gate_mode_check(&m->cfg, mode);
    if (rc) return rc;
    const int k = mome_moe_gate_slots(&m->cfg, mode);
    if (k > m->max_slots)
        return mome_error_set(MOME_ECONFIG, "moe gate mode: needs %d slots per token, the layer's buffers hold %d "
                              "(raise cfg.max_slots, up to n_experts)", k, m->max_slots);
    m->gate = *mode;
    if (mode->kind == MOME_GATE_KA) m->gate.ka_n = k;
    return MOME_OK;
}

void mome_moe_free(mome_moe *m) {
    if (!m) return;
    free_scratch(m);
    mome_moe_plan *pl = &m->plan;
    void *bufs[] = {pl->expert,  pl->weight,    pl->pos,       pl->routed,   pl->counts,     pl->offsets,
                    pl->row_token, pl->row_slot, m->logits,     m->probs,     m->lse,         m->load,
                    m->prob_mean, m->rows_in,    m->rows_h,     m->rows_a,    m->rows_out,    m->sh_h,
                    m->sh_a,      m->sh_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mome_free(bufs[i]);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------------------------- stage 1: route */

/* Top-k of one row of logits (E): experts in descending logit order, ties to the lower index. */
static void topk_row(int32_t *idx, const float *logit, int E, int k) {
    for (int s = 0; s < k; s++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < s; j++) taken |= idx[j] == e;
            if (taken) continue;
            if (best < 0 || logit[e] > logit[best]) best = e; /* strict >: ties keep the lower index */
        }
        idx[s] = best;
    }
}

/* The same selection as topk_row in O(k E) instead of O(k^2 E) (KA uses k up to E - 1): the order (logit
 * descending, then index ascending) is total, so the s-th expert is the best of those strictly after the (s-1)-th
 * one. Hence the same experts in the same slots, so KA with lambda 0 routes bit-identically to TOPK. NaN logits
 * have no order: then topk_row itself. */
static void topk_row_fast(int32_t *idx, const float *logit, int E, int k) {
    for (int e = 0; e < E; e++)
        if (isnan(logit[e])) {
            topk_row(idx, logit, E, k);
            return;
        }
    int prev = -1;
    for (int s = 0; s < k; s++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            if (prev >= 0 && !(logit[e] < logit[prev] || (logit[e] == logit[prev] && e > prev))) continue;
            if (best < 0 || logit[e] > logit[best]) best = e; /* strict >: ties keep the lower index */
        }
        idx[s] = prev = best;
    }
}

/* Uniform double in [0, 1) with 53 random bits (mome_rng_uniform has 24: too coarse for small probabilities). */
static double uniform53(mome_rng *rng) { return (double)(mome_rng_u64(rng) >> 11) * 0x1p-53; }

/* KA sampling of one token: n experts drawn without replacement from probs p (E), draw s picking expert e among
 * those not drawn yet with probability p_e / (their sum). The drawn experts are kept sorted by index in idx during
 * the draws, so a merge walk skips them without scratch memory (O(n E)). If the remaining probability underflows
 * to 0, the rest are taken by logit (descending, ties -> lower index). Then idx is put in the slot order of the
 * layer: logit descending, ties -> lower index. */
static void sample_row(int32_t *idx, const float *p, const float *logit, int E, int n, mome_rng *rng) {
    for (int s = 0; s < n; s++) {
        double rest = 0.0;
        for (int e = 0, j = 0; e < E; e++) {
            if (j < s && idx[j] == e) {
                j++;
                continue;
            }
            rest += p[e];
        }
        int pick = -1;
        if (rest > 0.0) {
            const double u = uniform53(rng) * rest;
            double acc = 0.0;
            for (int e = 0, j = 0; e < E; e++) {
                if (j < s && idx[j] == e) {
                    j++;
                    continue;
                }
                if (!(p[e] > 0.0f)) continue;
                acc += p[e]; /* same terms in the same order as rest: acc ends at rest */
                pick = e;    /* if rounding leaves u >= acc at the end: the last expert with p > 0 */
                if (u < acc) break;
            }
        }
        if (pick < 0) {
            for (int e = 0, j = 0; e < E; e++) {
                if (j < s && idx[j] == e) {
                    j++;
                    continue;
                }
                if (pick < 0 || logit[e] > logit[pick]) pick = e;
            }
        }
        int j = s;
        for (; j > 0 && idx[j - 1] > pick; j--) idx[j] = idx[j - 1];
        idx[j] = pick;
    }
    for (int s = 1; s < n; s++) { /* insertion sort into slot order */
        const int32_t e = idx[s];
        int j = s;
        for (; j > 0 && (logit[e] > logit[idx[j - 1]] || (logit[e] == logit[idx[j - 1]] && e < idx[j - 1])); j--)
            idx[j] = idx[j - 1];
        idx[j] = e;
    }
}

void mome_moe_route(mome_moe *m, const float *x, size_t N) {
    // x is (N,C)
    MOME_CHECK(N <= m->max_N, "moe route: N = %zu tokens exceed the reserved %zu", N, m->max_N);
    MOME_CHECK(m->p.gate_w, "moe route: parameters not bound (m->p.gate_w is NULL)");
    const mome_moe_config *c = &m->cfg;
    const mome_moe_gate_mode *gm = &m->gate;
    const int C = c->n_embd, E = c->n_experts, k = mome_moe_gate_slots(c, gm);
    MOME_CHECK(k <= m->max_slots, "moe route: the gate mode needs %d slots per token, the buffers hold %d", k,
               m->max_slots);
    /* TOPK as configured; ALL: raw probabilities (they already sum to 1); KA: renormalised over the chosen */
    const int renorm = gm->kind == MOME_GATE_KA || (gm->kind == MOME_GATE_TOPK && c->renormalize);
    const int sample = gm->kind == MOME_GATE_KA && gm->ka_lambda > 0.0f; /* lambda 0 draws nothing */
    const double lambda = (double)gm->ka_lambda;
    mome_moe_plan *pl = &m->plan;
    pl->N = N;
    pl->k = k;
    pl->capacity = mome_moe_gate_capacity(m, N);

    /* gate: logits (N,E) = x Wg^T; softmax and logsumexp per row; top-k and weights */
    mome_matmul_forward(m->logits, x, m->p.gate_w, NULL, N, C, E);
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        const float *l = m->logits + t * (size_t)E;
        float *p = m->probs + t * (size_t)E;
        float mx = l[0];
        for (int e = 1; e < E; e++) mx = l[e] > mx ? l[e] : mx;
        double sum = 0.0;
        for (int e = 0; e < E; e++) {
            p[e] = expf(l[e] - mx);
            sum += p[e];
        }
        const float inv = (float)(1.0 / sum);
        for (int e = 0; e < E; e++) p[e] *= inv;
        m->lse[t] = mx + (float)log(sum);
        int32_t *idx = pl->expert + t * (size_t)k;
        float *w = pl->weight + t * (size_t)k;
        if (gm->kind == MOME_GATE_TOPK) {
            topk_row(idx, l, E, k);
        } else if (gm->kind == MOME_GATE_ALL) {
            for (int s = 0; s < k; s++) idx[s] = s;
        } else {
            int drawn = 0;
            if (sample) {
                /* one stream per (seed, counter, layer, token): independent of threads and of the other tokens */
                mome_rng rng;
                mome_rng_stream(&rng, gm->seed, gm->counter, ((uint64_t)gm->layer << 40) + gm->token_base + t);
                if (uniform53(&rng) < lambda) {
                    sample_row(idx, p, l, E, k, &rng);
                    drawn = 1;
                }
            }
            if (!drawn) topk_row_fast(idx, l, E, k);
        }
        double S = 0.0;
        for (int s = 0; s < k; s++) S += p[idx[s]];
        for (int s = 0; s < k; s++) w[s] = renorm ? (float)(p[idx[s]] / S) : p[idx[s]];
    }

    /* dispatch plan: routed counts, capacity admission in (token, slot) order, offsets, grouped rows */
    memset(pl->routed, 0, (size_t)E * sizeof *pl->routed);
    const size_t nk = N * (size_t)k;
    for (size_t i = 0; i < nk; i++) pl->routed[pl->expert[i]]++;
    mome_moe_plan_admit(pl, pl->capacity, NULL);

    /* losses and statistics: f_e (load), P_e (mean prob), aux, z */
    for (int e = 0; e < E; e++) {
        m->load[e] = nk ? (double)pl->routed[e] / (double)nk : 0.0;
        m->prob_mean[e] = 0.0;
    }
    double z = 0.0;
    for (size_t t = 0; t < N; t++) {
        const float *p = m->probs + t * (size_t)E;
        for (int e = 0; e < E; e++) m->prob_mean[e] += p[e];
        z += (double)m->lse[t] * m->lse[t];
    }
    double aux = 0.0;
    for (int e = 0; e < E; e++) {
        m->prob_mean[e] = N ? m->prob_mean[e] / (double)N : 0.0;
        aux += m->load[e] * m->prob_mean[e];
    }
    mome_moe_stats *st = &m->stats;
    st->aux_loss = (double)E * aux;
    st->z_loss = N ? z / (double)N : 0.0;
    st->n_tokens = N;
    st->n_assign = nk;
    st->n_dropped = pl->n_dropped;
    st->dropped_frac = nk ? (double)pl->n_dropped / (double)nk : 0.0;
    st->capacity = pl->capacity;
}

void mome_moe_plan_admit(mome_moe_plan *pl, size_t capacity, const int64_t *before) {
    const int E = pl->E, k = pl->k;
    const size_t nk = pl->N * (size_t)k;
    pl->capacity = capacity;
    memset(pl->counts, 0, (size_t)E * sizeof *pl->counts);
    for (size_t i = 0; i < nk; i++) {
        const int e = pl->expert[i];
        const size_t earlier = before ? (size_t)before[e] : 0;
        if (capacity == 0 || earlier + pl->counts[e] < capacity)
            pl->pos[i] = (int64_t)pl->counts[e]++; /* rank within expert e for now */
        else
            pl->pos[i] = -1;
    }
    pl->offsets[0] = 0;
    for (int e = 0; e < E; e++) pl->offsets[e + 1] = pl->offsets[e] + pl->counts[e];
    pl->n_rows = pl->offsets[E];
    pl->n_dropped = nk - pl->n_rows;
    for (size_t i = 0; i < nk; i++) {
        if (pl->pos[i] < 0) continue;
        pl->pos[i] += (int64_t)pl->offsets[pl->expert[i]];
        pl->row_token[pl->pos[i]] = (int32_t)(i / (size_t)k);
        pl->row_slot[pl->pos[i]] = (int32_t)(i % (size_t)k);
    }
}

void mome_moe_route_backward(mome_moe *m, float *dx, float *dgate_w, const float *dweight, const float *x,
                             size_t N, float grad_scale) {
    // dx is (N,C) or NULL, dgate_w is (E,C), dweight is (N,k), x is (N,C)
    MOME_CHECK(N == m->plan.N, "moe route backward: N = %zu but the last forward had %zu", N, m->plan.N);
    const mome_moe_config *c = &m->cfg;
    const mome_moe_plan *pl = &m->plan;
    const int C = c->n_embd, E = c->n_experts, k = pl->k;
    MOME_CHECK(k == mome_moe_gate_slots(c, &m->gate), "moe route backward: the gate mode changed since forward");
    const int renorm = m->gate.kind == MOME_GATE_KA || (m->gate.kind == MOME_GATE_TOPK && c->renormalize);
    if (N == 0) return;
    const float aux_scale = grad_scale * c->aux_coef * (float)E / (float)N; /* times f_e: d(aux)/d(probs[t,e]) */
    const float z_scale = grad_scale * c->z_coef * 2.0f / (float)N;         /* times lse_t: d(z)/d(lse_t) */
    float *dl_all = m->dlogits;
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        const float *p = m->probs + t * (size_t)E;
        const int32_t *idx = pl->expert + t * (size_t)k;
        const float *w = pl->weight + t * (size_t)k;
        const float *dw = dweight + t * (size_t)k;
        float *dl = dl_all + t * (size_t)E; /* first holds d(probs), then d(logits) */
        for (int e = 0; e < E; e++) dl[e] = aux_scale * (float)m->load[e];
        if (renorm) {
            /* w_s = p_s / S, S = sum chosen p: dp_s = (dw_s - sum_j dw_j w_j) / S */
            double S = 0.0, dot = 0.0;
            for (int s = 0; s < k; s++) {
                S += p[idx[s]];
                dot += (double)dw[s] * w[s];
            }
            for (int s = 0; s < k; s++) dl[idx[s]] += (float)((dw[s] - dot) / S);
        } else {
            for (int s = 0; s < k; s++) dl[idx[s]] += dw[s];
        }
        /* softmax backward, plus the z-loss term 2 lse_t / N * p */
        double pd = 0.0;
        for (int e = 0; e < E; e++) pd += (double)p[e] * dl[e];
        const float zt = z_scale * m->lse[t];
        for (int e = 0; e < E; e++) dl[e] = p[e] * (dl[e] - (float)pd) + zt * p[e];
    }
    mome_matmul_backward(dx, dgate_w, NULL, dl_all, x, m->p.gate_w, N, C, E);
}

/* ------------------------------------------------------------------------------------------ stage 2: gather */

void mome_moe_gather_forward(float *rows, const float *x, const mome_moe_plan *plan, int C) {
    // rows is (n_rows,C), x is (N,C)
    const size_t n = plan->n_rows;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < n; r++)
        memcpy(rows + r * (size_t)C, x + (size_t)plan->row_token[r] * (size_t)C, (size_t)C * sizeof(float));
}

void mome_moe_gather_backward(float *dx, const float *drows, const mome_moe_plan *plan, int C) {
    // dx is (N,C), drows is (n_rows,C)
    const size_t N = plan->N;
    const int k = plan->k;
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        float *d = dx + t * (size_t)C;
        for (int s = 0; s < k; s++) {
            const int64_t r = plan->pos[t * (size_t)k + s];
            if (r < 0) continue;
            const float *g = drows + (size_t)r * (size_t)C;
            for (int i = 0; i < C; i++) d[i] += g[i];
        }
    }
}

/* ----------------------------------------------------------------------------------------- stage 3: experts */

/* Expert by expert, both products (and in backward all four) one after the other: the expert's rows of a and dh
 * are still in cache for the next product. Timed alone at the benchmark's shapes (4 experts of ~500 rows, 4
 * layers' operands in turn): 3-7% less time than each product over all experts in turn. */
void mome_moe_experts_forward(float *out, float *h, float *a, const float *in, const size_t *counts, int n_exp,
                              const float *fc_w, const float *fc_b, const float *proj_w, const float *proj_b,
                              int C, int F) {
    // out is (n,C), h and a are (n,F), in is (n,C), counts is (n_exp); weights of n_exp experts
    const size_t uC = (size_t)C, uF = (size_t)F;
    size_t r0 = 0;
    for (int i = 0; i < n_exp; i++) {
        const size_t n = counts[i];
        if (n > 0) {
            mome_matmul_gelu_forward(h + r0 * uF, a + r0 * uF, in + r0 * uC, fc_w + i * uF * uC, fc_b + i * uF, n,
                                     C, F);
            mome_matmul_forward(out + r0 * uC, a + r0 * uF, proj_w + i * uC * uF, proj_b + i * uC, n, F, C);
        }
        r0 += n;
    }
}

void mome_moe_experts_backward(float *din, float *dfc_w, float *dfc_b, float *dproj_w, float *dproj_b, float *dh,
                               const float *dout, const float *in, const float *h, const float *a,
                               const size_t *counts, int n_exp, const float *fc_w, const float *proj_w, int C,
                               int F) {
    // din is (n,C) or NULL, dh is (n,F) scratch, dout and in are (n,C), h and a are (n,F)
    const size_t uC = (size_t)C, uF = (size_t)F;
    /* dh is overwritten (no zeroing): it is scratch */
    size_t r0 = 0;
    for (int i = 0; i < n_exp; i++) {
        const size_t n = counts[i];
        if (n > 0) {
            mome_matmul_gelu_backward(dh + r0 * uF, dproj_w + i * uC * uF, dproj_b + i * uC, dout + r0 * uC,
                                      a + r0 * uF, h + r0 * uF, proj_w + i * uC * uF, n, F, C);
            if (din)
                mome_matmul_backward_to(din + r0 * uC, dfc_w + i * uF * uC, dfc_b + i * uF, dh + r0 * uF,
                                        in + r0 * uC, fc_w + i * uF * uC, n, C, F);
            else
                mome_matmul_backward(NULL, dfc_w + i * uF * uC, dfc_b + i * uF, dh + r0 * uF, in + r0 * uC,
                                     fc_w + i * uF * uC, n, C, F);
        }
        r0 += n;
    }
}

/* ----------------------------------------------------------------------------------------- stage 4: combine */

void mome_moe_combine_forward(float *y, const float *rows, const mome_moe_plan *plan, int C) {
    // y is (N,C), rows is (n_rows,C)
    const size_t N = plan->N;
    const int k = plan->k;
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        float *o = y + t * (size_t)C;
        memset(o, 0, (size_t)C * sizeof(float));
        for (int s = 0; s < k; s++) {
            const int64_t r = plan->pos[t * (size_t)k + s];
            if (r < 0) continue;
            const float w = plan->weight[t * (size_t)k + s];
            const float *src = rows + (size_t)r * (size_t)C;
            for (int i = 0; i < C; i++) o[i] += w * src[i];
        }
    }
}

void mome_moe_combine_backward(float *drows, float *dweight, const float *dy, const float *rows,
                               const mome_moe_plan *plan, int C) {
    // drows is (n_rows,C), dweight is (N,k), dy is (N,C), rows is (n_rows,C)
    const size_t N = plan->N;
    const int k = plan->k;
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < N; t++) {
        const float *d = dy + t * (size_t)C;
        for (int s = 0; s < k; s++) {
            const size_t i = t * (size_t)k + s;
            const int64_t r = plan->pos[i];
            if (r < 0) {
                dweight[i] = 0.0f;
                continue;
            }
            const float w = plan->weight[i];
            const float *src = rows + (size_t)r * (size_t)C;
            float *dr = drows + (size_t)r * (size_t)C;
            double dot = 0.0;
            for (int j = 0; j < C; j++) {
                dr[j] = w * d[j];
                dot += (double)d[j] * src[j];
            }
            dweight[i] = (float)dot;
        }
    }
}

/* ---------------------------------------------------------------------------------------- the whole layer */

void mome_moe_forward(mome_moe *m, float *y, const float *x, size_t N) {
    // y is (N,C), x is (N,C)
    const mome_moe_config *c = &m->cfg;
    const int C = c->n_embd, E = c->n_experts, F = c->d_ff, Fs = c->shared_d_ff;
    mome_moe_route(m, x, N);
    mome_moe_gather_forward(m->rows_in, x, &m->plan, C);
    mome_moe_experts_forward(m->rows_out, m->rows_h, m->rows_a, m->rows_in, m->plan.counts, E, m->p.experts_fc_w,
                             m->p.experts_fc_b, m->p.experts_proj_w, m->p.experts_proj_b, C, F);
    mome_moe_combine_forward(y, m->rows_out, &m->plan, C);
    if (Fs > 0 && N > 0) {
        MOME_CHECK(m->p.shared_fc_w, "moe forward: shared expert configured but its parameters are not bound");
        mome_matmul_gelu_forward(m->sh_h, m->sh_a, x, m->p.shared_fc_w, m->p.shared_fc_b, N, C, Fs);
        mome_matmul_forward(m->sh_out, m->sh_a, m->p.shared_proj_w, m->p.shared_proj_b, N, Fs, C);
        mome_residual_forward(y, y, m->sh_out, N * (size_t)C);
    }
}

void mome_moe_backward(mome_moe *m, float *dx, const float *dy, const float *x, size_t N, float grad_scale) {
    // dx is (N,C), dy is (N,C), x is (N,C)
    MOME_CHECK(N == m->plan.N, "moe backward: N = %zu but the last forward had %zu", N, m->plan.N);
    MOME_CHECK(m->g.gate_w, "moe backward: gradients not bound (m->g.gate_w is NULL)");
    const mome_moe_config *c = &m->cfg;
    const int C = c->n_embd, E = c->n_experts, F = c->d_ff, Fs = c->shared_d_ff;
    const mome_moe_plan *pl = &m->plan;
    mome_moe_combine_backward(m->drows_out, m->dweight, dy, m->rows_out, pl, C);
    mome_moe_experts_backward(m->drows_in, m->g.experts_fc_w, m->g.experts_fc_b, m->g.experts_proj_w,
                              m->g.experts_proj_b, m->dscratch_h, m->drows_out, m->rows_in,
                              m->rows_h, m->rows_a, pl->counts, E, m->p.experts_fc_w, m->p.experts_proj_w, C, F);
    mome_moe_gather_backward(dx, m->drows_in, pl, C);
    mome_moe_route_backward(m, dx, m->g.gate_w, m->dweight, x, N, grad_scale);
    if (Fs > 0 && N > 0) {
        MOME_CHECK(m->g.shared_fc_w, "moe backward: shared expert configured but its gradients are not bound");
        mome_matmul_gelu_backward(m->dscratch_h, m->g.shared_proj_w, m->g.shared_proj_b, dy, m->sh_a, m->sh_h,
                                  m->p.shared_proj_w, N, Fs, C);
        mome_matmul_backward(dx, m->g.shared_fc_w, m->g.shared_fc_b, m->dscratch_h, x, m->p.shared_fc_w, N, C, Fs);
    }
}
