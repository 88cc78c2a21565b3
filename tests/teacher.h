/* teacher.h — a small GPT teacher written as a real checkpoint, for the checks of the distillation methods
 * (test_kd_methods, kd_methods_check, kd_methods_dump): mome_distill_init then loads it as training does. */
#ifndef MOME_TEST_TEACHER_H
#define MOME_TEST_TEACHER_H

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/config.h"
#include "mome/model.h"

/* The configuration the checkpoint records: the defaults, with [model] and [moe] of the model mc describes (a dense
 * one keeps the default top_k, as [moe] needs top_k >= 1); mc takes the default aux and z coefficients. */
static inline mome_config teacher_config(mome_gpt_config *mc) {
    mome_config c;
    mome_config_defaults(&c);
    c.model.vocab_size = mc->vocab_size;
    c.model.seq_len = mc->seq_len;
    c.model.n_layer = mc->n_layer;
    c.model.n_head = mc->n_head;
    c.model.d_model = mc->d_model;
    c.model.d_ff = mc->d_ff;
    c.moe.n_experts = mc->n_experts;
    if (mc->n_experts > 0) c.moe.top_k = mc->top_k;
    c.moe.capacity_factor = mc->capacity_factor;
    c.moe.shared_d_ff = mc->shared_d_ff;
    mc->aux_coef = c.moe.aux_coef;
    mc->z_coef = c.moe.z_coef;
    return c;
}

/* Saves m, configured by c, into dir as the step-1 checkpoint of a one-process run with tokenizer hash `hash`.
 * Returns a mome status. */
static inline int teacher_save(const char *dir, const mome_config *c, const mome_gpt *m, const char *hash) {
    char *text = mome_config_to_string(c);
    const uint64_t rs[4] = {1, 2, 3, 4}, cur = 0;
    const mome_ckpt_save_args a = {.step = 1, .world_size = 1, .config_text = text, .tokenizer_hash = hash,
                                   .model_kind = "gpt", .table = &m->table, .params = m->params, .n_streams = 1,
                                   .rng_states = rs, .data_cursors = &cur};
    const int rc = mome_ckpt_save(dir, &a, 0, NULL, 0);
    mome_free(text);
    return rc;
}

#endif
