/* moe_dump.c — runs the token-level MoE layer (moe.h) forward and backward on fixed random inputs and writes
 * everything to HDF5, for tests/python/moe_check.py to recompute independently with PyTorch.
 *
 * Usage: moe_dump OUT.h5
 * Two cases, one group each:
 *   top1_cap     top-1, 4 experts, capacity factor 0.75 (drops assignments), no shared expert
 *   top2_shared  top-2, 6 experts, dropless, renormalised weights, with a shared expert
 * Layout per group G (all readable with h5py):
 *   G/config      uint64 [C, E, F, k, Fs, renormalize, N]
 *   G/coefs       float64 [capacity_factor, aux_coef, z_coef, grad_scale]  (capacity_factor as its float32 value)
 *   G/x, G/R      float32 (N, C): input, and the fixed weights of the scalar loss
 *   G/params/<n>  float32: gate_w (E,C), experts_fc_w (E,F,C), experts_fc_b (E,F), experts_proj_w (E,C,F),
 *                 experts_proj_b (E,C), and shared_fc_w (Fs,C), shared_fc_b (Fs), shared_proj_w (C,Fs),
 *                 shared_proj_b (C) when Fs > 0
 *   G/y           float32 (N, C);  G/aux, G/z  float64 (1,)
 *   G/expert      uint32 (N, k) chosen experts;  G/kept  uint32 (N, k) 1 kept / 0 dropped
 *   G/routed, G/counts  uint64 (E);  G/capacity, G/n_dropped  uint64 (1,)
 *   G/grads/x, G/grads/<n>  float32: gradients of  grad_scale * (sum(y*R) + aux_coef*aux + z_coef*z),
 *                 i.e. backward with dy = grad_scale * R.
 */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/h5io.h"
#include "mome/moe.h"
#include "mome/rng.h"

static void check(int rc, const char *what) {
    if (rc) {
        fprintf(stderr, "moe_dump: %s: %s\n", what, mome_error_message());
        exit(1);
    }
}

static void wf32(hid_t g, const char *name, const float *data, int ndim, size_t d0, size_t d1, size_t d2) {
    const hsize_t dims[3] = {d0, d1, d2};
    check(mome_h5_write_f32(g, name, data, ndim, dims), name);
}

static void wu64(hid_t g, const char *name, const size_t *data, size_t n) {
    uint64_t *tmp = mome_malloc(n * sizeof *tmp);
    for (size_t i = 0; i < n; i++) tmp[i] = data[i];
    const hsize_t d = n;
    check(mome_h5_write_u64(g, name, tmp, 1, &d), name);
    mome_free(tmp);
}

/* Runs one case and writes it under group `gname`. */
static void dump_case(hid_t file, const char *gname, const mome_moe_config *cfg, size_t N, float grad_scale,
                      uint64_t seed) {
    mome_rng rng;
    mome_rng_seed(&rng, seed);
    mome_moe m;
    check(mome_moe_init(&m, cfg, N), "mome_moe_init");
    const size_t C = (size_t)cfg->n_embd, E = (size_t)cfg->n_experts, F = (size_t)cfg->d_ff;
    const size_t Fs = (size_t)cfg->shared_d_ff, k = (size_t)cfg->top_k, np = mome_moe_num_params(cfg);
    float *params = mome_malloc(np * sizeof(float)), *grads = mome_calloc(np, sizeof(float));
    mome_moe_params_bind(&m.p, params, cfg);
    mome_moe_params_bind(&m.g, grads, cfg);
    for (size_t i = 0; i < np; i++) params[i] = 0.2f * mome_rng_normal(&rng);
    for (size_t i = 0; i < E * C; i++) m.p.gate_w[i] *= 2.0f; /* a gate sharp enough for clear top-k margins */
    float *x = mome_malloc(N * C * sizeof(float)), *R = mome_malloc(N * C * sizeof(float));
    float *dy = mome_malloc(N * C * sizeof(float)), *y = mome_malloc(N * C * sizeof(float));
    float *dx = mome_calloc(N * C, sizeof(float));
    for (size_t i = 0; i < N * C; i++) x[i] = mome_rng_normal(&rng);
    for (size_t i = 0; i < N * C; i++) R[i] = mome_rng_normal(&rng);
    for (size_t i = 0; i < N * C; i++) dy[i] = grad_scale * R[i];

    mome_moe_forward(&m, y, x, N);
    mome_moe_backward(&m, dx, dy, x, N, grad_scale);
    const mome_moe_plan *pl = &m.plan;
    printf("%s: N %zu C %zu E %zu F %zu k %zu Fs %zu capacity %zu dropped %zu of %zu; aux %.6f z %.6f\n", gname,
           N, C, E, F, k, Fs, pl->capacity, pl->n_dropped, N * k, m.stats.aux_loss, m.stats.z_loss);

    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(file, gname, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) {
        fprintf(stderr, "moe_dump: cannot create group %s\n", gname);
        exit(1);
    }
    const size_t conf[7] = {C, E, F, k, Fs, (size_t)cfg->renormalize, N};
    wu64(g, "config", conf, 7);
    const double coefs[4] = {(double)cfg->capacity_factor, (double)cfg->aux_coef, (double)cfg->z_coef,
                             (double)grad_scale};
    const hsize_t d4 = 4, d1 = 1;
    check(mome_h5_write_f64(g, "coefs", coefs, 1, &d4), "coefs");
    wf32(g, "x", x, 2, N, C, 0);
    wf32(g, "R", R, 2, N, C, 0);
    wf32(g, "y", y, 2, N, C, 0);
    check(mome_h5_write_f64(g, "aux", &m.stats.aux_loss, 1, &d1), "aux");
    check(mome_h5_write_f64(g, "z", &m.stats.z_loss, 1, &d1), "z");
    uint32_t *ex = mome_malloc(N * k * sizeof *ex), *kept = mome_malloc(N * k * sizeof *kept);
    for (size_t i = 0; i < N * k; i++) {
        ex[i] = (uint32_t)pl->expert[i];
        kept[i] = pl->pos[i] >= 0;
    }
    const hsize_t dnk[2] = {N, k};
    check(mome_h5_write_u32(g, "expert", ex, 2, dnk), "expert");
    check(mome_h5_write_u32(g, "kept", kept, 2, dnk), "kept");
    wu64(g, "routed", pl->routed, E);
    wu64(g, "counts", pl->counts, E);
    wu64(g, "capacity", &pl->capacity, 1);
    wu64(g, "n_dropped", &pl->n_dropped, 1);
    wf32(g, "grads/x", dx, 2, N, C, 0);

    const mome_moe_params *views[2] = {&m.p, &m.g};
    const char *prefix[2] = {"params", "grads"};
    for (int v = 0; v < 2; v++) {
        const mome_moe_params *p = views[v];
        char name[96];
#define W(tname, ptr, nd, a, b, c)                                  \
    do {                                                            \
        snprintf(name, sizeof name, "%s/%s", prefix[v], tname);     \
        wf32(g, name, ptr, nd, a, b, c);                            \
    } while (0)
        W("gate_w", p->gate_w, 2, E, C, 0);
        W("experts_fc_w", p->experts_fc_w, 3, E, F, C);
        W("experts_fc_b", p->experts_fc_b, 2, E, F, 0);
        W("experts_proj_w", p->experts_proj_w, 3, E, C, F);
        W("experts_proj_b", p->experts_proj_b, 2, E, C, 0);
        if (Fs > 0) {
            W("shared_fc_w", p->shared_fc_w, 2, Fs, C, 0);
            W("shared_fc_b", p->shared_fc_b, 1, Fs, 0, 0);
            W("shared_proj_w", p->shared_proj_w, 2, C, Fs, 0);
            W("shared_proj_b", p->shared_proj_b, 1, C, 0, 0);
        }
#undef W
    }
    H5Gclose(g);
    mome_free(ex);
    mome_free(kept);
    mome_free(params);
    mome_free(grads);
    mome_free(x);
    mome_free(R);
    mome_free(dy);
    mome_free(y);
    mome_free(dx);
    mome_moe_free(&m);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT.h5\n", argv[0]);
        return 2;
    }
    mome_h5_quiet();
    hid_t file = mome_h5_create(argv[1]);
    if (file < 0) {
        fprintf(stderr, "moe_dump: %s\n", mome_error_message());
        return 1;
    }
    const mome_moe_config top1 = {.n_embd = 32, .n_experts = 4, .d_ff = 48, .top_k = 1, .shared_d_ff = 0,
                                  .renormalize = 1, .capacity_factor = 0.75f, .aux_coef = 0.5f, .z_coef = 0.1f};
    const mome_moe_config top2 = {.n_embd = 32, .n_experts = 6, .d_ff = 40, .top_k = 2, .shared_d_ff = 24,
                                  .renormalize = 1, .capacity_factor = 0.0f, .aux_coef = 0.3f, .z_coef = 0.05f};
    dump_case(file, "top1_cap", &top1, 64, 1.0f, 11);
    dump_case(file, "top2_shared", &top2, 64, 0.5f, 12);
    if (H5Fclose(file) < 0) {
        fprintf(stderr, "moe_dump: closing %s failed\n", argv[1]);
        return 1;
    }
    printf("moe_dump: wrote %s\n", argv[1]);
    return 0;
}
