/* bench.c — `mome bench` (bench.h): throughput of the fixed benchmark model, its MFU against the machine's
 * measured sgemm rate, and the peak resident memory.
 *
 * FLOPs per token are mome_gpt_flops_per_token (model.c, where the formula is written down): the matrix
 * products of the active weights plus causal attention; a training step counts 3x the forward.
 */
#include "mome/bench.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/kd.h"
#include "mome/model.h"
#include "mome/optim.h"
#include "mome/parallel.h"
#include "mome/rng.h"

void mome_bench_defaults(mome_bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->vocab = 4096;
    o->seq_len = 256;
    o->batch = 8;
    o->d_model = 256;
    o->n_layer = 4;
    o->n_head = 4;
    o->n_experts = 4;
    o->top_k = 1;
    o->t_d_model = 384;
    o->t_n_layer = 6;
    o->t_n_head = 6;
    o->steps = 10;
    o->warmup = 2;
    o->student = 1;
    o->teacher = 1;
    o->seed = 1;
}

double mome_bench_sgemm_gflops(double seconds) {
    const int n = 2048;
    const size_t nn = (size_t)n * n;
    float *a = mome_malloc(nn * sizeof(float)), *b = mome_malloc(nn * sizeof(float));
    float *c = mome_malloc(nn * sizeof(float));
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)(i % 13) * 1e-3f;
        b[i] = (float)(i % 7) * 1e-3f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm up */
    double best = 0.0;
    const double t_end = mome_now() + seconds;
    do {
        const double t0 = mome_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        const double dt = mome_now() - t0;
        if (dt > 0 && 2.0 * n * (double)nn / dt > best) best = 2.0 * n * (double)nn / dt;
    } while (mome_now() < t_end);
    mome_free(a);
    mome_free(b);
    mome_free(c);
    return best / 1e9;
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* kilobytes on Linux */
}

static long minor_faults(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static int threads_now(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Phases of the student step, seconds summed over the timed steps. */
enum { PH_FORWARD, PH_LOSS, PH_BACKWARD, PH_REDUCE, PH_OPTIM, PH_N };
static const char *phase_name[PH_N] = {"forward", "loss", "backward", "grad_allreduce", "optimizer"};

int mome_bench_run(const mome_bench_opts *o, MPI_Comm comm, FILE *out) {
    int rank, world;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &world);
    if (o->batch % world != 0)
        return mome_error_set(MOME_EINVAL, "bench: batch %d is not divisible by the %d ranks", o->batch, world);
    if (o->n_experts > 0 && o->n_experts < world)
        return mome_error_set(MOME_EINVAL, "bench: %d experts cannot be spread over %d ranks", o->n_experts, world);
    if (o->steps < 1 || o->warmup < 0)
        return mome_error_set(MOME_EINVAL, "bench: need steps >= 1 and warmup >= 0");
    const int V = o->vocab, T = o->seq_len, Bl = o->batch / world;
    const size_t BT = (size_t)Bl * (size_t)T;

    mome_gpt_config tc = {.vocab_size = V, .seq_len = T, .n_layer = o->t_n_layer, .n_head = o->t_n_head,
                          .d_model = o->t_d_model, .d_ff = 4 * o->t_d_model};
    mome_gpt_config sc = {.vocab_size = V, .seq_len = T, .n_layer = o->n_layer, .n_head = o->n_head,
                          .d_model = o->d_model, .d_ff = 4 * o->d_model, .n_experts = o->n_experts,
                          .top_k = o->n_experts > 0 ? o->top_k : 0, .capacity_factor = 0.0f, .aux_coef = 0.01f};
    int rc = mome_gpt_config_check(&tc);
    if (rc == MOME_OK) rc = mome_gpt_config_check(&sc);
    if (rc) return rc;

    /* The same random batch on every world size: sequence b of the global batch is drawn from stream b. */
    int32_t *inp = mome_malloc(BT * sizeof *inp), *tgt = mome_malloc(BT * sizeof *tgt);
    for (int b = 0; b < Bl; b++) {
        mome_rng r;
        mome_rng_stream(&r, o->seed, 0xbe7c, (uint64_t)(rank * Bl + b));
        for (int t = 0; t <= T; t++) {
            const int32_t tok = (int32_t)(mome_rng_below(&r, (uint64_t)V));
            if (t < T) inp[(size_t)b * T + t] = tok;
            if (t > 0) tgt[(size_t)b * T + t - 1] = tok;
        }
    }

    /* Teacher: its logits on this batch are the student's KD targets; then the timed inference. */
    mome_gpt teacher;
    rc = mome_gpt_init(&teacher, &tc);
    if (rc == MOME_OK) mome_gpt_set_inference(&teacher);
    if (rc == MOME_OK) rc = mome_gpt_reserve(&teacher, Bl, T);
    if (rc) return rc;
    mome_gpt_init_weights(&teacher, o->seed + 1);
    mome_gpt_forward(&teacher, inp, Bl, T);
    float *teacher_logits = mome_malloc(BT * (size_t)V * sizeof(float));
    memcpy(teacher_logits, teacher.logits, BT * (size_t)V * sizeof(float));
    double teacher_s = 0.0;
    if (o->teacher) {
        for (int i = 0; i < o->warmup; i++) mome_gpt_forward(&teacher, inp, Bl, T);
        MPI_Barrier(comm);
        const double t0 = mome_now();
        for (int i = 0; i < o->steps; i++) mome_gpt_forward(&teacher, inp, Bl, T);
        double dt = mome_now() - t0;
        MPI_Allreduce(&dt, &teacher_s, 1, MPI_DOUBLE, MPI_MAX, comm); /* the batch is done when the last rank is */
        teacher_s /= o->steps;
    }
    mome_gpt_free(&teacher);

    double student_s = 0.0, phase[PH_N] = {0}, last_loss = 0.0;
    long faults = 0; /* page faults during the timed student steps: memory first touched (allocated) in a step */
    double kernel_s[MOME_PROF_N] = {0};
    if (o->student) {
        mome_parallel par;
        rc = mome_parallel_init(&par, comm, 0, sc.n_experts);
        if (rc) return rc;
        mome_gpt m;
        rc = mome_gpt_init_experts(&m, &sc, par.expert_first, par.expert_count);
        if (rc) return rc;
        mome_gpt_init_weights(&m, o->seed);
        if (sc.n_experts > 0 && world > 1) mome_gpt_set_parallel(&m, comm, &par.dispatch);
        double prof[MOME_PROF_N] = {0};
        rc = mome_gpt_reserve(&m, Bl, T);
        mome_adamw opt;
        const mome_adamw_config oc = {.lr = 1e-4f, .min_lr = 1e-4f, .warmup_steps = 0, .total_steps = 1 << 30,
                                      .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                                      .grad_clip = 1.0f};
        if (rc == MOME_OK) rc = mome_adamw_init(&opt, &oc, m.table.total);
        if (rc) return rc;
        const float grad_scale = 1.0f / ((float)o->batch * (float)T);
        for (int it = 0; it < o->warmup + o->steps; it++) {
            const int timed = it >= o->warmup;
            if (it == o->warmup) {
                MPI_Barrier(comm);
                faults = minor_faults();
                if (o->profile) m.prof = prof;
            }
            double t[PH_N + 1];
            t[0] = mome_now();
            mome_gpt_zero_grad(&m);
            mome_gpt_forward(&m, inp, Bl, T);
            t[1] = mome_now();
            mome_kd_sums ks;
            double loss = mome_kd_full_forward_backward(m.logits, &ks, teacher_logits, tgt, BT, V, MOME_KD_FORWARD,
                                                        2.0f, 0.5f, 0.5f, grad_scale);
            t[2] = mome_now();
            mome_gpt_backward_ex(&m, inp, Bl, T, 1.0f);
            t[3] = mome_now();
            rc = mome_parallel_allreduce_grads(&par, m.grads, m.n_dense, m.table.total);
            if (rc) MOME_FATAL("bench: %s", mome_error_message());
            const double gnorm = mome_parallel_grad_norm(&par, m.grads, m.n_dense, m.table.total);
            t[4] = mome_now();
            const float clip = gnorm > oc.grad_clip ? (float)(oc.grad_clip / (gnorm + 1e-6)) : 1.0f;
            mome_adamw_update(&opt, &m.table, m.params, m.grads, oc.lr, clip);
            t[5] = mome_now();
            if (timed)
                for (int p = 0; p < PH_N; p++) phase[p] += t[p + 1] - t[p];
            last_loss = loss;
        }
        faults = minor_faults() - faults;
        if (o->profile) memcpy(kernel_s, prof, sizeof prof);
        double dt = 0.0;
        for (int p = 0; p < PH_N; p++) dt += phase[p];
        MPI_Allreduce(&dt, &student_s, 1, MPI_DOUBLE, MPI_MAX, comm);
        student_s /= o->steps;
        MPI_Allreduce(MPI_IN_PLACE, &last_loss, 1, MPI_DOUBLE, MPI_SUM, comm);
        mome_adamw_free(&opt);
        mome_gpt_free(&m);
        mome_parallel_free(&par);
    }
    mome_free(teacher_logits);
    mome_free(inp);
    mome_free(tgt);

    /* Every rank measures sgemm at once with its own threads: the sum is the machine's rate for this layout. */
    MPI_Barrier(comm);
    double sg = mome_bench_sgemm_gflops(1.0), sg_sum = 0.0;
    MPI_Allreduce(&sg, &sg_sum, 1, MPI_DOUBLE, MPI_SUM, comm);
    double rss = peak_rss_mb(), rss_max = 0.0, rss_sum = 0.0;
    MPI_Allreduce(&rss, &rss_max, 1, MPI_DOUBLE, MPI_MAX, comm);
    MPI_Allreduce(&rss, &rss_sum, 1, MPI_DOUBLE, MPI_SUM, comm);
    if (!isfinite(last_loss)) return mome_error_set(MOME_ENONFINITE, "bench: the student loss is not finite");
    if (rank != 0) return MOME_OK;

    const double tokens = (double)o->batch * T;
    const double s_fpt = 3.0 * mome_gpt_flops_per_token(&sc, T), t_fpt = mome_gpt_flops_per_token(&tc, T);
    const double s_tok = o->student ? tokens / student_s : 0.0, t_tok = o->teacher ? tokens / teacher_s : 0.0;
    if (o->student && o->teacher)
        fprintf(out, "student_train_tok_s=%.0f teacher_infer_tok_s=%.0f\n", s_tok, t_tok);
    else if (o->student)
        fprintf(out, "student_train_tok_s=%.0f\n", s_tok);
    else
        fprintf(out, "teacher_infer_tok_s=%.0f\n", t_tok);
    fprintf(out, "sgemm_gflops=%.1f\n", sg_sum);
    if (o->student) {
        fprintf(out, "student_step_s=%.4f student_flop_per_token=%.4g student_gflops=%.1f student_mfu=%.3f\n",
                student_s, s_fpt, s_tok * s_fpt / 1e9, s_tok * s_fpt / 1e9 / sg_sum);
    }
    if (o->teacher) {
        fprintf(out, "teacher_forward_s=%.4f teacher_flop_per_token=%.4g teacher_gflops=%.1f teacher_mfu=%.3f\n",
                teacher_s, t_fpt, t_tok * t_fpt / 1e9, t_tok * t_fpt / 1e9 / sg_sum);
    }
    if (o->student) /* the mean KD + CE loss per token of the last step: the same for any layout of ranks */
        fprintf(out, "student_loss=%.6f after %d steps\n", last_loss / tokens, o->warmup + o->steps);
    fprintf(out, "peak_rss_mb=%.1f", rss_max);
    if (world > 1) fprintf(out, " peak_rss_mb_all_ranks=%.1f", rss_sum);
    fprintf(out, "\nranks=%d threads=%d batch=%d seq_len=%d vocab=%d\n", world, threads_now(), o->batch, T, V);
    if (o->profile && o->student) {
        fprintf(out, "page_faults_per_step=%.1f (rank 0)\n", (double)faults / o->steps);
        fprintf(out, "profile (rank 0, seconds per student step):");
        for (int p = 0; p < PH_N; p++) fprintf(out, " %s=%.4f", phase_name[p], phase[p] / o->steps);
        fprintf(out, "\nkernels (rank 0, seconds per student step, forward + backward):");
        for (int k = 0; k < MOME_PROF_N; k++) fprintf(out, " %s=%.4f", mome_prof_names[k], kernel_s[k] / o->steps);
        fprintf(out, "\n");
    }
    return MOME_OK;
}
