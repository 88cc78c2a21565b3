/* test_modular.c — the modular student (modular.h) on a tiny configuration (V=32, T=8, C=16, NH=2, F=32, 3 expert
 * trunks of 2 blocks, B=4 sequences routed to experts 0, 2, all (-1) and 1):
 *  - finite differences of the mean cross-entropy for samples of every tensor, with and without the common trunk
 *    (max |num - ana| / max |ana| per tensor <= 3e-3);
 *  - an expert trunk no sequence went through gets exactly zero gradient; routing changes the logits;
 *  - determinism: two forward + backward passes give bit-identical loss and gradients;
 *  - an expert trunk's initial values depend only on its global id (the same in a 3- and a 5-expert model).
 */
#include <math.h>
#include <string.h>

#include "check.h"
#include "mome/loss.h"
#include "mome/modular.h"
#include "mome/rng.h"

#define B 4
#define T 8
#define SAMPLES 6
#define FD_H 1e-2f
#define FD_TOL 3e-3

static int32_t inputs[B * T], targets[B * T];

static double loss_of(mome_modular *m, const int32_t *routes, int backward) {
    mome_modular_forward(m, inputs, routes, B, T);
    size_t nv = 0;
    const double sum = mome_xent_forward_backward(m->logits, targets, (size_t)B * T, m->cfg.vocab_size,
                                                  backward ? 1.0f / (B * T) : 0.0f, &nv);
    if (backward) mome_modular_backward(m, inputs, routes, B, T);
    return sum / (double)nv;
}

static void fd_check(int common, const int32_t *routes, const char *what) {
    const mome_modular_config cfg = {.vocab_size = 32, .seq_len = T, .d_model = 16, .n_head = 2, .d_ff = 32,
                                     .n_experts = 3, .trunk_layers = 2, .common = common};
    mome_modular m;
    CHECK_RC(mome_modular_init(&m, &cfg), MOME_OK);
    mome_modular_init_weights(&m, 5);
    /* non-trivial LayerNorm and bias values, so their gradients are exercised */
    mome_rng r;
    mome_rng_stream(&r, 9, 1, 0);
    for (size_t i = 0; i < m.table.total; i++) m.params[i] += 0.05f * mome_rng_normal(&r);
    CHECK_RC(mome_modular_reserve(&m, B, T), MOME_OK);
    mome_modular_zero_grad(&m);
    loss_of(&m, routes, 1);
    double worst = 0.0;
    for (int k = 0; k < m.table.n; k++) {
        const mome_tensor_info *ti = &m.table.t[k];
        double scale = 0.0, err = 0.0;
        for (size_t i = 0; i < ti->numel; i++) scale = fmax(scale, fabs(m.grads[ti->offset + i]));
        if (scale == 0.0) continue; /* a trunk nobody used: checked below */
        mome_rng pick;
        mome_rng_stream(&pick, 11, (uint64_t)k, 0);
        for (int s = 0; s < SAMPLES; s++) {
            const size_t i = ti->offset + mome_rng_below(&pick, ti->numel);
            const float keep = m.params[i];
            m.params[i] = keep + FD_H;
            const double lp = loss_of(&m, routes, 0);
            m.params[i] = keep - FD_H;
            const double lm = loss_of(&m, routes, 0);
            m.params[i] = keep;
            err = fmax(err, fabs((lp - lm) / (2.0 * FD_H) - m.grads[i]));
        }
        const double rel = err / scale;
        worst = fmax(worst, rel);
        if (rel > FD_TOL) {
            fprintf(stderr, "%s: %s: FD error %.3e relative to max |grad| %.3e\n", what, ti->name, rel, scale);
            failures++;
        }
    }
    printf("%s: finite differences, worst relative error %.3e (tolerance %.0e)\n", what, worst, FD_TOL);

    /* determinism */
    float *g1 = mome_malloc(m.table.total * sizeof(float));
    memcpy(g1, m.grads, m.table.total * sizeof(float));
    mome_modular_zero_grad(&m);
    const double l1 = loss_of(&m, routes, 1);
    mome_modular_zero_grad(&m);
    const double l2 = loss_of(&m, routes, 1);
    CHECK(l1 == l2);
    CHECK(memcmp(g1, m.grads, m.table.total * sizeof(float)) == 0);
    mome_free(g1);
    mome_modular_free(&m);
}

int main(void) {
    mome_rng r;
    mome_rng_stream(&r, 3, 0, 0);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int32_t)mome_rng_below(&r, 32);
        targets[i] = (int32_t)mome_rng_below(&r, 32);
    }
    const int32_t routes[B] = {0, 2, -1, 1};
    fd_check(1, routes, "common trunk, routes 0 2 all 1");
    fd_check(0, routes, "no common trunk, routes 0 2 all 1");

    /* an unused trunk gets no gradient; routing matters */
    const mome_modular_config cfg = {.vocab_size = 32, .seq_len = T, .d_model = 16, .n_head = 2, .d_ff = 32,
                                     .n_experts = 3, .trunk_layers = 2, .common = 1};
    mome_modular m;
    CHECK_RC(mome_modular_init(&m, &cfg), MOME_OK);
    mome_modular_init_weights(&m, 5);
    CHECK_RC(mome_modular_reserve(&m, B, T), MOME_OK);
    const int32_t only01[B] = {0, 1, 0, 1};
    mome_modular_zero_grad(&m);
    const double la = loss_of(&m, only01, 1);
    const int q = mome_tensor_table_find(&m.table, "experts/qkv_w");
    CHECK(q >= 0);
    const mome_tensor_info *ti = &m.table.t[q];
    const size_t per = ti->numel / 3;
    double used = 0.0, unused = 0.0;
    for (size_t i = 0; i < per; i++) {
        used += fabs(m.grads[ti->offset + i]);
        unused += fabs(m.grads[ti->offset + 2 * per + i]);
    }
    CHECK(used > 0.0);
    CHECK(unused == 0.0);
    const int32_t swapped[B] = {1, 0, 1, 0};
    const double lb = loss_of(&m, swapped, 0);
    CHECK(la != lb);
    printf("routes 0 1 0 1: loss %.6f, trunk 2 gradient sum %.1f; routes 1 0 1 0: loss %.6f\n", la, unused, lb);

    /* initialisation by global expert id */
    mome_modular_config cfg5 = cfg;
    cfg5.n_experts = 5;
    mome_modular m5;
    CHECK_RC(mome_modular_init(&m5, &cfg5), MOME_OK);
    mome_modular_init_weights(&m5, 5);
    const int q5 = mome_tensor_table_find(&m5.table, "experts/qkv_w");
    CHECK(memcmp(m.params + ti->offset, m5.params + m5.table.t[q5].offset, 3 * per * sizeof(float)) == 0);
    const int w3 = mome_tensor_table_find(&m.table, "wte"), w5 = mome_tensor_table_find(&m5.table, "wte");
    CHECK(memcmp(m.params + m.table.t[w3].offset, m5.params + m5.table.t[w5].offset,
                 m.table.t[w3].numel * sizeof(float)) == 0);
    mome_modular_free(&m5);
    mome_modular_free(&m);
    return failures ? 1 : 0;
}
