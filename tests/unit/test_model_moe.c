/* test_model_moe.c — whole-model checks of the GPT with MoE FFN blocks (model.c + moe.c + loss.c) on tiny
 * configurations (V=32, T=8, L=2, NH=2, C=16, F=32, E=4, B=2):
 *   (a) top-1, capacity factor 1.25 (Switch: raw gate probability as weight), no shared expert;
 *   (b) top-2, dropless, renormalised weights, shared expert Fs=24.
 * For each:
 *  - finite differences on loss = CE_mean + S * (aux_coef * aux + z_coef * z) with S = aux_grad_scale passed to
 *    mome_gpt_backward_ex: SAMPLES entries of every tensor, error relative to the largest analytic gradient of
 *    the tensor, max|num - ana| / max|ana| <= FD_TOL. Entries whose +-h perturbation changes the routing (any
 *    layer's plan: chosen experts or grouped positions, i.e. a top-k flip or a capacity drop) are skipped, since
 *    the loss is not differentiable there; they are counted and at most half of the draws may be skipped;
 *  - determinism: a second forward + backward gives bit-identical loss, aux, z and gradients;
 *  - statistics: expert_load sums to 1 per layer, dropped_frac is 0 when dropless;
 *  - the table layout: expert tensors last, expert_dim 1, n_dense = offset of the first expert tensor.
 * Also: an MoE model holding experts [2, 4) initialises its dense tensors and its expert slices bit-identically
 * to the single-process model; the init has the documented standard deviations; the FLOP count counts the
 * active parameters. Exits 1 on any failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/loss.h"
#include "mome/model.h"
#include "mome/rng.h"

#include "check.h"
#include "gpt_loss.h"

#define B 2
#define T 8
#define SAMPLES 5
#define MAX_DRAWS 40
#define FD_H 1e-2f
#define FD_TOL 3e-3
#define AUX_SCALE 0.5f

static int32_t inputs[B * T], targets[B * T];

/* CE_mean + AUX_SCALE * (aux_coef * aux + z_coef * z); with `backward`, accumulates gradients into m->grads. */
static double loss_of(mome_gpt *m, int backward) {
    const double ce = gpt_mean_xent(m, inputs, targets, B, T, backward);
    if (backward) mome_gpt_backward_ex(m, inputs, B, T, AUX_SCALE);
    return ce + (double)AUX_SCALE * ((double)m->cfg.aux_coef * m->aux_loss + (double)m->cfg.z_coef * m->z_loss);
}

/* Routing of every layer (chosen experts and grouped positions) of the last forward. */
typedef struct {
    int32_t expert[2][B * T * 4];
    int64_t pos[2][B * T * 4];
} routing;

static void routing_save(const mome_gpt *m, routing *r) {
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const mome_moe *moe = mome_gpt_moe_layer(m, l);
        const size_t nk = moe->plan.N * (size_t)moe->plan.k;
        memcpy(r->expert[l], moe->plan.expert, nk * sizeof(int32_t));
        memcpy(r->pos[l], moe->plan.pos, nk * sizeof(int64_t));
    }
}

static int routing_same(const mome_gpt *m, const routing *r) {
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const mome_moe *moe = mome_gpt_moe_layer(m, l);
        const size_t nk = moe->plan.N * (size_t)moe->plan.k;
        if (memcmp(r->expert[l], moe->plan.expert, nk * sizeof(int32_t)) ||
            memcmp(r->pos[l], moe->plan.pos, nk * sizeof(int64_t)))
            return 0;
    }
    return 1;
}

static void check_model(const mome_gpt_config *cfg, const char *tag, uint64_t seed) {
    printf("---- %s: E=%d top_k=%d capacity_factor=%g shared_d_ff=%d aux_coef=%g z_coef=%g S=%g\n", tag,
           cfg->n_experts, cfg->top_k, (double)cfg->capacity_factor, cfg->shared_d_ff, (double)cfg->aux_coef,
           (double)cfg->z_coef, (double)AUX_SCALE);
    mome_gpt m;
    if (mome_gpt_init(&m, cfg) || mome_gpt_reserve(&m, B, T)) {
        fprintf(stderr, "%s:%d: %s: model init failed: %s\n", __FILE__, __LINE__, tag, mome_error_message());
        failures++;
        return;
    }
    char label[128];

    /* ---- table layout ---- */
    {
        const int k0 = m.table.n - 4;
        static const char *const names[4] = {"blocks/experts_fc_w", "blocks/experts_fc_b", "blocks/experts_proj_w",
                                             "blocks/experts_proj_b"};
        double bad = 0.0;
        for (int i = 0; i < 4; i++)
            if (strcmp(m.table.t[k0 + i].name, names[i]) != 0 || m.table.t[k0 + i].expert_dim != 1 ||
                m.table.t[k0 + i].shape[1] != (size_t)cfg->n_experts)
                bad = 1.0;
        for (int k = 0; k < k0; k++)
            if (m.table.t[k].expert_dim != -1) bad = 1.0;
        snprintf(label, sizeof label, "%s: expert tensors last, expert_dim 1", tag);
        REPORT(label, bad, 1.0, 0.0);
        snprintf(label, sizeof label, "%s: n_dense = offset of experts_fc_w", tag);
        REPORT(label, fabs((double)m.n_dense - (double)m.table.t[k0].offset), 1.0, 0.0);
        const int has_shared = mome_tensor_table_find(&m.table, "blocks/shared_fc_w") >= 0;
        const int no_mlp = mome_tensor_table_find(&m.table, "blocks/fc_w") < 0;
        snprintf(label, sizeof label, "%s: gate/shared present, dense MLP absent", tag);
        REPORT(label,
               (mome_tensor_table_find(&m.table, "blocks/gate_w") >= 0 && has_shared == (cfg->shared_d_ff > 0) &&
                no_mlp)
                   ? 0.0
                   : 1.0,
               1.0, 0.0);
    }

    /* Larger weights than the GPT-2 init so every gradient is well above float noise. */
    mome_rng rng;
    mome_rng_seed(&rng, seed);
    for (int k = 0; k < m.table.n; k++) {
        const mome_tensor_info *ti = &m.table.t[k];
        const int is_lnw = strstr(ti->name, "ln") && ti->name[strlen(ti->name) - 1] == 'w';
        const int is_mat = ti->decay && strcmp(ti->name, "wte") != 0;
        const size_t fan_in = is_mat ? ti->shape[ti->ndim - 1] : (size_t)cfg->d_model;
        const float sd = is_mat ? 1.0f / sqrtf((float)fan_in) : (is_lnw ? 0.2f : 0.3f);
        for (size_t i = 0; i < ti->numel; i++)
            m.params[ti->offset + i] = (is_lnw ? 1.0f : 0.0f) + sd * mome_rng_normal(&rng);
    }

    /* ---- finite differences ---- */
    mome_gpt_zero_grad(&m);
    const double loss0 = loss_of(&m, 1);
    const double aux0 = m.aux_loss, z0 = m.z_loss;
    routing *r0 = mome_malloc(sizeof *r0);
    routing_save(&m, r0);
    printf("%s: loss %.6f (ln V = %.6f), aux %.6f, z %.6f, dropped_frac %.4f\n", tag, loss0,
           log((double)cfg->vocab_size), aux0, z0, m.dropped_frac);
    {
        double err = 0.0;
        for (int l = 0; l < cfg->n_layer; l++) {
            double s = 0.0;
            for (int e = 0; e < cfg->n_experts; e++) s += m.expert_load[l * cfg->n_experts + e];
            err = fmax(err, fabs(s - 1.0));
        }
        snprintf(label, sizeof label, "%s: expert_load sums to 1 per layer", tag);
        REPORT(label, err, 1.0, 1e-12);
        snprintf(label, sizeof label, "%s: dropped_frac in range", tag);
        const int ok = cfg->capacity_factor == 0.0f ? m.dropped_frac == 0.0
                                                    : (m.dropped_frac >= 0.0 && m.dropped_frac < 1.0);
        REPORT(label, ok ? 0.0 : 1.0, 1.0, 0.0);
    }
    float *grads1 = mome_malloc(m.table.total * sizeof(float));
    memcpy(grads1, m.grads, m.table.total * sizeof(float));
    int skipped_all = 0, checked_all = 0;
    for (int k = 0; k < m.table.n; k++) {
        const mome_tensor_info *ti = &m.table.t[k];
        const float *g = grads1 + ti->offset;
        double scale = 0.0, err = 0.0;
        for (size_t i = 0; i < ti->numel; i++) scale = fmax(scale, fabs((double)g[i]));
        int checked = 0, skipped = 0;
        for (int d = 0; d < MAX_DRAWS && checked < SAMPLES; d++) {
            const size_t i = (size_t)mome_rng_below(&rng, ti->numel);
            float *p = m.params + ti->offset + i;
            const float p0 = *p;
            *p = p0 + FD_H;
            const double lp = loss_of(&m, 0);
            const int same_p = routing_same(&m, r0);
            *p = p0 - FD_H;
            const double lm = loss_of(&m, 0);
            const int same_m = routing_same(&m, r0);
            *p = p0;
            if (!same_p || !same_m) {
                skipped++;
                continue;
            }
            checked++;
            const double num = (lp - lm) / (2.0 * (double)FD_H);
            const double dd = fabs(num - g[i]);
            err = isnan(dd) ? INFINITY : fmax(err, dd);
        }
        skipped_all += skipped;
        checked_all += checked;
        snprintf(label, sizeof label, "%s: fd %s (%d ok, %d skipped)", tag, ti->name, checked, skipped);
        REPORT(label, err, scale, FD_TOL);
        if (checked < SAMPLES) {
            fprintf(stderr, "%s:%d: %s: only %d of %d samples of %s kept the routing\n", __FILE__, __LINE__, tag,
                    checked, SAMPLES, ti->name);
            failures++;
        }
        if (!(scale > 0.0)) {
            fprintf(stderr, "%s:%d: %s: gradient of %s is identically zero\n", __FILE__, __LINE__, tag, ti->name);
            failures++;
        }
    }
    printf("%s: %d entries checked, %d skipped because the perturbation changed the routing\n", tag, checked_all,
           skipped_all);
    snprintf(label, sizeof label, "%s: skipped fraction of fd draws", tag);
    REPORT(label, (double)skipped_all, (double)(skipped_all + checked_all), 0.5);

    /* ---- the fd loop restored every parameter: the loss is unchanged ---- */
    {
        mome_gpt_zero_grad(&m);
        loss_of(&m, 1);
        const double l1 = loss_of(&m, 0);
        snprintf(label, sizeof label, "%s: loss after restoring params", tag);
        REPORT(label, fabs(l1 - loss0), fabs(loss0), 0.0);
    }

    /* ---- determinism ---- */
    {
        mome_gpt_zero_grad(&m);
        const double loss1 = loss_of(&m, 1);
        const int same_g = memcmp(grads1, m.grads, m.table.total * sizeof(float)) == 0;
        snprintf(label, sizeof label, "%s: second run loss/aux/z bit-identical", tag);
        REPORT(label, (loss1 == loss0 && m.aux_loss == aux0 && m.z_loss == z0) ? 0.0 : 1.0, 1.0, 0.0);
        snprintf(label, sizeof label, "%s: second run gradients bit-identical", tag);
        REPORT(label, same_g ? 0.0 : 1.0, 1.0, 0.0);
        loss_of(&m, 1); /* accumulates */
        double err = 0.0, sc = 0.0;
        for (size_t i = 0; i < m.table.total; i++) {
            err = fmax(err, fabs((double)m.grads[i] - 2.0 * grads1[i]));
            sc = fmax(sc, fabs(2.0 * grads1[i]));
        }
        snprintf(label, sizeof label, "%s: backward accumulates into grads", tag);
        REPORT(label, err, sc, 1e-6);
    }

    /* ---- FLOPs per token: active parameters ---- */
    {
        const double L = cfg->n_layer, C = cfg->d_model, F = cfg->d_ff, V = cfg->vocab_size, Tt = T;
        const double ffn = cfg->n_experts * C + cfg->top_k * 2.0 * C * F + 2.0 * C * cfg->shared_d_ff;
        const double want = 2.0 * (L * (4 * C * C + ffn) + V * C) + 4.0 * L * C * (Tt + 1) / 2.0;
        snprintf(label, sizeof label, "%s: flops per token", tag);
        REPORT(label, fabs(mome_gpt_flops_per_token(cfg, T) - want), want, 1e-12);
    }
    mome_free(r0);
    mome_free(grads1);
    mome_gpt_free(&m);
}

/* A model holding experts [2, 4) has the dense tensors and the expert slices of the full model. */
static void check_init_split(const mome_gpt_config *cfg) {
    mome_gpt full, part;
    if (mome_gpt_init(&full, cfg) || mome_gpt_init_experts(&part, cfg, 2, 2)) {
        fprintf(stderr, "%s:%d: init failed: %s\n", __FILE__, __LINE__, mome_error_message());
        failures++;
        return;
    }
    mome_gpt_init_weights(&full, 7);
    mome_gpt_init_weights(&part, 7);
    REPORT("split init: n_dense equal", fabs((double)full.n_dense - (double)part.n_dense), 1.0, 0.0);
    REPORT("split init: dense params bit-identical",
           memcmp(full.params, part.params, full.n_dense * sizeof(float)) == 0 ? 0.0 : 1.0, 1.0, 0.0);
    double bad = 0.0;
    for (int k = 0; k < full.table.n; k++) {
        const mome_tensor_info *tf = &full.table.t[k], *tp = &part.table.t[k];
        if (tf->expert_dim != 1) continue;
        const size_t per = tf->numel / (tf->shape[0] * tf->shape[1]);
        if (tp->shape[1] != 2 || tp->numel != tf->shape[0] * 2 * per) bad = 1.0;
        for (size_t l = 0; l < tf->shape[0]; l++)
            for (size_t i = 0; i < 2; i++)
                if (memcmp(full.params + tf->offset + (l * tf->shape[1] + 2 + i) * per,
                           part.params + tp->offset + (l * 2 + i) * per, per * sizeof(float)) != 0)
                    bad = 1.0;
    }
    REPORT("split init: experts [2,4) bit-identical slices", bad, 1.0, 0.0);
    /* documented scales: gate and experts' fc 0.02, experts' proj 0.02/sqrt(2L); expert biases 0 */
    static const struct {
        const char *name;
        double sd;
    } want[] = {{"blocks/gate_w", 0.02}, {"blocks/experts_fc_w", 0.02}, {"blocks/experts_proj_w", 0.01},
                {"blocks/shared_fc_w", 0.02}, {"blocks/shared_proj_w", 0.01}, {"blocks/experts_fc_b", 0.0},
                {"blocks/experts_proj_b", 0.0}};
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        const int k = mome_tensor_table_find(&full.table, want[w].name);
        if (k < 0) {
            fprintf(stderr, "%s:%d: tensor %s missing\n", __FILE__, __LINE__, want[w].name);
            failures++;
            continue;
        }
        const mome_tensor_info *ti = &full.table.t[k];
        const float *p = full.params + ti->offset;
        double s2 = 0.0;
        for (size_t i = 0; i < ti->numel; i++) s2 += (double)p[i] * p[i];
        const double sd = sqrt(s2 / (double)ti->numel);
        char label[96];
        snprintf(label, sizeof label, "init std %s", ti->name);
        if (want[w].sd > 0)
            REPORT(label, fabs(sd - want[w].sd), want[w].sd, 4.0 / sqrt(2.0 * (double)ti->numel));
        else
            REPORT(label, sd, 1.0, 0.0);
    }
    /* distinct experts get distinct values */
    {
        const mome_tensor_info *ti = &full.table.t[mome_tensor_table_find(&full.table, "blocks/experts_fc_w")];
        const size_t per = ti->shape[2] * ti->shape[3];
        REPORT("init: experts 0 and 1 differ",
               memcmp(full.params + ti->offset, full.params + ti->offset + per, per * sizeof(float)) != 0 ? 0.0
                                                                                                         : 1.0,
               1.0, 0.0);
    }
    /* bad ranges are rejected */
    {
        mome_gpt bad_m;
        const int rc = mome_gpt_init_experts(&bad_m, cfg, 3, 2);
        REPORT("init_experts rejects [3, 5) of 4", rc == MOME_EINVAL ? 0.0 : 1.0, 1.0, 0.0);
        printf("  (message: %s)\n", mome_error_message());
        if (rc == MOME_OK) mome_gpt_free(&bad_m);
    }
    mome_gpt_free(&full);
    mome_gpt_free(&part);
}

int main(void) {
    mome_rng rng;
    mome_rng_seed(&rng, 42);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int32_t)mome_rng_below(&rng, 32);
        targets[i] = (int32_t)mome_rng_below(&rng, 32);
    }
    const mome_gpt_config base = {.vocab_size = 32, .seq_len = T, .n_layer = 2, .n_head = 2, .d_model = 16,
                                  .d_ff = 32, .n_experts = 4, .top_k = 1, .capacity_factor = 1.25f,
                                  .shared_d_ff = 0, .aux_coef = 0.1f, .z_coef = 0.01f};
    check_model(&base, "top1-cap1.25", 11);
    mome_gpt_config c2 = base;
    c2.top_k = 2;
    c2.capacity_factor = 0.0f;
    c2.shared_d_ff = 24;
    check_model(&c2, "top2-dropless-shared", 12);
    check_init_split(&c2);

    /* config checks */
    {
        mome_gpt_config bad = base;
        bad.top_k = 5;
        REPORT("config check rejects top_k > E", mome_gpt_config_check(&bad) == MOME_ECONFIG ? 0.0 : 1.0, 1.0, 0.0);
        printf("  (message: %s)\n", mome_error_message());
        bad = base;
        bad.capacity_factor = -1.0f;
        REPORT("config check rejects capacity_factor < 0",
               mome_gpt_config_check(&bad) == MOME_ECONFIG ? 0.0 : 1.0, 1.0, 0.0);
    }

    return check_summary("test_model_moe");
}
