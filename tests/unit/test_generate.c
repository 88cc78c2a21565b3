/* test_generate.c — the student's own continuations for on-policy distillation (mome_generate_rows):
 *  - the prefix of every row is left as it was, and only ids in [0, V) are written;
 *  - at temperature 0, each row's continuation is the greedy one `mome generate` (mome_generate) produces from the
 *    row's prefix alone: batching rows together changes nothing;
 *  - a row's samples do not depend on the other rows: row b of a batch equals the same row generated alone with
 *    row_base + b;
 *  - at temperature 1, the first sampled token follows the model's softmax: over 6000 counters, the frequencies
 *    of the 8 likeliest tokens are within 4.5 standard deviations of their probabilities (one computed here from
 *    the logits of a separate forward) and the total variation distance is below 0.05;
 *  - rows cannot be continued from position 0 or beyond T (an error, nothing written);
 *  - the key/value cache the rows are sampled with (mome_gpt_kv): after a prefill of FROM positions, each step's
 *    logits equal those of a full forward over the sequence so far at its last position, for a dense model and
 *    an MoE model (top-2 of 4 experts, dropless); with a capacity factor of 0.5 (1 row per expert for the 3 rows
 *    of a step, 6 assignments) the steps drop nothing, while the full forwards in between still drop. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "mome/model.h"
#include "mome/rng.h"
#include "mome/train.h"

enum { V = 32, B = 3, T = 12, FROM = 5 };

/* The largest |step logit - full-forward logit| over positions FROM..T-1 of B random rows, relative to the largest
 * |logit|: m decodes with its cache, a copy with the same weights runs full forwards. An MoE model also counts
 * the assignments its layers dropped in the steps and in the full forwards. */
static double kv_error(const mome_gpt_config *cfg, size_t *step_dropped, size_t *full_dropped) {
    mome_gpt m, ref;
    CHECK_RC(mome_gpt_init(&m, cfg), MOME_OK);
    CHECK_RC(mome_gpt_init(&ref, cfg), MOME_OK);
    mome_gpt_init_weights(&m, 7);
    memcpy(ref.params, m.params, m.table.total * sizeof(float));
    CHECK_RC(mome_gpt_reserve(&m, B, T), MOME_OK);
    CHECK_RC(mome_gpt_reserve(&ref, B, T), MOME_OK);
    int32_t rows[B * T], packed[B * T], tok[B];
    float step[B * V];
    mome_rng r;
    mome_rng_stream(&r, 17, 0, 0);
    for (int i = 0; i < B * T; i++) rows[i] = (int32_t)mome_rng_below(&r, V);
    mome_gpt_kv *kv = mome_gpt_kv_new(&m, B, T);
    CHECK(kv != NULL);
    for (int b = 0; b < B; b++) memcpy(packed + b * FROM, rows + b * T, FROM * sizeof *packed);
    mome_gpt_kv_prefill(&m, kv, packed, FROM);
    double worst = 0.0, big = 0.0;
    for (int t = FROM; t < T; t++) {
        for (int b = 0; b < B; b++) tok[b] = rows[b * T + t];
        mome_gpt_kv_step(&m, kv, tok);
        memcpy(step, m.logits, sizeof step);
        for (int b = 0; b < B; b++) memcpy(packed + b * (t + 1), rows + b * T, (size_t)(t + 1) * sizeof *packed);
        mome_gpt_forward(&ref, packed, B, t + 1);
        for (int l = 0; cfg->n_experts > 0 && l < cfg->n_layer; l++) {
            *step_dropped += mome_gpt_moe_layer(&m, l)->stats.n_dropped;
            *full_dropped += mome_gpt_moe_layer(&ref, l)->stats.n_dropped;
        }
        for (int b = 0; b < B; b++)
            for (int v = 0; v < V; v++) {
                const double want = ref.logits[((size_t)b * (t + 1) + t) * V + v];
                worst = fmax(worst, fabs((double)step[b * V + v] - want));
                big = fmax(big, fabs(want));
            }
    }
    mome_gpt_kv_free(kv);
    mome_gpt_free(&ref);
    mome_gpt_free(&m);
    return worst / big;
}

int main(void) {
    const mome_gpt_config cfg = {.vocab_size = V, .seq_len = T, .n_layer = 2, .n_head = 2, .d_model = 16, .d_ff = 32};
    mome_gpt m;
    CHECK_RC(mome_gpt_init(&m, &cfg), MOME_OK);
    /* Weights 3x the default init: a distribution neither uniform nor one-hot, which sampling can get wrong. */
    mome_gpt_init_weights(&m, 11);
    for (size_t i = 0; i < m.table.total; i++) m.params[i] *= 3.0f;
    CHECK_RC(mome_gpt_reserve(&m, B, T), MOME_OK);

    int32_t rows[B * T], orig[B * T];
    mome_rng r;
    mome_rng_stream(&r, 5, 0, 0);
    for (int i = 0; i < B * T; i++) orig[i] = (int32_t)mome_rng_below(&r, V);

    /* Temperature 0: the greedy continuation of each prefix, as mome_generate gives it. */
    memcpy(rows, orig, sizeof rows);
    CHECK_RC(mome_generate_rows(&m, rows, B, T, FROM, 0.0f, 1, 2, 0), MOME_OK);
    int prefix_kept = 1, in_range = 1, greedy_same = 1;
    for (int b = 0; b < B; b++) {
        const int32_t *row = rows + b * T;
        prefix_kept &= memcmp(row, orig + b * T, FROM * sizeof *row) == 0;
        for (int t = 0; t < T; t++) in_range &= row[t] >= 0 && row[t] < V;
        int32_t alone[T];
        int n = mome_generate(&m, orig + b * T, FROM, T - FROM, 0.0f, 0, 0, alone);
        CHECK(n >= 1 && n <= T - FROM);
        /* mome_generate stops after an end-of-document token; compare what it wrote. */
        for (int i = 0; i < n; i++) greedy_same &= alone[i] == row[FROM + i];
    }
    CHECK(prefix_kept);
    CHECK(in_range);
    CHECK(greedy_same);
    printf("greedy: %d rows continued from position %d equal mome_generate on each prefix alone\n", B, FROM);

    /* A row's samples do not depend on the other rows of the batch. */
    memcpy(rows, orig, sizeof rows);
    CHECK_RC(mome_generate_rows(&m, rows, B, T, FROM, 1.0f, 9, 4, 100), MOME_OK);
    int independent = 1;
    for (int b = 0; b < B; b++) {
        int32_t one[T];
        memcpy(one, orig + b * T, sizeof one);
        CHECK_RC(mome_generate_rows(&m, one, 1, T, FROM, 1.0f, 9, 4, 100 + (uint64_t)b), MOME_OK);
        independent &= memcmp(one, rows + b * T, sizeof one) == 0;
    }
    CHECK(independent);
    printf("sampling: each row of a batch of %d equals the row generated alone\n", B);

    /* Temperature 1: the first sampled token follows the softmax of the last prefix position. */
    enum { DRAWS = 6000 };
    mome_gpt_forward(&m, orig, 1, FROM);
    double p[V], mx = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++) mx = fmax(mx, (double)m.logits[(FROM - 1) * V + v]);
    for (int v = 0; v < V; v++) sum += p[v] = exp((double)m.logits[(FROM - 1) * V + v] - mx);
    for (int v = 0; v < V; v++) p[v] /= sum;
    double count[V] = {0};
    for (int c = 0; c < DRAWS; c++) {
        int32_t one[FROM + 1];
        memcpy(one, orig, sizeof one);
        CHECK_RC(mome_generate_rows(&m, one, 1, FROM + 1, FROM, 1.0f, 3, (uint64_t)c, 0), MOME_OK);
        count[one[FROM]] += 1.0;
    }
    double worst_sd = 0.0, tv = 0.0;
    int order[V];
    for (int v = 0; v < V; v++) order[v] = v;
    for (int i = 0; i < V; i++) /* likeliest first */
        for (int j = i + 1; j < V; j++)
            if (p[order[j]] > p[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    for (int i = 0; i < 8; i++) {
        const int v = order[i];
        const double sd = sqrt(p[v] * (1.0 - p[v]) / DRAWS);
        worst_sd = fmax(worst_sd, fabs(count[v] / DRAWS - p[v]) / sd);
    }
    for (int v = 0; v < V; v++) tv += 0.5 * fabs(count[v] / DRAWS - p[v]);
    printf("sampling at temperature 1: top token p %.3f, frequencies within %.2f sd of the softmax (8 likeliest), "
           "total variation %.4f over %d draws\n",
           p[order[0]], worst_sd, tv, DRAWS);
    CHECK(p[order[0]] < 0.9); /* a distribution that sampling can get wrong */
    CHECK(worst_sd < 4.5);
    CHECK(tv < 0.05);

    /* The key/value cache against full forwards. */
    const mome_gpt_config moe = {.vocab_size = V, .seq_len = T, .n_layer = 2, .n_head = 2, .d_model = 16, .d_ff = 24,
                                 .n_experts = 4, .top_k = 2};
    mome_gpt_config moe_cap = moe;
    moe_cap.capacity_factor = 0.5f;
    size_t step_dropped = 0, full_dropped = 0, cap_step_dropped = 0, cap_full_dropped = 0;
    const double e_dense = kv_error(&cfg, &step_dropped, &full_dropped);
    const double e_moe = kv_error(&moe, &step_dropped, &full_dropped);
    kv_error(&moe_cap, &cap_step_dropped, &cap_full_dropped);
    printf("kv cache: relative logit error of the steps vs full forwards: dense %.2e, MoE %.2e; capacity factor 0.5: "
           "%zu assignments dropped in the steps, %zu in the full forwards\n", e_dense, e_moe, cap_step_dropped,
           cap_full_dropped);
    CHECK(e_dense < 1e-5);
    CHECK(e_moe < 1e-5);
    CHECK(step_dropped == 0 && full_dropped == 0);
    CHECK(cap_step_dropped == 0);
    CHECK(cap_full_dropped > 0); /* the capacity is back in force after each step */

    memcpy(rows, orig, sizeof rows);
    CHECK_RC(mome_generate_rows(&m, rows, B, T, 0, 1.0f, 1, 1, 0), MOME_EINVAL);
    CHECK_RC(mome_generate_rows(&m, rows, B, T, T + 1, 1.0f, 1, 1, 0), MOME_EINVAL);
    CHECK(memcmp(rows, orig, sizeof rows) == 0);
    mome_gpt_free(&m);
    return failures ? 1 : 0;
}
