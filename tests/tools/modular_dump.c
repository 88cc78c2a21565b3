/* modular_dump.c — writes a small modular student (modular.h), one batch with per-sequence routes, its logits,
 * loss and every gradient to HDF5, once with a common trunk and once without, for tests/python/modular_check.py
 * to recompute with PyTorch.
 *
 * Usage: modular_dump OUT.h5
 * Layout, for each variant v in {common, plain}:
 *   v/config   int64 [V, T, C, NH, F, E, L, common, B]
 *   v/params/<name>, v/grads/<name>  float32 in table shape ("wte", "common/qkv_w" (L,3C,C),
 *                                    "experts/qkv_w" (E,L,3C,C), ...)
 *   v/inputs, v/targets  int32 (B, T);  v/routes int32 (B): expert per sequence, -1 = mean of all experts
 *   v/logits float32 (B, T, V);  v/loss float64 (1,) mean cross-entropy
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dump.h"
#include "mome/common.h"
#include "mome/loss.h"
#include "mome/modular.h"
#include "mome/rng.h"

static void variant(const char *v, int common) {
    const mome_modular_config cfg = {.vocab_size = 48, .seq_len = 12, .d_model = 32, .n_head = 4, .d_ff = 64,
                                     .n_experts = 3, .trunk_layers = 2, .common = common};
    enum { B = 5, T = 12 };
    mome_modular m;
    if (mome_modular_init(&m, &cfg) || mome_modular_reserve(&m, B, T)) dump_die(mome_error_message(), v);
    mome_modular_init_weights(&m, 77);
    mome_rng r;
    mome_rng_stream(&r, 78, 0, 0);
    for (size_t i = 0; i < m.table.total; i++) m.params[i] += 0.05f * mome_rng_normal(&r);
    int32_t inputs[B * T], targets[B * T];
    const int32_t routes[B] = {2, 0, -1, 1, 0};
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int32_t)mome_rng_below(&r, (uint64_t)cfg.vocab_size);
        targets[i] = (int32_t)mome_rng_below(&r, (uint64_t)cfg.vocab_size);
    }
    char name[128];
    snprintf(name, sizeof name, "%s/params", v);
    dump_tensors(name, &m.table, m.params);
    mome_modular_zero_grad(&m);
    mome_modular_forward(&m, inputs, routes, B, T);
    const size_t n = (size_t)B * T * (size_t)cfg.vocab_size;
    float *logits = mome_malloc(n * sizeof(float));
    memcpy(logits, m.logits, n * sizeof(float));
    size_t valid = 0;
    const double loss = mome_xent_forward_backward(m.logits, targets, (size_t)B * T, cfg.vocab_size,
                                                   1.0f / (B * T), &valid) / (double)valid;
    mome_modular_backward(&m, inputs, routes, B, T);
    snprintf(name, sizeof name, "%s/grads", v);
    dump_tensors(name, &m.table, m.grads);
    const int64_t conf[9] = {cfg.vocab_size, T, cfg.d_model, cfg.n_head, cfg.d_ff, cfg.n_experts, cfg.trunk_layers,
                             common, B};
    const hsize_t d9[1] = {9}, dbt[2] = {B, T}, db[1] = {B}, dl[3] = {B, T, (hsize_t)cfg.vocab_size}, d1[1] = {1};
    snprintf(name, sizeof name, "%s/config", v);
    dump_write(name, H5T_NATIVE_INT64, 1, d9, conf);
    snprintf(name, sizeof name, "%s/inputs", v);
    dump_write(name, H5T_NATIVE_INT32, 2, dbt, inputs);
    snprintf(name, sizeof name, "%s/targets", v);
    dump_write(name, H5T_NATIVE_INT32, 2, dbt, targets);
    snprintf(name, sizeof name, "%s/routes", v);
    dump_write(name, H5T_NATIVE_INT32, 1, db, routes);
    snprintf(name, sizeof name, "%s/logits", v);
    dump_write(name, H5T_NATIVE_FLOAT, 3, dl, logits);
    snprintf(name, sizeof name, "%s/loss", v);
    dump_write(name, H5T_NATIVE_DOUBLE, 1, d1, &loss);
    mome_free(logits);
    mome_modular_free(&m);
}

int main(int argc, char **argv) {
    dump_tool = "modular_dump";
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT.h5\n", argv[0]);
        return 2;
    }
    dump_file = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (dump_file < 0) dump_die("H5Fcreate", argv[1]);
    variant("common", 1);
    variant("plain", 0);
    H5Fclose(dump_file);
    return 0;
}
