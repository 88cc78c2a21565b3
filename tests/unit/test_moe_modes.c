/* test_moe_modes.c — checks of the gate modes of the MoE layer (moe.h: TOPK, ALL, KA), the routing of a teacher in
 * "Every Expert Matters" distillation (Kim et al. 2025), and of mome_gpt_set_gate_mode.
 *
 *  - KA with lambda 0 == TOPK with top_k = n and renormalize = 1, bit for bit: plan, y, aux, z, dx and every
 *    parameter gradient, for n = 1 .. E (the KA layer has another top_k and max_slots = E).
 *  - ALL == KA with n = E (lambda 0 and 1: the same set, other slot order and a division by sum p = 1 + rounding)
 *    within ALL_TOL relative to the largest value (y, dx, gradients); ALL's weights are the softmax, aux = 1.
 *  - KA sampling, lambda 1, E = 48, 40000 identical tokens (so one probability vector): the frequency of each expert
 *    vs its exact inclusion probability, n = 1 (p_e) and n = 2 (p_e + sum_{j != e} p_j p_e / (1 - p_j)), within
 *    Z_MAX binomial standard deviations; lambda 0.5, n = 1: the fraction of tokens off the arg max vs
 *    lambda (1 - p_max). The same (seed, counter, layer, token) draws the same; another counter, seed or layer
 *    draws differently; a batch routed in two halves with token_base draws as the whole.
 *  - Thread counts 1 and 2 (omp_set_num_threads): identical routing (experts, weights bit for bit) in KA and ALL.
 *  - Finite differences of S = sum(y * R) + aux_coef * aux + z_coef * z (float64 accumulation, central, h = 1e-2)
 *    against backward for x, the gate and every expert (and shared expert) tensor, in ALL mode and in KA mode with
 *    lambda 0 and 0.5; entries whose perturbation changes the chosen set are skipped (at most a quarter; none in
 *    ALL mode, whose set is fixed).
 *  - Errors: bad kind, n, lambda, max_slots; a mode needing more slots than the layer holds.
 *  - Model: mome_gpt_set_gate_mode grows the buffers for ALL (every layer routes N*E rows, layer ids set), then
 *    KA fits without reallocation; a top-1 model in KA n = 2 lambda 0 gives the logits of the top-2 model bit for
 *    bit; the mode survives mome_gpt_set_inference; finite differences of the model's cross-entropy wrt gate_w in
 *    ALL mode (the Student-Aware Router trains a teacher's gate this way).
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
#include "mome/loss.h"
#include "mome/model.h"
#include "mome/moe.h"
#include "mome/rng.h"

#include "check.h"
#include "gpt_loss.h"
#include "moe_fixture.h"

#define FD_MAX_SKIP 0.25 /* at most this fraction of the entries of a tensor may be skipped for routing flips... */
#define FD_MAX_SKIP_GATE 0.6 /* ...but a gate_w entry moves the logits of every token: more flips there in KA */
#define MAX_CHECKS 120   /* entries checked per tensor (all when the tensor is smaller) */
#define ALL_TOL 1e-5     /* ALL vs KA(n = E): relative to the largest value */
#define Z_MAX 5.0        /* sampling frequencies: at most this many binomial standard deviations off */
#define GPT_FD_TOL 3e-3  /* whole-model finite differences (as test_model_moe.c) */

#define COMPARE_FF COMPARE

static mome_moe_gate_mode mode_of(mome_moe_gate_kind kind, int n, float lambda, uint64_t seed, uint64_t counter) {
    mome_moe_gate_mode g;
    memset(&g, 0, sizeof g);
    g.kind = kind;
    g.ka_n = n;
    g.ka_lambda = lambda;
    g.seed = seed;
    g.counter = counter;
    return g;
}

/* ------------------------------------------------------------------------------------------------ fixture */

static void set_mode(fixture *f, const mome_moe_gate_mode *g) {
    if (mome_moe_set_gate_mode(&f->m, g)) {
        fprintf(stderr, "%s:%d: mome_moe_set_gate_mode: %s\n", __FILE__, __LINE__, mome_error_message());
        exit(1);
    }
}

/* -------------------------------------------------------------------------- KA lambda 0 == TOPK renormalised */

static void test_ka0_equals_topk(int shared) {
    const int E = 6;
    const size_t N = 40;
    for (int n = 1; n <= E; n++) {
        const mome_moe_config topk = {.n_embd = 16, .n_experts = E, .d_ff = 20, .top_k = n,
                                      .shared_d_ff = shared ? 12 : 0, .renormalize = 1, .aux_coef = 0.3f,
                                      .z_coef = 0.05f};
        mome_moe_config ka_cfg = topk;
        ka_cfg.top_k = 2; /* another top_k and capacity: KA ignores both */
        ka_cfg.max_slots = E;
        ka_cfg.capacity_factor = 0.5f;
        fixture a, b;
        fixture_init(&a, &topk, N, NULL);
        fixture_init(&b, &ka_cfg, N, &a);
        if (n == 3) /* some exact ties in the logits: equal gate rows for experts 1, 4 and 5 */
            for (int e = 4; e < 6; e++) memcpy(a.m.p.gate_w + e * 16, a.m.p.gate_w + 16, 16 * sizeof(float));
        const mome_moe_gate_mode g = mode_of(MOME_GATE_KA, n, 0.0f, 99, 7);
        set_mode(&b, &g);
        analytic(&a, 1.0f);
        analytic(&b, 1.0f);
        char label[160];
        const size_t nk = N * (size_t)n, C = 16;
        int same = b.m.plan.k == n && b.m.plan.capacity == 0 &&
                   !memcmp(a.m.plan.expert, b.m.plan.expert, nk * sizeof(int32_t)) &&
                   !memcmp(a.m.plan.weight, b.m.plan.weight, nk * sizeof(float)) &&
                   !memcmp(a.m.plan.pos, b.m.plan.pos, nk * sizeof(int64_t)) &&
                   a.m.stats.aux_loss == b.m.stats.aux_loss && a.m.stats.z_loss == b.m.stats.z_loss;
        snprintf(label, sizeof label, "KA n=%d lambda 0 == TOPK k=%d renorm%s: plan, aux, z", n, n,
                 shared ? " (shared)" : "");
        printf("%-64s %s\n", label, same ? "bit-identical  ok" : "DIFFERENT  FAIL");
        if (!same) FAILF("%s differ", label);
        snprintf(label, sizeof label, "KA n=%d lambda 0 == TOPK: y", n);
        EXPECT_BITWISE(label, a.y, b.y, N * C * sizeof(float));
        snprintf(label, sizeof label, "KA n=%d lambda 0 == TOPK: dx", n);
        EXPECT_BITWISE(label, a.dx, b.dx, N * C * sizeof(float));
        snprintf(label, sizeof label, "KA n=%d lambda 0 == TOPK: parameter gradients", n);
        EXPECT_BITWISE(label, a.grads, b.grads, a.np * sizeof(float));
        fixture_free(&b);
        fixture_free(&a);
    }
}

/* ----------------------------------------------------------------------------------------- ALL == KA(n=E) */

static void test_all_equals_ka_full(void) {
    const int E = 5;
    const size_t N = 32, C = 16;
    const mome_moe_config cfg = {.n_embd = (int)C, .n_experts = E, .d_ff = 20, .top_k = 1, .shared_d_ff = 8,
                                 .renormalize = 0, .capacity_factor = 0.5f, .aux_coef = 0.3f, .z_coef = 0.05f,
                                 .max_slots = E};
    fixture all, ka;
    fixture_init(&all, &cfg, N, NULL);
    fixture_init(&ka, &cfg, N, &all);
    const mome_moe_gate_mode ga = mode_of(MOME_GATE_ALL, 0, 0.0f, 0, 0);
    set_mode(&all, &ga);
    analytic(&all, 1.0f);
    const mome_moe_plan *pl = &all.m.plan;
    /* ALL's plan: slot s = expert s, weights = probs, nothing dropped, every expert gets all N tokens */
    size_t bad = 0;
    double wsum_err = 0.0;
    for (size_t t = 0; t < N; t++) {
        double ws = 0.0;
        for (int s = 0; s < E; s++) {
            bad += pl->expert[t * E + s] != s || pl->pos[t * E + s] != (int64_t)((size_t)s * N + t);
            bad += memcmp(&pl->weight[t * E + s], &all.m.probs[t * E + s], sizeof(float)) != 0;
            ws += pl->weight[t * E + s];
        }
        wsum_err = fmax(wsum_err, fabs(ws - 1.0));
    }
    EXPECT(bad == 0 && pl->k == E && pl->n_rows == N * E && pl->n_dropped == 0 && pl->capacity == 0,
           "ALL plan: %zu bad entries, k %d, rows %zu, dropped %zu, capacity %zu", bad, pl->k, pl->n_rows,
           pl->n_dropped, pl->capacity);
    printf("%-64s %s\n", "ALL plan: slot s = expert s, w = probs, dropless", bad == 0 ? "ok" : "FAIL");
    REPORT("ALL weights sum to 1", wsum_err, 1.0, 1e-6);
    REPORT("ALL aux = E * sum_e (1/E) P_e = 1", fabs(all.m.stats.aux_loss - 1.0), 1.0, 1e-6);
    for (int lam = 0; lam <= 1; lam++) {
        const mome_moe_gate_mode gk = mode_of(MOME_GATE_KA, E, (float)lam, 5, 11);
        set_mode(&ka, &gk);
        analytic(&ka, 1.0f);
        char label[160];
        snprintf(label, sizeof label, "ALL == KA n=E lambda %d: y", lam);
        COMPARE_FF(label, ka.y, all.y, N * C, ALL_TOL);
        snprintf(label, sizeof label, "ALL == KA n=E lambda %d: dx", lam);
        COMPARE_FF(label, ka.dx, all.dx, N * C, ALL_TOL);
        mome_moe_params *g1 = &all.m.g, *g2 = &ka.m.g;
        snprintf(label, sizeof label, "ALL == KA n=E lambda %d: d gate_w", lam);
        COMPARE_FF(label, g2->gate_w, g1->gate_w, (size_t)E * C, ALL_TOL);
        snprintf(label, sizeof label, "ALL == KA n=E lambda %d: all parameter gradients", lam);
        COMPARE_FF(label, ka.grads, all.grads, all.np, ALL_TOL);
        snprintf(label, sizeof label, "ALL == KA n=E lambda %d: aux, z", lam);
        REPORT(label, fmax(fabs(ka.m.stats.aux_loss - all.m.stats.aux_loss), fabs(ka.m.stats.z_loss - all.m.stats.z_loss)),
               1.0, 1e-12);
    }
    fixture_free(&ka);
    fixture_free(&all);
}

/* ----------------------------------------------------------------------------------------------- sampling */

/* Fixture whose N tokens all have the same input row (one probability vector for all). */
static void same_rows(fixture *f) {
    const size_t C = (size_t)f->m.cfg.n_embd;
    for (size_t t = 1; t < f->N; t++) memcpy(f->x + t * C, f->x, C * sizeof(float));
}

static void test_sampling(void) {
    const int E = 48;
    const size_t N = 40000, C = 8;
    const mome_moe_config cfg = {.n_embd = (int)C, .n_experts = E, .d_ff = 4, .top_k = 1, .renormalize = 0,
                                 .max_slots = 2};
    fixture f;
    fixture_init(&f, &cfg, N, NULL);
    same_rows(&f);
    double *p = mome_malloc((size_t)E * sizeof(double)), *cnt = mome_malloc((size_t)E * sizeof(double));
    char label[160];
    for (int n = 1; n <= 2; n++) {
        const mome_moe_gate_mode g = mode_of(MOME_GATE_KA, n, 1.0f, 1234, 77);
        set_mode(&f, &g);
        mome_moe_route(&f.m, f.x, N);
        for (int e = 0; e < E; e++) {
            p[e] = f.m.probs[e];
            cnt[e] = 0.0;
        }
        size_t bad = 0;
        for (size_t t = 0; t < N; t++) {
            const int32_t *idx = f.m.plan.expert + t * (size_t)n;
            for (int s = 0; s < n; s++) cnt[idx[s]] += 1.0;
            if (n == 2) bad += idx[0] == idx[1] || p[idx[0]] < p[idx[1]]; /* distinct, in probability order */
            if (t > 0) bad += memcmp(f.m.probs + t * E, f.m.probs, (size_t)E * sizeof(float)) != 0;
        }
        EXPECT(bad == 0, "KA n=%d: %zu tokens with repeated experts, wrong slot order or other probabilities", n, bad);
        double zmax = 0.0, pmin = 1.0, pmax = 0.0;
        for (int e = 0; e < E; e++) {
            double pi = p[e]; /* inclusion probability */
            if (n == 2)
                for (int j = 0; j < E; j++)
                    if (j != e) pi += p[j] * p[e] / (1.0 - p[j]);
            const double sd = sqrt(pi * (1.0 - pi) / (double)N);
            zmax = fmax(zmax, fabs(cnt[e] / (double)N - pi) / sd);
            pmin = fmin(pmin, pi);
            pmax = fmax(pmax, pi);
        }
        snprintf(label, sizeof label, "KA lambda 1 n=%d, E=%d, %zu tokens: max |freq - incl.| / sd", n, E, N);
        printf("%s = %.2f (limit %.1f; inclusion probabilities %.2e .. %.2e)  %s\n", label, zmax, Z_MAX, pmin, pmax,
               zmax <= Z_MAX ? "ok" : "FAIL");
        if (!(zmax <= Z_MAX)) FAILF("%s: %.2f standard deviations", label, zmax);
    }
    /* lambda 0.5, n = 1: off the arg max with probability lambda (1 - p_max) */
    {
        const float lambda = 0.5f;
        const mome_moe_gate_mode g = mode_of(MOME_GATE_KA, 1, lambda, 99, 3);
        set_mode(&f, &g);
        mome_moe_route(&f.m, f.x, N);
        int am = 0;
        for (int e = 1; e < E; e++) am = f.m.probs[e] > f.m.probs[am] ? e : am;
        double off = 0.0;
        for (size_t t = 0; t < N; t++) off += f.m.plan.expert[t] != am;
        const double q = lambda * (1.0 - f.m.probs[am]), sd = sqrt(q * (1.0 - q) / (double)N);
        const double z = fabs(off / (double)N - q) / sd;
        printf("KA lambda 0.5 n=1: off-argmax fraction %.4f vs lambda (1 - p_max) = %.4f: %.2f sd (limit %.1f)  %s\n",
               off / (double)N, q, z, Z_MAX, z <= Z_MAX ? "ok" : "FAIL");
        if (!(z <= Z_MAX)) FAILF("KA lambda 0.5: %.2f standard deviations", z);
    }
    /* the draws are a function of (seed, counter, layer, token) */
    {
        const size_t M = 2000;
        int32_t *ref = mome_malloc(M * 2 * sizeof(int32_t));
        mome_moe_gate_mode g = mode_of(MOME_GATE_KA, 2, 1.0f, 1234, 77);
        set_mode(&f, &g);
        mome_moe_route(&f.m, f.x, M);
        memcpy(ref, f.m.plan.expert, M * 2 * sizeof(int32_t));
        mome_moe_route(&f.m, f.x, M);
        EXPECT_BITWISE("KA: same (seed, counter, layer) -> same draws", ref, f.m.plan.expert, M * 2 * sizeof(int32_t));
        const char *what[3] = {"counter", "seed", "layer"};
        for (int v = 0; v < 3; v++) {
            mome_moe_gate_mode h = g;
            if (v == 0) h.counter++;
            if (v == 1) h.seed++;
            if (v == 2) h.layer = 1;
            set_mode(&f, &h);
            mome_moe_route(&f.m, f.x, M);
            size_t diff = 0;
            for (size_t t = 0; t < M; t++) diff += memcmp(ref + 2 * t, f.m.plan.expert + 2 * t, 2 * sizeof(int32_t)) != 0;
            printf("KA: another %-6s -> %zu of %zu tokens choose another set  %s\n", what[v], diff, M,
                   diff > M / 4 ? "ok" : "FAIL");
            if (diff <= M / 4) FAILF("another %s changes only %zu of %zu sets", what[v], diff, M);
        }
        /* a batch split in two halves with token_base draws as the whole */
        mome_moe_gate_mode h = g;
        h.token_base = M / 2;
        set_mode(&f, &h);
        mome_moe_route(&f.m, f.x + (M / 2) * C, M / 2);
        EXPECT_BITWISE("KA: second half with token_base = M/2 == whole batch", ref + M, f.m.plan.expert,
                       M * sizeof(int32_t));
        mome_free(ref);
    }
    mome_free(p);
    mome_free(cnt);
    fixture_free(&f);
}

/* ---------------------------------------------------------------------------------------- thread counts */

static void test_threads(void) {
#ifdef _OPENMP
    const int E = 12;
    const size_t N = 300, C = 16;
    const mome_moe_config cfg = {.n_embd = (int)C, .n_experts = E, .d_ff = 8, .top_k = 2, .renormalize = 1,
                                 .max_slots = E};
    fixture f;
    fixture_init(&f, &cfg, N, NULL);
    const int saved = omp_get_max_threads();
    const mome_moe_gate_mode modes[3] = {mode_of(MOME_GATE_KA, 4, 0.5f, 42, 9), mode_of(MOME_GATE_KA, 0, 1.0f, 42, 9),
                                         mode_of(MOME_GATE_ALL, 0, 0.0f, 0, 0)};
    const char *names[3] = {"KA n=4 lambda 0.5", "KA n=E-1 lambda 1", "ALL"};
    for (int i = 0; i < 3; i++) {
        set_mode(&f, &modes[i]);
        const int k = mome_moe_gate_slots(&cfg, &modes[i]);
        int32_t *e1 = mome_malloc(N * (size_t)k * sizeof(int32_t));
        float *w1 = mome_malloc(N * (size_t)k * sizeof(float)), *y1 = mome_malloc(N * C * sizeof(float));
        omp_set_num_threads(1);
        mome_moe_forward(&f.m, f.y, f.x, N);
        memcpy(e1, f.m.plan.expert, N * (size_t)k * sizeof(int32_t));
        memcpy(w1, f.m.plan.weight, N * (size_t)k * sizeof(float));
        memcpy(y1, f.y, N * C * sizeof(float));
        omp_set_num_threads(2);
        mome_moe_forward(&f.m, f.y, f.x, N);
        char label[160];
        snprintf(label, sizeof label, "%s: 1 vs 2 threads: chosen experts", names[i]);
        EXPECT_BITWISE(label, e1, f.m.plan.expert, N * (size_t)k * sizeof(int32_t));
        snprintf(label, sizeof label, "%s: 1 vs 2 threads: weights", names[i]);
        EXPECT_BITWISE(label, w1, f.m.plan.weight, N * (size_t)k * sizeof(float));
        snprintf(label, sizeof label, "%s: 1 vs 2 threads: y", names[i]);
        COMPARE_FF(label, f.y, y1, N * C, 1e-6);
        mome_free(e1);
        mome_free(w1);
        mome_free(y1);
    }
    omp_set_num_threads(saved);
    fixture_free(&f);
#else
    printf("thread counts: built without OpenMP, skipped\n");
#endif
}

/* ------------------------------------------------------------------------------------ finite differences */

static void test_fd(const char *name, const mome_moe_config *cfg, const mome_moe_gate_mode *g, size_t N,
                    size_t max_skipped) {
    fixture f;
    fixture_init(&f, cfg, N, NULL);
    set_mode(&f, g);
    printf("-- fd %s: N %zu C %d E %d F %d Fs %d slots %d aux %g z %g\n", name, N, cfg->n_embd, cfg->n_experts,
           cfg->d_ff, cfg->shared_d_ff, mome_moe_gate_slots(cfg, g), (double)cfg->aux_coef, (double)cfg->z_coef);
    analytic(&f, 1.0f);
    const size_t skipped =
        fd_check_layer(&f, name, MAX_CHECKS, FD_MAX_SKIP, FD_MAX_SKIP_GATE, 0, __FILE__, __LINE__);
    EXPECT(skipped <= max_skipped, "%s: %zu entries skipped for routing changes, at most %zu allowed", name, skipped,
           max_skipped);
    fixture_free(&f);
}

/* ------------------------------------------------------------------------------------------------ errors */

static void test_errors(void) {
    const mome_moe_config cfg = {.n_embd = 8, .n_experts = 4, .d_ff = 8, .top_k = 2, .renormalize = 1};
    mome_moe_config c = cfg;
    c.max_slots = 1;
    EXPECT(mome_moe_config_check(&c) == MOME_ECONFIG, "max_slots < top_k accepted");
    c.max_slots = 5;
    EXPECT(mome_moe_config_check(&c) == MOME_ECONFIG, "max_slots > n_experts accepted");
    c.max_slots = 3;
    EXPECT(mome_moe_config_check(&c) == MOME_OK, "max_slots 3 rejected: %s", mome_error_message());
    mome_moe m;
    if (mome_moe_init(&m, &cfg, 4)) {
        FAILF("init: %s", mome_error_message());
        return;
    }
    EXPECT(m.max_slots == 2 && m.gate.kind == MOME_GATE_TOPK, "default: max_slots %d kind %d", m.max_slots,
           (int)m.gate.kind);
    mome_moe_gate_mode g = mode_of(MOME_GATE_ALL, 0, 0.0f, 0, 0);
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "ALL accepted with max_slots 2 < E");
    g = mode_of(MOME_GATE_KA, 0, 0.5f, 0, 0); /* default n = E - 1 = 3 > 2 */
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "KA n=3 accepted with max_slots 2");
    EXPECT(m.gate.kind == MOME_GATE_TOPK, "a rejected mode changed the layer");
    g.ka_n = 2;
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_OK, "KA n=2 rejected: %s", mome_error_message());
    g.ka_n = 5;
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "KA n=5 > E accepted");
    g.ka_n = -1;
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "KA n=-1 accepted");
    g.ka_n = 1;
    g.ka_lambda = 1.5f;
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "KA lambda 1.5 accepted");
    g.ka_lambda = NAN;
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "KA lambda NaN accepted");
    g.kind = (mome_moe_gate_kind)7;
    EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_ECONFIG, "gate kind 7 accepted");
    mome_moe_free(&m);
    c = cfg;
    c.max_slots = 4;
    if (mome_moe_init(&m, &c, 4) == MOME_OK) {
        g = mode_of(MOME_GATE_KA, 0, 0.0f, 0, 0);
        EXPECT(mome_moe_set_gate_mode(&m, &g) == MOME_OK && m.gate.ka_n == 3, "KA default n: %d, want E-1 = 3",
               m.gate.ka_n);
        mome_moe_free(&m);
    }
    printf("%-64s %s\n", "gate mode errors rejected", "done");
}

/* ------------------------------------------------------------------------------------------------ model */

#define GB 2
#define GT 8

static int32_t g_inputs[GB * GT], g_targets[GB * GT];

static double gpt_loss(mome_gpt *m, int backward) {
    const double ce = gpt_mean_xent(m, g_inputs, g_targets, GB, GT, backward);
    if (backward) mome_gpt_backward_ex(m, g_inputs, GB, GT, 0.0f);
    return ce;
}

static void test_model(void) {
    mome_gpt_config cfg = {.vocab_size = 32, .seq_len = GT, .n_layer = 2, .n_head = 2, .d_model = 16, .d_ff = 24,
                           .n_experts = 4, .top_k = 1, .aux_coef = 0.01f, .z_coef = 0.001f};
    for (int i = 0; i < GB * GT; i++) {
        g_inputs[i] = (int32_t)mome_rng_below(&rng, 32);
        g_targets[i] = (int32_t)mome_rng_below(&rng, 32);
    }
    mome_gpt m, m2;
    if (mome_gpt_init(&m, &cfg) || mome_gpt_reserve(&m, GB, GT)) {
        FAILF("gpt init: %s", mome_error_message());
        return;
    }
    mome_gpt_init_weights(&m, 5);
    /* a sharper gate than the init so that the gate gradient is well above float noise */
    const int kg = mome_tensor_table_find(&m.table, "blocks/gate_w");
    float *gate = m.params + m.table.t[kg].offset;
    for (size_t i = 0; i < m.table.t[kg].numel; i++) gate[i] = 0.5f * mome_rng_normal(&rng);
    const size_t BT = GB * GT;

    /* ALL: grows the buffers, every layer routes BT * E rows with its layer id */
    mome_moe_gate_mode g = mode_of(MOME_GATE_ALL, 0, 0.0f, 0, 0);
    EXPECT(mome_gpt_set_gate_mode(&m, &g) == MOME_OK, "gpt ALL: %s", mome_error_message());
    gpt_loss(&m, 0);
    size_t bad = 0;
    for (int l = 0; l < cfg.n_layer; l++) {
        const mome_moe *moe = mome_gpt_moe_layer(&m, l);
        bad += moe->max_slots != 4 || moe->plan.k != 4 || moe->plan.n_rows != BT * 4 || moe->gate.layer != (uint32_t)l;
    }
    EXPECT(bad == 0 && fabs(m.dropped_frac) == 0.0, "gpt ALL: %zu layers with the wrong plan", bad);
    printf("%-64s %s\n", "gpt ALL: buffers grown, every layer routes B*T*E rows", bad == 0 ? "ok" : "FAIL");

    /* finite differences of the cross-entropy wrt gate_w in ALL mode (aux and z not in the loss here) */
    {
        mome_gpt_zero_grad(&m);
        gpt_loss(&m, 1);
        const float *ana = m.grads + m.table.t[kg].offset;
        double err = 0.0;
        const size_t n = m.table.t[kg].numel;
        for (int c = 0; c < 16; c++) {
            const size_t i = (size_t)mome_rng_below(&rng, n);
            const float x0 = gate[i];
            gate[i] = x0 + FD_H;
            const double lp = gpt_loss(&m, 0);
            gate[i] = x0 - FD_H;
            const double lm = gpt_loss(&m, 0);
            gate[i] = x0;
            err = fmax(err, fabs((lp - lm) / (2.0 * FD_H) - ana[i]));
        }
        REPORT("gpt ALL: fd d CE / d gate_w (16 entries, none skippable)", err, max_abs(ana, n), GPT_FD_TOL);
    }

    /* KA n = 2 fits in the grown buffers (no reallocation); lambda 0 == the top-2 model */
    const void *acts = m.acts;
    g = mode_of(MOME_GATE_KA, 2, 0.0f, 3, 1);
    EXPECT(mome_gpt_set_gate_mode(&m, &g) == MOME_OK && m.acts == acts, "gpt KA after ALL reallocated or failed");
    gpt_loss(&m, 0);
    mome_gpt_config cfg2 = cfg;
    cfg2.top_k = 2;
    if (mome_gpt_init(&m2, &cfg2) || mome_gpt_reserve(&m2, GB, GT)) {
        FAILF("gpt init: %s", mome_error_message());
    } else {
        memcpy(m2.params, m.params, m.table.total * sizeof(float));
        gpt_loss(&m2, 0);
        EXPECT_BITWISE("gpt top-1 in KA n=2 lambda 0 == top-2 model: logits", m.logits, m2.logits,
                       BT * (size_t)cfg.vocab_size * sizeof(float));
        /* the mode survives set_inference + reserve */
        g = mode_of(MOME_GATE_KA, 3, 1.0f, 3, 1);
        EXPECT(mome_gpt_set_gate_mode(&m2, &g) == MOME_OK, "gpt KA n=3: %s", mome_error_message());
        mome_gpt_set_inference(&m2);
        EXPECT(mome_gpt_reserve(&m2, GB, GT) == MOME_OK, "gpt reserve: %s", mome_error_message());
        mome_gpt_forward(&m2, g_inputs, GB, GT);
        bad = 0;
        for (int l = 0; l < cfg.n_layer; l++) {
            const mome_moe *moe = mome_gpt_moe_layer(&m2, l);
            bad += moe->gate.kind != MOME_GATE_KA || moe->plan.k != 3 || moe->gate.layer != (uint32_t)l;
        }
        EXPECT(bad == 0, "gpt: the gate mode did not survive set_inference (%zu layers)", bad);
        printf("%-64s %s\n", "gpt: KA mode kept across set_inference + reserve", bad == 0 ? "ok" : "FAIL");
        mome_gpt_free(&m2);
    }
    g = mode_of(MOME_GATE_KA, 9, 0.0f, 0, 0);
    EXPECT(mome_gpt_set_gate_mode(&m, &g) == MOME_ECONFIG && m.gate_mode.ka_n == 2, "gpt: KA n=9 > E accepted");
    mome_gpt_free(&m);
}

int main(void) {
    mome_rng_seed(&rng, 777);
    test_errors();
    test_ka0_equals_topk(0);
    test_ka0_equals_topk(1);
    test_all_equals_ka_full();
    test_sampling();
    test_threads();
    const mome_moe_config all_cfg = {.n_embd = 12, .n_experts = 4, .d_ff = 16, .top_k = 1, .shared_d_ff = 10,
                                     .renormalize = 0, .capacity_factor = 0.5f, .aux_coef = 0.5f, .z_coef = 0.1f,
                                     .max_slots = 4};
    const mome_moe_config ka_cfg = {.n_embd = 12, .n_experts = 6, .d_ff = 16, .top_k = 2, .renormalize = 1,
                                    .aux_coef = 0.5f, .z_coef = 0.1f, .max_slots = 6};
    const mome_moe_gate_mode all = mode_of(MOME_GATE_ALL, 0, 0.0f, 0, 0);
    const mome_moe_gate_mode ka0 = mode_of(MOME_GATE_KA, 0, 0.0f, 0, 0);
    const mome_moe_gate_mode ka_half = mode_of(MOME_GATE_KA, 3, 0.5f, 2024, 5);
    const mome_moe_gate_mode ka_one = mode_of(MOME_GATE_KA, 2, 1.0f, 2024, 6);
    test_fd("ALL", &all_cfg, &all, 24, 0);
    /* fewer tokens in KA mode: a gate_w entry moves every token's logits, and any flip skips the entry */
    test_fd("KA n=E-1 lambda 0", &ka_cfg, &ka0, 12, (size_t)-1);
    test_fd("KA n=3 lambda 0.5", &ka_cfg, &ka_half, 12, (size_t)-1);
    test_fd("KA n=2 lambda 1", &ka_cfg, &ka_one, 12, (size_t)-1);
    test_model();
    return check_summary("test_moe_modes");
}
