/* kd_methods_dump.c — runs the MoE-teacher distillation methods of kd.method (distill.h: topk, all, ka, sar) on a
 * small MoE teacher and a small dense student and writes everything to HDF5, for tests/python/kd_methods_check.py
 * to recompute independently with PyTorch.
 *
 * Usage: kd_methods_dump OUT.h5 WORKDIR
 * The teacher (V 48, 2 layers, 8 experts, top-2, capacity factor 1, a shared expert; real model code, random
 * init with a fixed seed, gate and experts scaled so routing shows in the logits) is written as a checkpoint into
 * WORKDIR/teacher and driven through the distill.c API itself (mome_distill_init on MPI_COMM_SELF, one process,
 * placement each), exactly as training would: mome_distill_targets, mome_distill_loss, and for sar
 * mome_distill_router_loss / mome_distill_router_step before the targets. One micro-batch (B 3 x T 8, global
 * micro-batch index MB) of random tokens; the student's logits come from its forward on it. Cases:
 *   topk  the teacher routes as trained (TOPK, capacity);         all  gate mode ALL;
 *   ka0   ka, lambda 0, n = E - 1 (default), M = 1;               ka   ka, lambda 0.5, n = E - 1, M = 2;
 *   sar   ALL, one router step (lr SAR_LR, aux coef SAR_AUX) against the fixed student, then the targets.
 * each with forward and reverse KL and with full logits and top-TOPK targets (one distiller per combination).
 * The chosen experts of ka are read back by replaying every pass on the distiller's teacher in the gate mode
 * mome_distill_gate_mode gives (the replayed logits are checked bit-identical to the targets), so torch, which
 * cannot replay mome's RNG, can reuse them.
 * Layout (all readable with h5py):
 *   config/teacher  int64 [V, T_max, L, NH, C, F, E, top_k, Fs, B, T];  config/student int64 [V, T_max, L, NH, C, F]
 *   coefs           float64 [capacity_factor, temperature, alpha, grad_scale, sar_lr, sar_aux_coef, beta1, beta2,
 *                   eps, tail_floor, topk]      (float32 values widened; alpha is the CE weight, 1 - alpha the KD)
 *   teacher/params/<name>, student/params/<name>  float32, every tensor in its table shape
 *   inputs, targets int32 (B, T) (targets -1 on every 5th position);  student_logits float32 (B*T, V)
 *   <case>/info     float64 [passes M, slots per token k, ka_lambda]
 *   <case>/teacher_logits  float32 (M, B*T, V)  the full targets of each pass (not for sar: per direction)
 *   <case>/experts  int32 (M, L, B*T, k)  chosen experts per pass, layer, token, slot (topk, ka0, ka)
 *   <case>/kept     int32 (M, L, B*T, k)  1 kept / 0 dropped by capacity (topk)
 *   <case>/<dir>/<fmt>/sums  float64 [loss, ce_sum, kl_sum, n_valid, n_kd] of mome_distill_loss (grad_scale 1/N)
 *   <case>/<dir>/<fmt>/grad  float32 (B*T, V) the student's logits gradient     dir forward|reverse, fmt full|topk
 *   <case>/<dir>/topk/ids int32 (M, B*T, k), logp float32 (M, B*T, k), tail float32 (M, B*T)  the top-k targets
 *   sar/<dir>/router  float64 [router loss (mome_distill_router_loss), router loss (router_step), KL part, balance]
 *   sar/<dir>/load    float64 (L, E) the top_k fractions f_e of the balance term
 *   sar/<dir>/gate_grad, gate_after  float32 (L, E, C): dL_router/d gate_w, and gate_w after the AdamW step
 *   sar/<dir>/teacher_logits  float32 (1, B*T, V) the full targets of the updated teacher
 * Plain HDF5 calls (dump.h) so this tool stays independent of the checkpoint reader.
 */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump.h"
#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/config.h"
#include "mome/distill.h"
#include "mome/kd.h"
#include "mome/model.h"
#include "mome/rng.h"
#include "teacher.h"

#define HASH "0123456789abcdef"
#define V 48
#define TMAX 16
#define SEQ 8        /* T of the micro-batch */
#define BATCH 3      /* sequences of the micro-batch */
#define NL 2         /* layers of both models */
#define NHEAD 2
#define TC 16        /* teacher width, expert hidden size, experts, top_k, shared expert */
#define TF 24
#define TE 8
#define TK 2
#define TFS 8
#define CAPACITY 1.0f
#define SC 16        /* student width and MLP */
#define SF 32
#define TOPK 6       /* kd.teacher_topk of the top-k cases */
#define TEMP 2.0f
#define ALPHA 0.3f
#define SAR_LR 1e-2f
#define SAR_AUX 0.01f
#define MB 5         /* global micro-batch index of the batch (ka counters MB * M + pass) */

#define NROWS ((size_t)BATCH * SEQ)

static void die_rc(int rc, const char *what) {
    if (rc != MOME_OK) {
        fprintf(stderr, "kd_methods_dump: %s: %s\n", what, mome_error_message());
        if (dump_file >= 0) H5Fclose(dump_file);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

static void perturb(mome_gpt *m, mome_rng *rng, float sigma) {
    for (size_t i = 0; i < m->table.total; i++) m->params[i] += sigma * mome_rng_normal(rng);
}

static void scale_tensor(mome_gpt *m, const char *name, float by) {
    const int gi = mome_tensor_table_find(&m->table, name);
    MOME_CHECK(gi >= 0, "no tensor %s", name);
    for (size_t i = 0; i < m->table.t[gi].numel; i++) m->params[m->table.t[gi].offset + i] *= by;
}

/* The teacher as a checkpoint in dir, and its parameters under teacher/params. */
static void write_teacher(const char *dir) {
    mome_gpt_config mc = {.vocab_size = V, .seq_len = TMAX, .n_layer = NL, .n_head = NHEAD, .d_model = TC, .d_ff = TF,
                          .n_experts = TE, .top_k = TK, .capacity_factor = CAPACITY, .shared_d_ff = TFS};
    const mome_config c = teacher_config(&mc);
    mome_gpt m;
    die_rc(mome_gpt_init(&m, &mc), "teacher init");
    mome_gpt_init_weights(&m, 4242);
    /* biases and LayerNorms away from 0 / 1, logits far from uniform, a gate sharp enough that routing matters
     * but soft enough that ka's draws often leave the top n, experts that differ visibly in the output */
    mome_rng rng;
    mome_rng_seed(&rng, 4243);
    perturb(&m, &rng, 0.05f);
    scale_tensor(&m, "wte", 8.0f);
    scale_tensor(&m, "blocks/gate_w", 12.0f);
    scale_tensor(&m, "blocks/experts_proj_w", 8.0f);
    die_rc(teacher_save(dir, &c, &m, HASH), "teacher checkpoint");
    const int64_t conf[11] = {V, TMAX, NL, NHEAD, TC, TF, TE, TK, TFS, BATCH, SEQ};
    const hsize_t d11 = 11;
    dump_write("config/teacher", H5T_NATIVE_INT64, 1, &d11, conf);
    dump_tensors("teacher/params", &m.table, m.params);
    mome_gpt_free(&m);
}

static mome_config cfg_of(const char *teacher, const char *method, int passes, float lambda, int reverse, int topk) {
    mome_config c;
    mome_config_defaults(&c);
    snprintf(c.teacher.checkpoint, sizeof c.teacher.checkpoint, "%s", teacher);
    snprintf(c.teacher.placement, sizeof c.teacher.placement, "each");
    snprintf(c.kd.method, sizeof c.kd.method, "%s", method);
    snprintf(c.kd.direction, sizeof c.kd.direction, "%s", reverse ? "reverse" : "forward");
    c.kd.teacher_topk = topk;
    c.kd.temperature = TEMP;
    c.kd.alpha = ALPHA;
    c.kd.ka_passes = passes;
    c.kd.ka_lambda = lambda;
    c.kd.ka_n = 0; /* E - 1 */
    c.kd.sar_lr = SAR_LR;
    c.kd.sar_aux_coef = SAR_AUX;
    return c;
}

/* The chosen experts (and kept flags) of every layer of the teacher's last forward, into experts/kept (L, N, k). */
static void read_plans(const mome_gpt *t, int32_t *experts, int32_t *kept, int k) {
    for (int l = 0; l < NL; l++) {
        const mome_moe *moe = mome_gpt_moe_layer(t, l);
        MOME_CHECK(moe && moe->plan.N == NROWS && moe->plan.k == k, "layer %d: plan of %zu tokens x %d slots", l,
                   moe ? moe->plan.N : 0, moe ? moe->plan.k : 0);
        for (size_t i = 0; i < NROWS * (size_t)k; i++) {
            experts[(size_t)l * NROWS * (size_t)k + i] = moe->plan.expert[i];
            if (kept) kept[(size_t)l * NROWS * (size_t)k + i] = moe->plan.pos[i] >= 0;
        }
    }
}

typedef struct {
    const char *name, *method;
    int passes;
    float lambda;
} dump_case;

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    dump_tool = "kd_methods_dump";
    if (argc != 3) {
        fprintf(stderr, "usage: %s OUT.h5 WORKDIR\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    char tdir[MOME_CFG_STR];
    snprintf(tdir, sizeof tdir, "%.200s/teacher", argv[2]);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    dump_file = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (dump_file < 0) dump_die("H5Fcreate", argv[1]);
    write_teacher(tdir);

    /* the student: a dense GPT of another width */
    const mome_gpt_config sc = {.vocab_size = V, .seq_len = TMAX, .n_layer = NL, .n_head = NHEAD, .d_model = SC,
                                .d_ff = SF};
    mome_gpt st;
    die_rc(mome_gpt_init(&st, &sc), "student init");
    die_rc(mome_gpt_reserve(&st, BATCH, SEQ), "student reserve");
    mome_gpt_init_weights(&st, 77);
    mome_rng rng;
    mome_rng_seed(&rng, 78);
    perturb(&st, &rng, 0.05f);
    scale_tensor(&st, "wte", 6.0f);
    const int64_t sconf[6] = {V, TMAX, NL, NHEAD, SC, SF};
    const hsize_t d6 = 6;
    dump_write("config/student", H5T_NATIVE_INT64, 1, &d6, sconf);
    dump_tensors("student/params", &st.table, st.params);

    int32_t inp[NROWS], tgt[NROWS];
    for (size_t i = 0; i < NROWS; i++) {
        inp[i] = (int32_t)mome_rng_below(&rng, V);
        tgt[i] = i % 5 == 4 ? -1 : (int32_t)mome_rng_below(&rng, V);
    }
    const hsize_t dbt[2] = {BATCH, SEQ};
    dump_write("inputs", H5T_NATIVE_INT32, 2, dbt, inp);
    dump_write("targets", H5T_NATIVE_INT32, 2, dbt, tgt);
    mome_gpt_forward(&st, inp, BATCH, SEQ);
    float *z = mome_malloc(NROWS * V * sizeof *z), *g = mome_malloc(NROWS * V * sizeof *g);
    memcpy(z, st.logits, NROWS * V * sizeof *z);
    const hsize_t dnv[2] = {NROWS, V};
    dump_write("student_logits", H5T_NATIVE_FLOAT, 2, dnv, z);

    mome_config c0;
    mome_config_defaults(&c0);
    const float grad_scale = 1.0f / (float)NROWS;
    const double coefs[11] = {CAPACITY, TEMP,           ALPHA,         grad_scale,         SAR_LR, SAR_AUX,
                              c0.train.beta1, c0.train.beta2, c0.train.eps, MOME_KD_TAIL_FLOOR, TOPK};
    const hsize_t d11 = 11;
    dump_write("coefs", H5T_NATIVE_DOUBLE, 1, &d11, coefs);

    const dump_case cases[] = {{"topk", "topk", 1, 0.0f},
                               {"all", "all", 1, 0.0f},
                               {"ka0", "ka", 1, 0.0f},
                               {"ka", "ka", 2, 0.5f},
                               {"sar", "sar", 1, 0.0f}};
    const uint64_t first = (uint64_t)MB * BATCH; /* one process: the micro-batch's first global sample */
    const size_t gate_n = (size_t)NL * TE * TC;
    float *gate_full = mome_malloc(gate_n * sizeof(float)), *gate_other = mome_malloc(gate_n * sizeof(float));
    float *grad_gate = mome_malloc(gate_n * sizeof(float));
    float *am = mome_malloc(gate_n * sizeof(float)), *av = mome_malloc(gate_n * sizeof(float));
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const dump_case *cs = &cases[ci];
        const int sar = strcmp(cs->method, "sar") == 0, ka = strcmp(cs->method, "ka") == 0;
        const int M = cs->passes;
        for (int dir = 0; dir < 2; dir++)
            for (int fmt = 0; fmt < 2; fmt++) {
                const int topk = fmt ? TOPK : 0;
                char name[160];
                const char *ds = dir ? "reverse" : "forward", *fs = fmt ? "topk" : "full";
                mome_config c = cfg_of(tdir, cs->method, M, cs->lambda, dir, topk);
                mome_distiller d;
                die_rc(mome_distill_init(&d, &c, HASH, V, BATCH, SEQ, MPI_COMM_SELF), "distill init");
                MOME_CHECK(d.passes == M, "%s: %d passes, expected %d", cs->name, d.passes, M);
                if (sar) {
                    double l0 = NAN, l1 = NAN;
                    die_rc(mome_distill_router_loss(&d, inp, z, first, &l0, grad_gate), "router loss");
                    const double kl = d.sar_kl, bal = d.sar_aux;
                    die_rc(mome_distill_router_step(&d, inp, z, first, &l1), "router step");
                    int64_t steps = 0;
                    die_rc(mome_distill_router_state_get(&d, fmt ? gate_other : gate_full, am, av, &steps),
                           "router state");
                    if (fmt) { /* the top-k distiller took the same step: its targets come from the same teacher */
                        MOME_CHECK(memcmp(gate_other, gate_full, gate_n * sizeof(float)) == 0,
                                   "sar %s: the top-k distiller's router step differs from the full one's", ds);
                    } else {
                        const double router[4] = {l0, l1, kl, bal};
                        const hsize_t d4 = 4, dle[2] = {NL, TE}, dgate[3] = {NL, TE, TC};
                        snprintf(name, sizeof name, "sar/%s/router", ds);
                        dump_write(name, H5T_NATIVE_DOUBLE, 1, &d4, router);
                        snprintf(name, sizeof name, "sar/%s/load", ds);
                        dump_write(name, H5T_NATIVE_DOUBLE, 2, dle, d.sar_load);
                        snprintf(name, sizeof name, "sar/%s/gate_grad", ds);
                        dump_write(name, H5T_NATIVE_FLOAT, 3, dgate, grad_gate);
                        snprintf(name, sizeof name, "sar/%s/gate_after", ds);
                        dump_write(name, H5T_NATIVE_FLOAT, 3, dgate, gate_full);
                        printf("sar %s: router loss %.6f (KL part %.6f, balance %.6f), after the step the loss is "
                               "recomputed as %.6f\n",
                               ds, l0, kl, bal, l1);
                    }
                }
                die_rc(mome_distill_targets(&d, inp, first), "targets");
                const hsize_t dmnv[3] = {(hsize_t)M, NROWS, V};
                if (!fmt && sar) {
                    snprintf(name, sizeof name, "sar/%s/teacher_logits", ds);
                    dump_write(name, H5T_NATIVE_FLOAT, 3, dmnv, d.logits);
                }
                if (!fmt && !sar && dir == 0) {
                    snprintf(name, sizeof name, "%s/teacher_logits", cs->name);
                    dump_write(name, H5T_NATIVE_FLOAT, 3, dmnv, d.logits);
                    const int k = mome_moe_gate_slots(&(mome_moe_config){.n_experts = TE, .top_k = TK}, &d.gate);
                    const double info[3] = {M, k, cs->lambda};
                    const hsize_t d3 = 3;
                    snprintf(name, sizeof name, "%s/info", cs->name);
                    dump_write(name, H5T_NATIVE_DOUBLE, 1, &d3, info);
                    if (strcmp(cs->method, "all") != 0) {
                        const size_t per = (size_t)NL * NROWS * (size_t)k;
                        int32_t *ex = mome_malloc((size_t)M * per * sizeof *ex);
                        int32_t *kept = mome_malloc((size_t)M * per * sizeof *kept);
                        if (ka) { /* replay each pass in its gate mode: pass 0's plans were overwritten by pass 1 */
                            for (int m = 0; m < M; m++) {
                                mome_moe_gate_mode gm;
                                mome_distill_gate_mode(&d, first, m, &gm);
                                die_rc(mome_gpt_set_gate_mode(&d.teacher, &gm), "replay gate mode");
                                mome_gpt_forward(&d.teacher, inp, BATCH, SEQ);
                                MOME_CHECK(memcmp(d.teacher.logits, d.logits + (size_t)m * NROWS * V,
                                                  NROWS * V * sizeof(float)) == 0,
                                           "%s pass %d: the replayed teacher logits differ from the targets",
                                           cs->name, m);
                                read_plans(&d.teacher, ex + (size_t)m * per, NULL, k);
                            }
                        } else {
                            read_plans(&d.teacher, ex, kept, k);
                        }
                        const hsize_t dsets[4] = {(hsize_t)M, NL, NROWS, (hsize_t)k};
                        snprintf(name, sizeof name, "%s/experts", cs->name);
                        dump_write(name, H5T_NATIVE_INT32, 4, dsets, ex);
                        if (!ka) {
                            size_t dropped = 0;
                            for (size_t i = 0; i < per; i++) dropped += !kept[i];
                            printf("topk: %zu of %zu assignments dropped by capacity\n", dropped, per);
                            snprintf(name, sizeof name, "%s/kept", cs->name);
                            dump_write(name, H5T_NATIVE_INT32, 4, dsets, kept);
                        }
                        mome_free(ex);
                        mome_free(kept);
                    }
                }
                if (fmt) {
                    const hsize_t dmnk[3] = {(hsize_t)M, NROWS, TOPK}, dmn[2] = {(hsize_t)M, NROWS};
                    snprintf(name, sizeof name, "%s/%s/topk/ids", cs->name, ds);
                    dump_write(name, H5T_NATIVE_INT32, 3, dmnk, d.tk_ids);
                    snprintf(name, sizeof name, "%s/%s/topk/logp", cs->name, ds);
                    dump_write(name, H5T_NATIVE_FLOAT, 3, dmnk, d.tk_logp);
                    snprintf(name, sizeof name, "%s/%s/topk/tail", cs->name, ds);
                    dump_write(name, H5T_NATIVE_FLOAT, 2, dmn, d.tk_tail);
                }
                memcpy(g, z, NROWS * V * sizeof *g);
                mome_kd_sums s;
                mome_distill_loss(&d, g, &s, tgt, ALPHA, 1.0f - ALPHA, grad_scale);
                const double sums[5] = {s.loss, s.ce_sum, s.kl_sum, (double)s.n_valid, (double)s.n_kd};
                const hsize_t d5 = 5;
                snprintf(name, sizeof name, "%s/%s/%s/sums", cs->name, ds, fs);
                dump_write(name, H5T_NATIVE_DOUBLE, 1, &d5, sums);
                snprintf(name, sizeof name, "%s/%s/%s/grad", cs->name, ds, fs);
                dump_write(name, H5T_NATIVE_FLOAT, 2, dnv, g);
                printf("%-4s %-7s %-4s: M %d, KD+CE loss %.6f (CE sum %.4f over %zu rows, KL sum %.6f)\n", cs->name,
                       ds, fs, M, s.loss * grad_scale, s.ce_sum, s.n_valid, s.kl_sum);
                mome_distill_free(&d);
            }
    }
    if (H5Fclose(dump_file) < 0) dump_die("H5Fclose", argv[1]);
    mome_free(gate_full);
    mome_free(gate_other);
    mome_free(grad_gate);
    mome_free(am);
    mome_free(av);
    mome_free(z);
    mome_free(g);
    mome_gpt_free(&st);
    printf("kd_methods_dump: wrote %s\n", argv[1]);
    MPI_Finalize();
    return 0;
}
