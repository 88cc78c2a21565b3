/* gpt_dump.c — writes a small GPT, one batch, its logits, loss and every gradient, and 10 AdamW steps to an
 * HDF5 file, for tests/python/torch_check.py to recompute independently with PyTorch.
 *
 * Usage: gpt_dump OUT.h5
 * Layout (all readable with h5py):
 *   config        int64 [V, T_max, L, NH, C, F, B, T, n_steps]
 *   optim         float64 [lr, min_lr, warmup_steps, total_steps, beta1, beta2, eps, weight_decay, grad_clip]
 *   params/<name> float32, the initial parameters, shapes as in the tensor table ("wte", "blocks/qkv_w", ...)
 *   decay/<name>  int64 scalar-like (1,): 1 when weight decay applies
 *   inputs, targets  int32 (B, T)
 *   logits        float32 (B, T, V) of the initial parameters
 *   loss          float64 (1,) mean cross-entropy
 *   grads/<name>  float32, d(loss)/d(param) at the initial parameters
 *   train/loss, train/lr, train/grad_norm  float64 (n_steps,): per step, before its update
 *   final_params/<name>  float32 after n_steps AdamW updates on the same batch
 * Plain HDF5 calls (dump.h, no h5io) so this tool stays independent of the checkpoint code.
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump.h"
#include "mome/common.h"
#include "mome/loss.h"
#include "mome/model.h"
#include "mome/optim.h"
#include "mome/rng.h"

#define NSTEPS 10

int main(int argc, char **argv) {
    dump_tool = "gpt_dump";
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT.h5\n", argv[0]);
        return 2;
    }
    const mome_gpt_config cfg = {.vocab_size = 64, .seq_len = 16, .n_layer = 2, .n_head = 4, .d_model = 32,
                                 .d_ff = 128};
    const int B = 3, T = 16;
    mome_gpt m;
    if (mome_gpt_init(&m, &cfg) || mome_gpt_reserve(&m, B, T)) {
        fprintf(stderr, "gpt_dump: %s\n", mome_error_message());
        return 1;
    }
    /* GPT-2 init, then a perturbation so biases and LayerNorm parameters are not trivially 0 / 1 and the
     * logits are far from uniform: every gradient then carries information. */
    mome_gpt_init_weights(&m, 1337);
    mome_rng rng;
    mome_rng_seed(&rng, 2024);
    for (size_t i = 0; i < m.table.total; i++) m.params[i] += 0.1f * mome_rng_normal(&rng);

    const size_t BT = (size_t)B * T;
    int32_t *inputs = mome_malloc(BT * sizeof *inputs), *targets = mome_malloc(BT * sizeof *targets);
    for (size_t i = 0; i < BT; i++) {
        inputs[i] = (int32_t)mome_rng_below(&rng, (uint64_t)cfg.vocab_size);
        targets[i] = (int32_t)mome_rng_below(&rng, (uint64_t)cfg.vocab_size);
    }

    const mome_adamw_config oc = {.lr = 1e-3f, .min_lr = 1e-4f, .warmup_steps = 2, .total_steps = NSTEPS,
                                  .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                                  .grad_clip = 1.0f};
    mome_adamw opt;
    if (mome_adamw_init(&opt, &oc, m.table.total)) {
        fprintf(stderr, "gpt_dump: %s\n", mome_error_message());
        return 1;
    }

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    dump_file = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (dump_file < 0) dump_die("H5Fcreate", argv[1]);

    const int64_t conf[9] = {cfg.vocab_size, cfg.seq_len, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_ff, B, T,
                             NSTEPS};
    hsize_t d1 = 9;
    dump_write("config", H5T_NATIVE_INT64, 1, &d1, conf);
    const double oarr[9] = {oc.lr, oc.min_lr, oc.warmup_steps, oc.total_steps, oc.beta1, oc.beta2, oc.eps,
                            oc.weight_decay, oc.grad_clip};
    dump_write("optim", H5T_NATIVE_DOUBLE, 1, &d1, oarr);
    dump_tensors("params", &m.table, m.params);
    for (int k = 0; k < m.table.n; k++) {
        char name[160];
        snprintf(name, sizeof name, "decay/%s", m.table.t[k].name);
        const int64_t dec = m.table.t[k].decay;
        hsize_t one = 1;
        dump_write(name, H5T_NATIVE_INT64, 1, &one, &dec);
    }
    hsize_t dbt[2] = {(hsize_t)B, (hsize_t)T};
    dump_write("inputs", H5T_NATIVE_INT32, 2, dbt, inputs);
    dump_write("targets", H5T_NATIVE_INT32, 2, dbt, targets);

    double losses[NSTEPS], lrs[NSTEPS], norms[NSTEPS];
    for (int step = 0; step < NSTEPS; step++) {
        mome_gpt_zero_grad(&m);
        mome_gpt_forward(&m, inputs, B, T);
        if (step == 0) {
            hsize_t dl[3] = {(hsize_t)B, (hsize_t)T, (hsize_t)cfg.vocab_size};
            dump_write("logits", H5T_NATIVE_FLOAT, 3, dl, m.logits);
        }
        size_t nv = 0;
        const double sum = mome_xent_forward_backward(m.logits, targets, BT, cfg.vocab_size, 1.0f / (float)BT, &nv);
        losses[step] = sum / (double)nv;
        mome_gpt_backward(&m, inputs, B, T);
        if (step == 0) {
            hsize_t one = 1;
            dump_write("loss", H5T_NATIVE_DOUBLE, 1, &one, &losses[0]);
            dump_tensors("grads", &m.table, m.grads);
        }
        norms[step] = mome_grad_norm(m.grads, m.table.total);
        /* the clip factor of torch.nn.utils.clip_grad_norm_ */
        float scale = 1.0f;
        if (oc.grad_clip > 0.0f) {
            const double coef = oc.grad_clip / (norms[step] + 1e-6);
            if (coef < 1.0) scale = (float)coef;
        }
        lrs[step] = mome_lr_at(&oc, step);
        mome_adamw_update(&opt, &m.table, m.params, m.grads, (float)lrs[step], scale);
        printf("step %2d  loss %.6f  lr %.3e  grad norm %.4f  clip %.4f\n", step, losses[step], lrs[step],
               norms[step], (double)scale);
    }
    hsize_t dn = NSTEPS;
    dump_write("train/loss", H5T_NATIVE_DOUBLE, 1, &dn, losses);
    dump_write("train/lr", H5T_NATIVE_DOUBLE, 1, &dn, lrs);
    dump_write("train/grad_norm", H5T_NATIVE_DOUBLE, 1, &dn, norms);
    dump_tensors("final_params", &m.table, m.params);
    if (H5Fclose(dump_file) < 0) dump_die("H5Fclose", argv[1]);

    mome_adamw_free(&opt);
    mome_free(inputs);
    mome_free(targets);
    mome_gpt_free(&m);
    printf("gpt_dump: wrote %s\n", argv[1]);
    return 0;
}
