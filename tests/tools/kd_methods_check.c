/* kd_methods_check.c — the MoE-teacher distillation methods (distill.h, kd.method) across placements, run by
 * tests/scripts/kd_methods.sh under mpirun with 2 ranks.
 *
 * Rank 0 writes a small MoE teacher checkpoint (4 experts, top-2, capacity 1.25) into DIR/teacher. Every rank
 * draws the same global micro-batches (world * BL sequences) and takes its slice, as train.c does
 * (first_sample = mb * world * BL + rank * BL). Then:
 *  - ka (M = 2, lambda 0.5), full logits and top-6: the coordinator and each placements give every rank the same
 *    targets (bit for bit) for two micro-batches, and the same KD loss; a third distiller, on one process over the
 *    whole global micro-batch (MPI_COMM_SELF, rank 0), gives rank 0's targets too;
 *  - sar: three router steps with the coordinator and with each give the same router losses and the same gate
 *    (within SAR_TOL relative: the gate gradient is summed over the ranks in one and over all tokens at once in
 *    the other, so it differs by float rounding), the same targets after the steps; under each the two ranks'
 *    gates stay identical (bit for bit); mome_distill_router_state_set installs rank 0's state on every rank.
 * Prints each measured difference; exits 1 on any failure (on every rank).
 *
 * Usage: mpirun -np 2 kd_methods_check DIR
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/config.h"
#include "mome/distill.h"
#include "mome/model.h"
#include "mome/rng.h"

#include "teacher.h"

#define HASH "0123456789abcdef"
#define TV 32
#define TMAX 16
#define SEQ 8
#define BL 2
#define SAR_TOL 1e-5

static int rank = 0, world = 1, failures = 0;

static void check(int ok, const char *what, double value, double tol) {
    if (rank == 0) printf("%-70s %.3e (tol %.1e)  %s\n", what, value, tol, ok ? "ok" : "FAIL");
    failures += !ok;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double e = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        e = isnan(d) ? INFINITY : fmax(e, d);
    }
    return e;
}

static double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}

/* The largest value of x over the ranks. */
static double all_max(double x) {
    MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return x;
}

static void write_teacher(const char *dir) {
    mome_gpt_config mc = {.vocab_size = TV, .seq_len = TMAX, .n_layer = 2, .n_head = 2, .d_model = 16, .d_ff = 24,
                          .n_experts = 4, .top_k = 2, .capacity_factor = 1.25f};
    const mome_config c = teacher_config(&mc);
    mome_gpt m;
    MOME_CHECK(mome_gpt_init(&m, &mc) == MOME_OK, "%s", mome_error_message());
    mome_gpt_init_weights(&m, 31);
    const char *scaled[] = {"blocks/gate_w", "blocks/experts_proj_w"}; /* peaked routing that shows in the logits */
    const float by[] = {30.0f, 8.0f};
    for (int s = 0; s < 2; s++) {
        const int gi = mome_tensor_table_find(&m.table, scaled[s]);
        for (size_t i = 0; i < m.table.t[gi].numel; i++) m.params[m.table.t[gi].offset + i] *= by[s];
    }
    MOME_CHECK(teacher_save(dir, &c, &m, HASH) == MOME_OK, "%s", mome_error_message());
    mome_gpt_free(&m);
}

static mome_config cfg_of(const char *teacher, const char *method, const char *placement, int topk) {
    mome_config c;
    mome_config_defaults(&c);
    snprintf(c.teacher.checkpoint, sizeof c.teacher.checkpoint, "%s", teacher);
    snprintf(c.teacher.placement, sizeof c.teacher.placement, "%s", placement);
    snprintf(c.kd.method, sizeof c.kd.method, "%s", method);
    c.kd.teacher_topk = topk;
    c.kd.temperature = 2.0f;
    c.kd.ka_passes = 2;
    c.kd.ka_lambda = 0.5f;
    c.kd.sar_lr = 1e-2f;
    c.kd.sar_aux_coef = 0.1f;
    return c;
}

static void init_or_die(mome_distiller *d, const mome_config *c, int B, MPI_Comm comm) {
    if (mome_distill_init(d, c, HASH, TV, B, SEQ, comm) != MOME_OK) {
        fprintf(stderr, "rank %d: distill init: %s\n", rank, mome_error_message());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

static void ok_or_die(int rc, const char *what) {
    if (rc != MOME_OK) {
        fprintf(stderr, "rank %d: %s: %s\n", rank, what, mome_error_message());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (argc != 2) {
        if (rank == 0) fprintf(stderr, "usage: mpirun -np 2 %s DIR\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    char dir[MOME_CFG_STR];
    snprintf(dir, sizeof dir, "%.200s/teacher", argv[1]);
    if (rank == 0) write_teacher(dir);
    MPI_Barrier(MPI_COMM_WORLD);

    const int Bg = BL * world, MB = 2;
    const size_t rows = (size_t)BL * SEQ, grows = (size_t)Bg * SEQ;
    /* the global micro-batches, the same on every rank; rank r's slice starts at sequence r * BL */
    int32_t *ginp = mome_malloc((size_t)MB * grows * sizeof *ginp), *gtgt = mome_malloc((size_t)MB * grows * 4);
    float *gz = mome_malloc((size_t)MB * grows * TV * sizeof *gz);
    mome_rng rng;
    mome_rng_seed(&rng, 99);
    for (size_t i = 0; i < (size_t)MB * grows; i++) {
        ginp[i] = (int32_t)mome_rng_below(&rng, TV);
        gtgt[i] = (int32_t)mome_rng_below(&rng, TV);
    }
    for (size_t i = 0; i < (size_t)MB * grows * TV; i++) gz[i] = 2.0f * mome_rng_normal(&rng);
#define INP(mb) (ginp + (size_t)(mb) * grows + (size_t)rank * rows)
#define TGT(mb) (gtgt + (size_t)(mb) * grows + (size_t)rank * rows)
#define STU(mb) (gz + ((size_t)(mb) * grows + (size_t)rank * rows) * TV)
#define FIRST(mb) ((uint64_t)(mb) * (uint64_t)Bg + (uint64_t)rank * BL)

    float *g1 = mome_malloc(rows * TV * sizeof *g1), *g2 = mome_malloc(rows * TV * sizeof *g2);
    /* ---- ka: coordinator vs each vs one process */
    for (int topk = 0; topk <= 6; topk += 6) {
        mome_distiller dc, de, d1;
        mome_config cc = cfg_of(dir, "ka", "coordinator", topk), ce = cfg_of(dir, "ka", "each", topk);
        init_or_die(&dc, &cc, BL, MPI_COMM_WORLD);
        init_or_die(&de, &ce, BL, MPI_COMM_WORLD);
        if (rank == 0) init_or_die(&d1, &ce, Bg, MPI_COMM_SELF);
        const int M = dc.passes;
        const size_t per = topk ? rows * (size_t)topk : rows * TV; /* floats (or ids) of one pass */
        for (int mb = 0; mb < MB; mb++) {
            ok_or_die(mome_distill_targets(&dc, INP(mb), FIRST(mb)), "ka targets (coordinator)");
            ok_or_die(mome_distill_targets(&de, INP(mb), FIRST(mb)), "ka targets (each)");
            double diff = 0.0, diff1 = 0.0;
            if (topk) {
                diff = memcmp(dc.tk_ids, de.tk_ids, (size_t)M * per * sizeof(int32_t)) != 0 ? INFINITY : 0.0;
                diff = fmax(diff, max_diff(dc.tk_logp, de.tk_logp, (size_t)M * per));
                diff = fmax(diff, max_diff(dc.tk_tail, de.tk_tail, (size_t)M * rows));
            } else {
                diff = max_diff(dc.logits, de.logits, (size_t)M * per);
            }
            if (rank == 0) {
                /* one process, the whole global micro-batch: rank 0's slice is its first BL sequences */
                ok_or_die(mome_distill_targets(&d1, ginp + (size_t)mb * grows, (uint64_t)mb * (uint64_t)Bg),
                          "ka targets (one process)");
                for (int m = 0; m < M; m++) {
                    const size_t at1 = (size_t)m * grows * (topk ? (size_t)topk : TV);
                    if (topk)
                        diff1 = fmax(diff1, max_diff(d1.tk_logp + at1, dc.tk_logp + (size_t)m * per, per));
                    else
                        diff1 = fmax(diff1, max_diff(d1.logits + at1, dc.logits + (size_t)m * per, per));
                }
            }
            char what[128];
            snprintf(what, sizeof what, "ka M=2 %s, micro-batch %d: coordinator vs each, max target difference",
                     topk ? "top-6" : "full", mb);
            diff = all_max(diff);
            check(diff == 0.0, what, diff, 0.0);
            snprintf(what, sizeof what, "ka M=2 %s, micro-batch %d: one process vs rank 0's coordinator targets",
                     topk ? "top-6" : "full", mb);
            diff1 = all_max(diff1);
            check(diff1 == 0.0, what, diff1, 0.0);
            mome_kd_sums sc, se;
            memcpy(g1, STU(mb), rows * TV * sizeof *g1);
            memcpy(g2, STU(mb), rows * TV * sizeof *g2);
            double lc = mome_distill_loss(&dc, g1, &sc, TGT(mb), 0.5f, 0.5f, 1.0f / (float)grows);
            double le = mome_distill_loss(&de, g2, &se, TGT(mb), 0.5f, 0.5f, 1.0f / (float)grows);
            MPI_Allreduce(MPI_IN_PLACE, &lc, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
            MPI_Allreduce(MPI_IN_PLACE, &le, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
            snprintf(what, sizeof what, "ka M=2 %s, micro-batch %d: KD+CE loss %.6f, coordinator vs each",
                     topk ? "top-6" : "full", mb, lc);
            check(lc == le, what, fabs(lc - le), 0.0);
        }
        if (rank == 0) printf("    coordinator sent %zu bytes per micro-batch (%d passes)\n", dc.bytes_sent, M);
        mome_distill_free(&dc);
        mome_distill_free(&de);
        if (rank == 0) mome_distill_free(&d1);
    }

    /* ---- sar: coordinator vs each */
    {
        mome_distiller dc, de;
        mome_config cc = cfg_of(dir, "sar", "coordinator", 0), ce = cfg_of(dir, "sar", "each", 0);
        init_or_die(&dc, &cc, BL, MPI_COMM_WORLD);
        init_or_die(&de, &ce, BL, MPI_COMM_WORLD);
        const size_t n = de.gate_n;
        float *gc = mome_malloc(n * sizeof *gc), *ge = mome_malloc(n * sizeof *ge), *other = mome_malloc(n * 4);
        float *m_ = mome_malloc(n * sizeof *m_), *v_ = mome_malloc(n * sizeof *v_);
        int64_t step = 0;
        double worst = 0.0;
        for (int s = 0; s < 3; s++) {
            const int mb = s % MB;
            double lc = NAN, le = NAN;
            ok_or_die(mome_distill_router_step(&dc, INP(mb), STU(mb), FIRST(mb), &lc), "router step (coordinator)");
            ok_or_die(mome_distill_router_step(&de, INP(mb), STU(mb), FIRST(mb), &le), "router step (each)");
            const double rel = fabs(lc - le) / fabs(lc);
            worst = fmax(worst, rel);
            if (rank == 0)
                printf("    router step %d: loss coordinator %.9f, each %.9f (KL %.6f, balance %.6f)\n", s + 1, lc, le,
                       dc.sar_kl, dc.sar_aux);
        }
        check(worst <= SAR_TOL, "sar: router loss of 3 steps, coordinator vs each (relative)", worst, SAR_TOL);
        /* each: both ranks hold the same gate */
        ok_or_die(mome_distill_router_state_get(&de, ge, m_, v_, &step), "router state (each)");
        if (rank == 1) MPI_Send(ge, (int)n, MPI_FLOAT, 0, 7, MPI_COMM_WORLD);
        double same = 0.0, gd = 0.0, scale = 1.0;
        if (rank == 0) {
            MPI_Recv(other, (int)n, MPI_FLOAT, 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            same = memcmp(other, ge, n * sizeof *ge) == 0 ? 0.0 : max_diff(other, ge, n);
            ok_or_die(mome_distill_router_state_get(&dc, gc, m_, v_, &step), "router state (coordinator)");
            gd = max_diff(gc, ge, n);
            scale = max_abs(gc, n);
        }
        same = all_max(same);
        check(same == 0.0, "sar each: rank 0 and rank 1 hold the same gate after 3 steps", same, 0.0);
        gd = all_max(gd / scale);
        check(gd <= SAR_TOL, "sar: gate after 3 steps, coordinator vs each (relative to max |gate|)", gd, SAR_TOL);
        /* the targets of the updated teachers */
        ok_or_die(mome_distill_targets(&dc, INP(0), FIRST(0)), "sar targets (coordinator)");
        ok_or_die(mome_distill_targets(&de, INP(0), FIRST(0)), "sar targets (each)");
        double td = all_max(max_diff(dc.logits, de.logits, rows * TV) / max_abs(de.logits, rows * TV));
        check(td <= SAR_TOL, "sar: targets after 3 steps, coordinator vs each (relative)", td, SAR_TOL);
        /* state set: rank 0's coordinator state installed on both ranks of each */
        int64_t cstep = 0;
        if (rank == 0) ok_or_die(mome_distill_router_state_get(&dc, gc, m_, v_, &cstep), "router state");
        ok_or_die(mome_distill_router_state_set(&de, rank == 0 ? gc : NULL, rank == 0 ? m_ : NULL,
                                                rank == 0 ? v_ : NULL, cstep),
                  "router state set (each)");
        ok_or_die(mome_distill_router_state_get(&de, ge, m_, v_, &step), "router state (each)");
        MPI_Bcast(gc, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
        const double sd = all_max(memcmp(gc, ge, n * sizeof *gc) == 0 && step == 3 ? 0.0 : 1.0);
        check(sd == 0.0, "sar: router state set installs rank 0's gate and step on every rank", sd, 0.0);
        mome_free(gc);
        mome_free(ge);
        mome_free(other);
        mome_free(m_);
        mome_free(v_);
        mome_distill_free(&dc);
        mome_distill_free(&de);
    }
    mome_free(g1);
    mome_free(g2);
    mome_free(ginp);
    mome_free(gtgt);
    mome_free(gz);
    MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("kd_methods_check: %s (%d failure(s))\n", failures ? "FAIL" : "ok", failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
