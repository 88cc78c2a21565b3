/* kd_dump.c — writes random student / teacher logits, targets, the top-k targets built from the teacher, and the
 * fused KD + CE loss parts and gradients for (forward, reverse) x (full, top-k) to an HDF5 file, for
 * tests/python/kd_check.py to recompute with PyTorch autograd.
 *
 * Usage: kd_dump OUT.h5
 * Layout (all readable with h5py):
 *   config        int64 [N, V, k]
 *   params        float64 [T, w_ce, w_kd, grad_scale, tail_floor]
 *   student, teacher  float32 (N, V)      targets int32 (N,), some -1
 *   topk/ids int32 (N, k), topk/logp float32 (N, k), topk/tail float32 (N,)   from mome_kd_topk_build
 *   <case>/sums   float64 [loss, ce_sum, kl_sum, n_valid, n_kd]      case = full_forward, full_reverse,
 *   <case>/grad   float32 (N, V), the overwritten logits             topk_forward, topk_reverse
 * Rows 0 and 1 have a peaked teacher and row 2 a peaked student (tails ~1e-9), the rest are random.
 * Plain HDF5 calls (no h5io dependency), as in gpt_dump.c.
 */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump.h"
#include "mome/common.h"
#include "mome/kd.h"
#include "mome/rng.h"

int main(int argc, char **argv) {
    dump_tool = "kd_dump";
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT.h5\n", argv[0]);
        return 2;
    }
    const size_t N = 24;
    const int V = 40, k = 6;
    const float T = 2.0f, w_ce = 0.3f, w_kd = 0.7f, grad_scale = 1.0f / 24.0f;
    const size_t NV = N * (size_t)V;
    mome_rng rng;
    mome_rng_seed(&rng, 777);
    float *z = mome_malloc(NV * sizeof *z), *t = mome_malloc(NV * sizeof *t), *g = mome_malloc(NV * sizeof *g);
    int32_t *tg = mome_malloc(N * sizeof *tg), *ids = mome_malloc(N * k * sizeof *ids);
    float *lp = mome_malloc(N * k * sizeof *lp), *tail = mome_malloc(N * sizeof *tail);
    for (size_t i = 0; i < NV; i++) {
        z[i] = 2.0f * mome_rng_normal(&rng);
        t[i] = 3.0f * mome_rng_normal(&rng);
    }
    for (int i = 0; i < k; i++) {
        t[0 * V + 5 * i] += 40.0f;
        t[1 * V + 3 * i + 1] += 40.0f;
        z[2 * V + 2 * i] += 40.0f;
    }
    for (size_t i = 0; i < N; i++) tg[i] = i % 4 == 3 ? -1 : (int32_t)mome_rng_below(&rng, (uint64_t)V);
    if (mome_kd_topk_build(ids, lp, tail, t, N, V, k, T) != MOME_OK) {
        fprintf(stderr, "kd_dump: %s\n", mome_error_message());
        return 1;
    }

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    dump_file = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (dump_file < 0) dump_die("H5Fcreate", argv[1]);
    const int64_t conf[3] = {(int64_t)N, V, k};
    hsize_t d3 = 3, d5 = 5, dn = N, dnv[2] = {N, (hsize_t)V}, dnk[2] = {N, (hsize_t)k};
    dump_write("config", H5T_NATIVE_INT64, 1, &d3, conf);
    const double par[5] = {T, w_ce, w_kd, grad_scale, MOME_KD_TAIL_FLOOR};
    dump_write("params", H5T_NATIVE_DOUBLE, 1, &d5, par);
    dump_write("student", H5T_NATIVE_FLOAT, 2, dnv, z);
    dump_write("teacher", H5T_NATIVE_FLOAT, 2, dnv, t);
    dump_write("targets", H5T_NATIVE_INT32, 1, &dn, tg);
    dump_write("topk/ids", H5T_NATIVE_INT32, 2, dnk, ids);
    dump_write("topk/logp", H5T_NATIVE_FLOAT, 2, dnk, lp);
    dump_write("topk/tail", H5T_NATIVE_FLOAT, 1, &dn, tail);

    for (int fmt = 0; fmt < 2; fmt++)
        for (int dir = 0; dir < 2; dir++) {
            memcpy(g, z, NV * sizeof *g);
            mome_kd_sums s;
            if (fmt)
                mome_kd_topk_forward_backward(g, &s, ids, lp, tail, tg, N, V, k, (mome_kd_direction)dir, T, w_ce,
                                              w_kd, grad_scale);
            else
                mome_kd_full_forward_backward(g, &s, t, tg, N, V, (mome_kd_direction)dir, T, w_ce, w_kd,
                                              grad_scale);
            char name[64];
            const char *cs = fmt ? "topk" : "full", *ds = dir ? "reverse" : "forward";
            const double sums[5] = {s.loss, s.ce_sum, s.kl_sum, (double)s.n_valid, (double)s.n_kd};
            snprintf(name, sizeof name, "%s_%s/sums", cs, ds);
            dump_write(name, H5T_NATIVE_DOUBLE, 1, &d5, sums);
            snprintf(name, sizeof name, "%s_%s/grad", cs, ds);
            dump_write(name, H5T_NATIVE_FLOAT, 2, dnv, g);
        }
    if (H5Fclose(dump_file) < 0) dump_die("H5Fclose", argv[1]);
    mome_free(z);
    mome_free(t);
    mome_free(g);
    mome_free(tg);
    mome_free(ids);
    mome_free(lp);
    mome_free(tail);
    printf("kd_dump: wrote %s (N=%zu V=%d k=%d T=%g)\n", argv[1], N, V, k, (double)T);
    return 0;
}
