/* moe_fixture.h — the MoE layer on random inputs, shared by test_moe.c and test_moe_modes.c: a layer with its
 * parameters, inputs and gradients, the scalar S = sum(y * R) + aux_coef * aux + z_coef * z (R fixed random, float64
 * accumulation) whose gradient backward computes with dy = R, and its finite-difference check. Include after
 * check.h; the test seeds `rng` in main. */
#ifndef MOME_TEST_MOE_FIXTURE_H
#define MOME_TEST_MOE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/moe.h"
#include "mome/rng.h"

#define FD_H 1e-2f
#define FD_TOL 1e-3 /* finite-difference relative error (float32 evaluation; measured <= 1.1e-4) */

static mome_rng rng;

#define FAILF(...)                                      \
    do {                                                \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                   \
        fputc('\n', stderr);                            \
        failures++;                                     \
    } while (0)

/* An exact (integer / bitwise) check, with a message saying what differs. */
#define EXPECT(cond, ...)                     \
    do {                                      \
        if (!(cond)) {                        \
            FAILF("check failed: %s", #cond); \
            fprintf(stderr, "    ");          \
            fprintf(stderr, __VA_ARGS__);     \
            fputc('\n', stderr);              \
        }                                     \
    } while (0)

static void expect_bitwise(const char *what, const void *a, const void *b, size_t bytes, const char *file,
                           int line) {
    const int ok = memcmp(a, b, bytes) == 0;
    printf("%-64s %s\n", what, ok ? "bit-identical  ok" : "DIFFERENT  FAIL");
    if (!ok) {
        fprintf(stderr, "%s:%d: %s: buffers of %zu bytes differ\n", file, line, what, bytes);
        failures++;
    }
}
#define EXPECT_BITWISE(what, a, b, bytes) expect_bitwise(what, a, b, bytes, __FILE__, __LINE__)

static void fill_normal(float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = scale * mome_rng_normal(&rng);
}

/* A layer with its own gradients; parameters may be shared with another fixture (params_from). */
typedef struct {
    mome_moe m;
    size_t N, np;
    float *params, *grads; /* (np) flat, bound to m.p / m.g */
    int owns_params;
    float *x, *y, *R, *dx; /* (N, C); x and R owned only with the parameters */
    int32_t *base_expert;  /* (N, max_slots) routing of the unperturbed input */
    int64_t *base_pos;     /* (N, max_slots) */
    int flipped;           /* set by fixture_loss when the dispatch differs from base */
} fixture;

static void fixture_init(fixture *f, const mome_moe_config *cfg, size_t N, const fixture *params_from) {
    memset(f, 0, sizeof *f);
    if (mome_moe_init(&f->m, cfg, N)) {
        fprintf(stderr, "%s:%d: mome_moe_init: %s\n", __FILE__, __LINE__, mome_error_message());
        exit(1);
    }
    const size_t C = (size_t)cfg->n_embd, S = (size_t)f->m.max_slots;
    f->N = N;
    f->np = mome_moe_num_params(cfg);
    f->grads = mome_calloc(f->np, sizeof(float));
    if (params_from) {
        if (params_from->np != f->np || params_from->N != N) {
            fprintf(stderr, "%s:%d: fixtures of different shapes\n", __FILE__, __LINE__);
            exit(1);
        }
        f->params = params_from->params;
        f->x = params_from->x;
        f->R = params_from->R;
    } else {
        f->owns_params = 1;
        f->params = mome_malloc(f->np * sizeof(float));
        /* weights of order 1/sqrt(fan_in) times a bit more, biases non-zero, a gate sharp enough (scaled below)
         * that the top-k margins are usually much larger than the FD step's effect on the logits */
        fill_normal(f->params, f->np, 0.3f);
        f->x = mome_malloc(N * C * sizeof(float));
        f->R = mome_malloc(N * C * sizeof(float));
        fill_normal(f->x, N * C, 1.0f);
        fill_normal(f->R, N * C, 1.0f);
    }
    mome_moe_params_bind(&f->m.p, f->params, cfg);
    mome_moe_params_bind(&f->m.g, f->grads, cfg);
    if (!params_from)
        for (size_t i = 0; i < (size_t)cfg->n_experts * C; i++) f->m.p.gate_w[i] *= 2.0f;
    f->y = mome_malloc(N * C * sizeof(float));
    f->dx = mome_calloc(N * C, sizeof(float));
    f->base_expert = mome_malloc(N * S * sizeof *f->base_expert);
    f->base_pos = mome_malloc(N * S * sizeof *f->base_pos);
}

static void fixture_free(fixture *f) {
    mome_moe_free(&f->m);
    if (f->owns_params) {
        mome_free(f->params);
        mome_free(f->x);
        mome_free(f->R);
    }
    mome_free(f->grads);
    mome_free(f->y);
    mome_free(f->dx);
    mome_free(f->base_expert);
    mome_free(f->base_pos);
}

/* Forward, then the scalar S; flags a dispatch different from the saved base one. */
static double fixture_loss(void *ctx) {
    fixture *f = ctx;
    mome_moe *m = &f->m;
    const size_t C = (size_t)m->cfg.n_embd;
    mome_moe_forward(m, f->y, f->x, f->N);
    const size_t nk = f->N * (size_t)m->plan.k;
    double s = 0.0;
    for (size_t i = 0; i < f->N * C; i++) s += (double)f->y[i] * f->R[i];
    s += (double)m->cfg.aux_coef * m->stats.aux_loss + (double)m->cfg.z_coef * m->stats.z_loss;
    if (memcmp(m->plan.expert, f->base_expert, nk * sizeof(int32_t)) ||
        memcmp(m->plan.pos, f->base_pos, nk * sizeof(int64_t)))
        f->flipped = 1;
    return s;
}

/* Forward at the current point, saves its dispatch as the base, zeroes and fills the analytic gradients
 * (backward with dy = R and the given grad_scale). */
static void analytic(fixture *f, float grad_scale) {
    mome_moe *m = &f->m;
    const size_t C = (size_t)m->cfg.n_embd;
    mome_moe_forward(m, f->y, f->x, f->N);
    const size_t nk = f->N * (size_t)m->plan.k;
    memcpy(f->base_expert, m->plan.expert, nk * sizeof(int32_t));
    memcpy(f->base_pos, m->plan.pos, nk * sizeof(int64_t));
    memset(f->grads, 0, f->np * sizeof(float));
    memset(f->dx, 0, f->N * C * sizeof(float));
    mome_moe_backward(m, f->dx, f->R, f->x, f->N, grad_scale);
}

/* Finite differences of S over x (max_checks entries at most) against ana, after analytic(): an entry whose +h or
 * -h evaluation changes the dispatch is skipped, and the check fails when more than max_skip of the entries are.
 * Returns the number skipped. */
static size_t fd_check(const char *what, fixture *f, float *x, const float *ana, size_t n, size_t max_checks,
                       double max_skip, const char *file, int line) {
    const fd_result r = fd_central(fixture_loss, f, x, ana, n, FD_H, max_checks, &rng, &f->flipped);
    char label[256];
    snprintf(label, sizeof label, "fd %s (%zu of %zu, %zu skipped)", what, r.checks - r.skipped, n, r.skipped);
    check_report(label, r.err, max_abs(ana, n), FD_TOL, file, line);
    if ((double)r.skipped > max_skip * (double)r.checks) {
        fprintf(stderr, "%s:%d: %s: %zu of %zu entries skipped for routing changes (limit %.0f%%)\n", file, line,
                what, r.skipped, r.checks, 100.0 * max_skip);
        failures++;
    }
    return r.skipped;
}

/* fd_check over x and every parameter tensor of the layer (the shared expert's biases only with shared_biases),
 * with the skip limit max_skip_gate for gate_w (an entry of it moves the logits of every token). Returns the
 * entries skipped in all. */
static size_t fd_check_layer(fixture *f, const char *name, size_t max_checks, double max_skip, double max_skip_gate,
                             int shared_biases, const char *file, int line) {
    const mome_moe_config *c = &f->m.cfg;
    const size_t N = f->N, C = (size_t)c->n_embd, E = (size_t)c->n_experts, F = (size_t)c->d_ff;
    const size_t Fs = (size_t)c->shared_d_ff;
    mome_moe_params *p = &f->m.p, *g = &f->m.g;
    const struct {
        const char *name;
        float *x;
        const float *ana;
        size_t n;
        int on;
    } t[] = {
        {"dx", f->x, f->dx, N * C, 1},
        {"gate_w", p->gate_w, g->gate_w, E * C, 1},
        {"experts_fc_w", p->experts_fc_w, g->experts_fc_w, E * F * C, 1},
        {"experts_fc_b", p->experts_fc_b, g->experts_fc_b, E * F, 1},
        {"experts_proj_w", p->experts_proj_w, g->experts_proj_w, E * C * F, 1},
        {"experts_proj_b", p->experts_proj_b, g->experts_proj_b, E * C, 1},
        {"shared_fc_w", p->shared_fc_w, g->shared_fc_w, Fs * C, Fs > 0},
        {"shared_fc_b", p->shared_fc_b, g->shared_fc_b, Fs, Fs > 0 && shared_biases},
        {"shared_proj_w", p->shared_proj_w, g->shared_proj_w, C * Fs, Fs > 0},
        {"shared_proj_b", p->shared_proj_b, g->shared_proj_b, C, Fs > 0 && shared_biases},
    };
    size_t skipped = 0;
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        if (!t[i].on) continue;
        char label[128];
        snprintf(label, sizeof label, "%s %s", name, t[i].name);
        skipped += fd_check(label, f, t[i].x, t[i].ana, t[i].n, max_checks,
                            t[i].x == p->gate_w ? max_skip_gate : max_skip, file, line);
    }
    return skipped;
}

#endif
