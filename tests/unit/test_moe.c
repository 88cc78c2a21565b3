/* test_moe.c — checks of the token-level MoE layer (moe.h).
 *
 *  - Finite differences: the scalar S = sum(y * R) + aux_coef * aux + z_coef * z (R fixed random, float64
 *    accumulation) against backward with dy = R, grad_scale = 1, for x, the gate and every expert and shared
 *    expert tensor. Cases: top-1 with capacity dropping, top-1 dropless without renormalisation, top-2 dropless
 *    with a shared expert, top-2 with capacity dropping and a shared expert. The layer is float32, so the
 *    check is float32 with h = 1e-2, error relative to the tensor's largest analytic gradient (as in
 *    test_kernels.c). Routing is piecewise constant: an entry whose +h or -h evaluation changes the dispatch
 *    (chosen experts or kept/dropped rows) is SKIPPED and counted; the check fails if more than a quarter of
 *    the entries of a tensor are skipped (so it cannot pass vacuously).
 *  - A plain-loop float64 reference of the whole forward (routing, capacity, experts, shared expert, aux and
 *    z-loss) written from the definitions in moe.h, compared with the sgemm layer.
 *  - Capacity: drops really happen, kept = min(routed, capacity) per expert, the kept assignments of each
 *    expert are exactly its first `capacity` in (token, slot) order, dropped top-1 tokens have y exactly 0
 *    (or exactly the shared expert's output); dropless drops nothing; stats are consistent and loads sum to 1.
 *  - Ties go to the lower expert index; the expert stage on two sub-ranges of experts equals the full range
 *    bit for bit (the expert-parallel contract); grad_scale scales every gradient; forward + backward are
 *    bit-identical when repeated.
 * Every check prints its measured value and tolerance; the program exits 1 if any check fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/kernels.h"
#include "mome/moe.h"
#include "mome/rng.h"

#include "check.h"
#include "moe_fixture.h"

#define FD_MAX_SKIP 0.25 /* at most this fraction of the checked entries may be skipped for routing flips */
#define REF_TOL 1e-5     /* sgemm layer vs float64 plain loops, relative to the largest reference value */
#define MAX_CHECKS 150   /* entries checked per tensor (all when the tensor is smaller) */

/* Float results against a float64 reference: max |got - ref| relative to the largest |ref|. */
static void compare_ref(const char *what, const float *got, const double *ref, size_t n, double tol,
                        const char *file, int line) {
    double err = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - ref[i]);
        err = isnan(d) ? INFINITY : fmax(err, d);
        scale = fmax(scale, fabs(ref[i]));
    }
    check_report(what, err, scale, tol, file, line);
}
#define COMPARE_REF(what, got, ref, n, tol) compare_ref(what, got, ref, n, tol, __FILE__, __LINE__)

/* ----------------------------------------------------------------------------- float64 reference forward */

static double gelu_ref(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 /* sqrt(2/pi) */ * (x + 0.044715 * x * x * x))); }

/* y_ref (N*C), chosen (N*k), kept (N*k: 1/0), aux, z from the definitions; returns the capacity used. */
static size_t reference_forward(double *y_ref, int32_t *chosen, int *kept, double *aux, double *z,
                                const mome_moe_config *c, const mome_moe_params *p, const float *x, size_t N) {
    const int C = c->n_embd, E = c->n_experts, F = c->d_ff, Fs = c->shared_d_ff, k = c->top_k;
    double *logit = mome_malloc((size_t)E * sizeof(double)), *prob = mome_malloc((size_t)N * E * sizeof(double));
    double *h = mome_malloc((size_t)(F > Fs ? F : Fs) * sizeof(double));
    size_t *routed = mome_calloc((size_t)E, sizeof(size_t)), *taken = mome_calloc((size_t)E, sizeof(size_t));
    double *wts = mome_malloc(N * (size_t)k * sizeof(double));
    *z = 0.0;
    for (size_t t = 0; t < N; t++) {
        const float *xt = x + t * (size_t)C;
        double mx = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; e++) {
            double s = 0.0;
            for (int i = 0; i < C; i++) s += (double)p->gate_w[(size_t)e * C + i] * xt[i];
            logit[e] = s;
            mx = fmax(mx, s);
        }
        for (int e = 0; e < E; e++) sum += exp(logit[e] - mx);
        const double lse = mx + log(sum);
        *z += lse * lse;
        for (int e = 0; e < E; e++) prob[t * E + e] = exp(logit[e] - lse);
        /* top-k by selection, ties to the lower index */
        int32_t *ch = chosen + t * (size_t)k;
        double S = 0.0;
        for (int s = 0; s < k; s++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int used = 0;
                for (int j = 0; j < s; j++) used |= ch[j] == e;
                if (!used && (best < 0 || logit[e] > logit[best])) best = e;
            }
            ch[s] = best;
            S += prob[t * E + best];
            routed[best]++;
        }
        for (int s = 0; s < k; s++) wts[t * k + s] = prob[t * E + ch[s]] / (c->renormalize ? S : 1.0);
    }
    *z /= (double)N;
    const size_t cap = c->capacity_factor > 0 ? (size_t)ceil((double)c->capacity_factor * N * k / E) : 0;
    *aux = 0.0;
    for (int e = 0; e < E; e++) {
        double P = 0.0;
        for (size_t t = 0; t < N; t++) P += prob[t * E + e];
        *aux += (double)routed[e] / (double)(N * k) * (P / (double)N);
    }
    *aux *= E;
    for (size_t t = 0; t < N; t++) {
        const float *xt = x + t * (size_t)C;
        double *yt = y_ref + t * (size_t)C;
        for (int i = 0; i < C; i++) yt[i] = 0.0;
        for (int s = 0; s < k; s++) {
            const int e = chosen[t * k + s];
            kept[t * k + s] = cap == 0 || taken[e] < cap;
            if (!kept[t * k + s]) continue;
            taken[e]++;
            const float *fw = p->experts_fc_w + (size_t)e * F * C, *fb = p->experts_fc_b + (size_t)e * F;
            const float *pw = p->experts_proj_w + (size_t)e * C * F, *pb = p->experts_proj_b + (size_t)e * C;
            for (int j = 0; j < F; j++) {
                double s2 = fb[j];
                for (int i = 0; i < C; i++) s2 += (double)fw[(size_t)j * C + i] * xt[i];
                h[j] = gelu_ref(s2);
            }
            for (int i = 0; i < C; i++) {
                double s2 = pb[i];
                for (int j = 0; j < F; j++) s2 += (double)pw[(size_t)i * F + j] * h[j];
                yt[i] += wts[t * k + s] * s2;
            }
        }
        if (Fs > 0) {
            for (int j = 0; j < Fs; j++) {
                double s2 = p->shared_fc_b[j];
                for (int i = 0; i < C; i++) s2 += (double)p->shared_fc_w[(size_t)j * C + i] * xt[i];
                h[j] = gelu_ref(s2);
            }
            for (int i = 0; i < C; i++) {
                double s2 = p->shared_proj_b[i];
                for (int j = 0; j < Fs; j++) s2 += (double)p->shared_proj_w[(size_t)i * Fs + j] * h[j];
                yt[i] += s2;
            }
        }
    }
    mome_free(logit);
    mome_free(prob);
    mome_free(h);
    mome_free(routed);
    mome_free(taken);
    mome_free(wts);
    return cap;
}

/* ------------------------------------------------------------------------------------------------- checks */

static void check_reference(fixture *f, const char *name) {
    mome_moe *m = &f->m;
    const mome_moe_config *c = &m->cfg;
    const size_t C = (size_t)c->n_embd, nk = f->N * (size_t)c->top_k;
    double *y_ref = mome_malloc(f->N * C * sizeof(double)), aux, z;
    int32_t *chosen = mome_malloc(nk * sizeof(int32_t));
    int *kept = mome_malloc(nk * sizeof(int));
    const size_t cap = reference_forward(y_ref, chosen, kept, &aux, &z, c, &m->p, f->x, f->N);
    mome_moe_forward(m, f->y, f->x, f->N);
    char label[160];
    snprintf(label, sizeof label, "%s: y vs float64 reference", name);
    COMPARE_REF(label, f->y, y_ref, f->N * C, REF_TOL);
    snprintf(label, sizeof label, "%s: aux loss vs reference", name);
    REPORT(label, fabs(m->stats.aux_loss - aux), fabs(aux), REF_TOL);
    snprintf(label, sizeof label, "%s: z-loss vs reference", name);
    REPORT(label, fabs(m->stats.z_loss - z), fabs(z), REF_TOL);
    EXPECT(m->plan.capacity == cap, "%s: capacity %zu, reference %zu", name, m->plan.capacity, cap);
    size_t bad = 0;
    for (size_t i = 0; i < nk; i++) bad += chosen[i] != m->plan.expert[i] || kept[i] != (m->plan.pos[i] >= 0);
    EXPECT(bad == 0, "%s: %zu of %zu (token, slot) routing decisions differ from the reference", name, bad, nk);
    mome_free(y_ref);
    mome_free(chosen);
    mome_free(kept);
}

static void check_plan(fixture *f, const char *name) {
    const mome_moe *m = &f->m;
    const mome_moe_plan *pl = &m->plan;
    const mome_moe_stats *st = &m->stats;
    const int E = pl->E, k = pl->k;
    const size_t nk = f->N * (size_t)k;
    size_t sum_routed = 0, sum_kept = 0;
    double sum_load = 0.0;
    for (int e = 0; e < E; e++) {
        sum_routed += pl->routed[e];
        sum_kept += pl->counts[e];
        sum_load += st->load[e];
        const size_t want = pl->capacity && pl->routed[e] > pl->capacity ? pl->capacity : pl->routed[e];
        EXPECT(pl->counts[e] == want, "%s: expert %d kept %zu, want min(routed %zu, capacity %zu)", name, e,
               pl->counts[e], pl->routed[e], pl->capacity);
        EXPECT(pl->offsets[e + 1] - pl->offsets[e] == pl->counts[e], "%s: expert %d offsets inconsistent", name, e);
        /* the kept assignments of e are exactly its first counts[e] in (token, slot) order, at consecutive rows */
        size_t seen = 0;
        for (size_t i = 0; i < nk; i++) {
            if (pl->expert[i] != e) continue;
            if (seen < pl->counts[e]) {
                EXPECT(pl->pos[i] == (int64_t)(pl->offsets[e] + seen), "%s: expert %d assignment %zu (token %zu "
                       "slot %zu) at row %lld, want %zu", name, e, seen, i / k, i % k, (long long)pl->pos[i],
                       pl->offsets[e] + seen);
                if (pl->pos[i] >= 0) {
                    EXPECT(pl->row_token[pl->pos[i]] == (int32_t)(i / k) && pl->row_slot[pl->pos[i]] == (int32_t)(i % k),
                           "%s: row %lld names token %d slot %d, want %zu %zu", name, (long long)pl->pos[i],
                           pl->row_token[pl->pos[i]], pl->row_slot[pl->pos[i]], i / k, i % k);
                }
            } else {
                EXPECT(pl->pos[i] == -1, "%s: expert %d assignment %zu beyond capacity %zu not dropped", name, e,
                       seen, pl->capacity);
            }
            seen++;
        }
        EXPECT(seen == pl->routed[e], "%s: expert %d routed %zu but %zu assignments name it", name, e, pl->routed[e],
               seen);
    }
    EXPECT(sum_routed == nk, "%s: routed counts sum to %zu, want N*k = %zu", name, sum_routed, nk);
    EXPECT(sum_kept + pl->n_dropped == nk && sum_kept == pl->n_rows, "%s: kept %zu + dropped %zu != %zu", name,
           sum_kept, pl->n_dropped, nk);
    EXPECT(st->n_dropped == pl->n_dropped && st->n_assign == nk && st->n_tokens == f->N,
           "%s: stats counts inconsistent with the plan", name);
    EXPECT(fabs(st->dropped_frac - (double)pl->n_dropped / (double)nk) < 1e-15, "%s: dropped_frac %.17g", name,
           st->dropped_frac);
    REPORT("load fractions sum to 1 (abs err)", fabs(sum_load - 1.0), 1.0, 1e-12);
    /* slot 0 has the largest probability, and weights are renormalised when asked */
    size_t bad = 0;
    for (size_t t = 0; t < f->N; t++) {
        double ws = 0.0;
        for (int s = 0; s < k; s++) {
            ws += pl->weight[t * k + s];
            if (s > 0) bad += pl->weight[t * k + s] > pl->weight[t * k + s - 1];
        }
        if (m->cfg.renormalize) bad += fabs(ws - 1.0) > 1e-6;
    }
    EXPECT(bad == 0, "%s: %zu tokens with weights out of order or not summing to 1", name, bad);
}

/* Shared expert output computed here from the kernels, for the dropped-token check. */
static void shared_out(float *out, const mome_moe *m, const float *x, size_t N) {
    const int C = m->cfg.n_embd, Fs = m->cfg.shared_d_ff;
    float *h = mome_malloc(N * (size_t)Fs * sizeof(float)), *a = mome_malloc(N * (size_t)Fs * sizeof(float));
    mome_matmul_gelu_forward(h, a, x, m->p.shared_fc_w, m->p.shared_fc_b, N, C, Fs);
    mome_matmul_forward(out, a, m->p.shared_proj_w, m->p.shared_proj_b, N, Fs, C);
    mome_free(h);
    mome_free(a);
}

static void test_capacity(int shared) {
    const mome_moe_config cfg = {.n_embd = 16, .n_experts = 4, .d_ff = 20, .top_k = 1, .shared_d_ff = shared ? 12 : 0,
                                 .renormalize = 1, .capacity_factor = 0.5f, .aux_coef = 0.1f, .z_coef = 0.01f};
    fixture f;
    fixture_init(&f, &cfg, 40, NULL);
    const char *name = shared ? "capacity 0.5, top-1, shared" : "capacity 0.5, top-1";
    mome_moe_forward(&f.m, f.y, f.x, f.N);
    const mome_moe_plan *pl = &f.m.plan;
    EXPECT(pl->capacity == 5, "%s: capacity %zu, want ceil(0.5 * 40 * 1 / 4) = 5", name, pl->capacity);
    EXPECT(pl->n_dropped > 0, "%s: a capacity factor of 0.5 must drop assignments, none dropped", name);
    printf("%s: capacity %zu, dropped %zu of %zu assignments\n", name, pl->capacity, pl->n_dropped, f.N);
    check_plan(&f, name);
    const size_t C = (size_t)cfg.n_embd;
    float *sh = shared ? mome_malloc(f.N * C * sizeof(float)) : NULL;
    if (shared) shared_out(sh, &f.m, f.x, f.N);
    size_t ndrop = 0, bad = 0;
    for (size_t t = 0; t < f.N; t++) {
        if (pl->pos[t] >= 0) continue;
        ndrop++;
        for (size_t i = 0; i < C; i++) bad += f.y[t * C + i] != (shared ? sh[t * C + i] : 0.0f);
    }
    EXPECT(ndrop == pl->n_dropped && bad == 0, "%s: %zu values of dropped tokens are not exactly %s", name, bad,
           shared ? "the shared expert's output" : "0");
    printf("%-64s %s\n", shared ? "dropped tokens: y == shared expert output exactly" : "dropped tokens: y == 0 exactly",
           bad == 0 ? "ok" : "FAIL");
    /* dropped assignments get no gradient through the experts: their dweight is 0 */
    mome_moe_backward(&f.m, f.dx, f.R, f.x, f.N, 1.0f);
    bad = 0;
    for (size_t t = 0; t < f.N; t++) bad += pl->pos[t] < 0 && f.m.dweight[t] != 0.0f;
    EXPECT(bad == 0, "%s: %zu dropped assignments have a non-zero weight gradient", name, bad);
    check_reference(&f, name);
    mome_free(sh);
    fixture_free(&f);
}

static void test_dropless(void) {
    for (int pass = 0; pass < 2; pass++) {
        /* capacity_factor 0 is dropless; a factor of E/k = 2 can never drop either */
        const mome_moe_config cfg = {.n_embd = 16, .n_experts = 4, .d_ff = 20, .top_k = 2, .renormalize = 1,
                                     .capacity_factor = pass ? 2.0f : 0.0f};
        fixture f;
        fixture_init(&f, &cfg, 40, NULL);
        /* skew the gate so that every token picks expert 0 first: it gets N assignments, twice its share (and
         * exactly the capacity ceil(2 * N * k / E) = N of the second pass) */
        for (int e = 0; e < cfg.n_experts; e++) f.m.p.gate_w[(size_t)e * cfg.n_embd] = e == 0 ? 5.0f : 0.0f;
        for (size_t t = 0; t < f.N; t++) f.x[t * cfg.n_embd] = 3.0f;
        mome_moe_forward(&f.m, f.y, f.x, f.N);
        const char *name = pass ? "capacity factor E/k (never drops)" : "dropless";
        EXPECT(f.m.plan.routed[0] == f.N, "%s: expert 0 routed %zu, want all %zu tokens", name, f.m.plan.routed[0],
               f.N);
        EXPECT(f.m.plan.n_dropped == 0 && f.m.stats.dropped_frac == 0.0, "%s: %zu assignments dropped", name,
               f.m.plan.n_dropped);
        for (int e = 0; e < cfg.n_experts; e++)
            EXPECT(f.m.plan.counts[e] == f.m.plan.routed[e], "%s: expert %d kept %zu of %zu", name, e,
                   f.m.plan.counts[e], f.m.plan.routed[e]);
        printf("%-64s dropped %zu  %s\n", name, f.m.plan.n_dropped, f.m.plan.n_dropped == 0 ? "ok" : "FAIL");
        check_plan(&f, name);
        fixture_free(&f);
    }
}

static void test_ties(void) {
    const mome_moe_config cfg = {.n_embd = 8, .n_experts = 5, .d_ff = 6, .top_k = 3, .renormalize = 1};
    fixture f;
    fixture_init(&f, &cfg, 7, NULL);
    memset(f.m.p.gate_w, 0, (size_t)cfg.n_experts * cfg.n_embd * sizeof(float)); /* all logits exactly 0 */
    mome_moe_route(&f.m, f.x, f.N);
    size_t bad = 0;
    for (size_t t = 0; t < f.N; t++)
        for (int s = 0; s < cfg.top_k; s++) bad += f.m.plan.expert[t * cfg.top_k + s] != s;
    EXPECT(bad == 0, "ties: %zu slots do not pick the lowest expert indices 0..k-1", bad);
    printf("%-64s %s\n", "ties (all logits equal) -> experts 0, 1, 2", bad == 0 ? "ok" : "FAIL");
    /* and equal weights 1/k */
    REPORT("ties: renormalised weights == 1/k", fabs(f.m.plan.weight[1] - 1.0 / 3.0), 1.0 / 3.0, 1e-6);
    fixture_free(&f);
}

/* The expert stage on [0, e_mid) and [e_mid, E) separately (pointers offset to the first expert, rows offset
 * to the range's first row) must reproduce the full range bit for bit, forward and backward. */
static void test_expert_range(void) {
    const mome_moe_config cfg = {.n_embd = 16, .n_experts = 5, .d_ff = 20, .top_k = 2, .renormalize = 1};
    fixture f;
    fixture_init(&f, &cfg, 30, NULL);
    analytic(&f, 1.0f);
    mome_moe *m = &f.m;
    const mome_moe_plan *pl = &m->plan;
    const size_t C = 16, F = 20, n = pl->n_rows;
    float *out = mome_malloc(n * C * sizeof(float)), *h = mome_malloc(n * F * sizeof(float));
    float *a = mome_malloc(n * F * sizeof(float)), *din = mome_calloc(n * C, sizeof(float));
    float *g = mome_calloc(f.np, sizeof(float));
    float *dh = mome_malloc(n * F * sizeof(float));
    mome_moe_params gv;
    mome_moe_params_bind(&gv, g, &cfg);
    const int ranges[3] = {0, 2, 5};
    for (int r = 0; r < 2; r++) {
        const int e0 = ranges[r], ne = ranges[r + 1] - e0;
        const size_t r0 = pl->offsets[e0];
        mome_moe_experts_forward(out + r0 * C, h + r0 * F, a + r0 * F, m->rows_in + r0 * C, pl->counts + e0, ne,
                                 m->p.experts_fc_w + e0 * F * C, m->p.experts_fc_b + e0 * F,
                                 m->p.experts_proj_w + e0 * C * F, m->p.experts_proj_b + e0 * C, (int)C, (int)F);
        mome_moe_experts_backward(din + r0 * C, gv.experts_fc_w + e0 * F * C, gv.experts_fc_b + e0 * F,
                                  gv.experts_proj_w + e0 * C * F, gv.experts_proj_b + e0 * C, dh + r0 * F,
                                  m->drows_out + r0 * C, m->rows_in + r0 * C, h + r0 * F, a + r0 * F,
                                  pl->counts + e0, ne, m->p.experts_fc_w + e0 * F * C,
                                  m->p.experts_proj_w + e0 * C * F, (int)C, (int)F);
    }
    EXPECT_BITWISE("expert ranges [0,2)+[2,5) forward == full range", out, m->rows_out, n * C * sizeof(float));
    EXPECT_BITWISE("expert ranges backward d(rows) == full range", din, m->drows_in, n * C * sizeof(float));
    const size_t eoff = (size_t)(gv.experts_fc_w - g), elen = (size_t)(gv.experts_proj_b - g) + 5 * C - eoff;
    EXPECT_BITWISE("expert ranges backward weight grads == full range", g + eoff, f.grads + eoff,
                   elen * sizeof(float));
    mome_free(out);
    mome_free(h);
    mome_free(a);
    mome_free(din);
    mome_free(g);
    mome_free(dh);
    fixture_free(&f);
}

/* The expert stage alone on 1 and on 2 threads, with rows spread evenly (60, 62, 59, 61) and with one expert
 * holding most (200, 20, 20, 20): the same bits. */
static void expert_threads_case(const size_t counts[4], const char *what) {
    const int E = 4, C = 32, F = 48;
    size_t n = 0;
    for (int i = 0; i < E; i++) n += counts[i];
    mome_rng rng;
    mome_rng_seed(&rng, 11);
    const size_t nw = (size_t)E * F * C, sizes[] = {n * C, nw, (size_t)E * F, nw, (size_t)E * C, n * C};
    float *buf[6];
    for (int b = 0; b < 6; b++) {
        buf[b] = mome_malloc(sizes[b] * sizeof(float));
        for (size_t i = 0; i < sizes[b]; i++) buf[b][i] = (float)mome_rng_normal(&rng);
    }
    const float *in = buf[0], *fc_w = buf[1], *fc_b = buf[2], *proj_w = buf[3], *proj_b = buf[4], *dout = buf[5];
    float *res[2][4]; /* per thread count: out, din, weight gradients (fc_w, proj_w and both biases), h */
    const size_t ng = 2 * nw + (size_t)E * F + (size_t)E * C;
    for (int run = 0; run < 2; run++) {
        float *out = mome_malloc(n * C * sizeof(float)), *h = mome_malloc(n * F * sizeof(float));
        float *a = mome_malloc(n * F * sizeof(float)), *din = mome_malloc(n * C * sizeof(float));
        float *dh = mome_malloc(n * F * sizeof(float)), *g = mome_calloc(ng, sizeof(float));
#ifdef _OPENMP
        const int saved = omp_get_max_threads();
        omp_set_num_threads(run + 1);
#endif
        mome_moe_experts_forward(out, h, a, in, counts, E, fc_w, fc_b, proj_w, proj_b, C, F);
        mome_moe_experts_backward(din, g, g + nw, g + nw + (size_t)E * F, g + 2 * nw + (size_t)E * F, dh, dout, in,
                                  h, a, counts, E, fc_w, proj_w, C, F);
#ifdef _OPENMP
        omp_set_num_threads(saved);
#endif
        res[run][0] = out, res[run][1] = din, res[run][2] = g, res[run][3] = h;
        mome_free(a);
        mome_free(dh);
    }
    char name[160];
    snprintf(name, sizeof name, "experts on 1 and 2 threads, rows %s: forward", what);
    EXPECT_BITWISE(name, res[0][0], res[1][0], n * C * sizeof(float));
    snprintf(name, sizeof name, "experts on 1 and 2 threads, rows %s: pre-activations", what);
    EXPECT_BITWISE(name, res[0][3], res[1][3], n * F * sizeof(float));
    snprintf(name, sizeof name, "experts on 1 and 2 threads, rows %s: d(rows)", what);
    EXPECT_BITWISE(name, res[0][1], res[1][1], n * C * sizeof(float));
    snprintf(name, sizeof name, "experts on 1 and 2 threads, rows %s: weight gradients", what);
    EXPECT_BITWISE(name, res[0][2], res[1][2], ng * sizeof(float));
    for (int run = 0; run < 2; run++)
        for (int k = 0; k < 4; k++) mome_free(res[run][k]);
    for (int b = 0; b < 6; b++) mome_free(buf[b]);
}

static void test_expert_threads(void) {
    const size_t even[4] = {60, 62, 59, 61}, skewed[4] = {200, 20, 20, 20};
    expert_threads_case(even, "even");
    expert_threads_case(skewed, "skewed");
}

/* Forward + backward twice from zeroed gradients: bit-identical; grad_scale 0.5 with dy = 0.5 R halves all. */
static void test_determinism_and_scale(void) {
    const mome_moe_config cfg = {.n_embd = 24, .n_experts = 6, .d_ff = 40, .top_k = 2, .shared_d_ff = 16,
                                 .renormalize = 1, .capacity_factor = 1.0f, .aux_coef = 0.3f, .z_coef = 0.05f};
    fixture f;
    fixture_init(&f, &cfg, 64, NULL);
    const size_t C = (size_t)cfg.n_embd, nC = f.N * C;
    analytic(&f, 1.0f);
    float *y1 = mome_malloc(nC * sizeof(float)), *dx1 = mome_malloc(nC * sizeof(float));
    float *g1 = mome_malloc(f.np * sizeof(float));
    memcpy(y1, f.y, nC * sizeof(float));
    memcpy(dx1, f.dx, nC * sizeof(float));
    memcpy(g1, f.grads, f.np * sizeof(float));
    analytic(&f, 1.0f);
    EXPECT_BITWISE("determinism: y", y1, f.y, nC * sizeof(float));
    EXPECT_BITWISE("determinism: dx", dx1, f.dx, nC * sizeof(float));
    EXPECT_BITWISE("determinism: parameter gradients", g1, f.grads, f.np * sizeof(float));
    /* grad_scale */
    for (size_t i = 0; i < nC; i++) f.R[i] *= 0.5f;
    analytic(&f, 0.5f);
    double *half = mome_malloc(f.np * sizeof(double)), *halfx = mome_malloc(nC * sizeof(double));
    for (size_t i = 0; i < f.np; i++) half[i] = 0.5 * g1[i];
    for (size_t i = 0; i < nC; i++) halfx[i] = 0.5 * dx1[i];
    COMPARE_REF("grad_scale 0.5 (dy 0.5 R): parameter grads halve", f.grads, half, f.np, 1e-6);
    COMPARE_REF("grad_scale 0.5 (dy 0.5 R): dx halves", f.dx, halfx, nC, 1e-6);
    mome_free(y1);
    mome_free(dx1);
    mome_free(g1);
    mome_free(half);
    mome_free(halfx);
    fixture_free(&f);
}

static void test_fd(const char *name, const mome_moe_config *cfg, size_t N) {
    fixture f;
    fixture_init(&f, cfg, N, NULL);
    printf("-- %s: N %zu C %d E %d F %d k %d Fs %d renorm %d capacity_factor %g aux %g z %g\n", name, N,
           cfg->n_embd, cfg->n_experts, cfg->d_ff, cfg->top_k, cfg->shared_d_ff, cfg->renormalize,
           (double)cfg->capacity_factor, (double)cfg->aux_coef, (double)cfg->z_coef);
    analytic(&f, 1.0f);
    if (cfg->capacity_factor > 0)
        EXPECT(f.m.plan.n_dropped > 0, "%s: the capacity factor must drop assignments for this test", name);
    printf("   capacity %zu, dropped %zu of %zu; aux %.6f z %.6f\n", f.m.plan.capacity, f.m.plan.n_dropped,
           N * (size_t)cfg->top_k, f.m.stats.aux_loss, f.m.stats.z_loss);
    check_plan(&f, name);
    check_reference(&f, name);
    fd_check_layer(&f, name, MAX_CHECKS, FD_MAX_SKIP, FD_MAX_SKIP, 1, __FILE__, __LINE__);
    fixture_free(&f);
}

static void test_config_errors(void) {
    const mome_moe_config good = {.n_embd = 8, .n_experts = 4, .d_ff = 8, .top_k = 2, .renormalize = 1};
    EXPECT(mome_moe_config_check(&good) == MOME_OK, "valid config rejected: %s", mome_error_message());
    mome_moe_config c = good;
    c.top_k = 5;
    EXPECT(mome_moe_config_check(&c) == MOME_ECONFIG, "top_k > n_experts accepted");
    c = good;
    c.capacity_factor = -1.0f;
    EXPECT(mome_moe_config_check(&c) == MOME_ECONFIG, "negative capacity_factor accepted");
    c = good;
    c.shared_d_ff = -3;
    EXPECT(mome_moe_config_check(&c) == MOME_ECONFIG, "negative shared_d_ff accepted");
    printf("%-64s %s\n", "config errors rejected", "done");
}

int main(void) {
    mome_rng_seed(&rng, 4242);
    const mome_moe_config top1_cap = {.n_embd = 12, .n_experts = 4, .d_ff = 16, .top_k = 1, .renormalize = 1,
                                      .capacity_factor = 0.75f, .aux_coef = 0.5f, .z_coef = 0.1f};
    const mome_moe_config top1_raw = {.n_embd = 12, .n_experts = 4, .d_ff = 16, .top_k = 1, .renormalize = 0,
                                      .capacity_factor = 0.0f, .aux_coef = 0.5f, .z_coef = 0.1f};
    const mome_moe_config top2_shared = {.n_embd = 12, .n_experts = 4, .d_ff = 16, .top_k = 2, .shared_d_ff = 10,
                                         .renormalize = 1, .capacity_factor = 0.0f, .aux_coef = 0.5f,
                                         .z_coef = 0.1f};
    const mome_moe_config top2_cap = {.n_embd = 12, .n_experts = 5, .d_ff = 16, .top_k = 2, .shared_d_ff = 10,
                                      .renormalize = 1, .capacity_factor = 0.8f, .aux_coef = 0.5f, .z_coef = 0.1f};
    test_fd("top-1 capacity 0.75", &top1_cap, 24);
    test_fd("top-1 dropless raw", &top1_raw, 24);
    test_fd("top-2 dropless shared", &top2_shared, 24);
    test_fd("top-2 capacity 0.8 shared", &top2_cap, 24);
    test_capacity(0);
    test_capacity(1);
    test_dropless();
    test_ties();
    test_expert_range();
    test_expert_threads();
    test_determinism_and_scale();
    test_config_errors();
    return check_summary("test_moe");
}
