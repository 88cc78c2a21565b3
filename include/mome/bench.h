/* bench.h — `mome bench`: the fixed benchmark model on random tokens (docs/performance.md).
 *
 * Student: an MoE GPT trained for a few steps against fixed teacher logits (forward, fused KD + CE, backward with
 * the Switch load-balancing loss, gradient all-reduce, AdamW). Teacher: a dense GPT, inference only. Both on the
 * same random batch. Under MPI the global batch is split over the ranks (batch must be divisible by the world
 * size) and the student's experts are spread over all ranks (expert parallelism over the world).
 */
#ifndef MOME_BENCH_H
#define MOME_BENCH_H

#include <mpi.h>
#include <stdio.h>

typedef struct {
    int vocab, seq_len, batch;                 /* global batch of `batch` sequences of seq_len tokens */
    int d_model, n_layer, n_head, n_experts;   /* student; n_experts 0: a dense student */
    int top_k;                                 /* experts per token */
    int t_d_model, t_n_layer, t_n_head;        /* teacher (dense) */
    int steps, warmup;                         /* timed and untimed iterations of each part */
    int student, teacher;                      /* which parts run */
    int profile;                               /* also time the phases of the student step */
    unsigned long long seed;
} mome_bench_opts;

/* The benchmark of the performance issue: V 4096, T 256, B 8; student d256 L4 H4 with 4 experts top-1; teacher
 * d384 L6 H6; 10 timed steps after 2 untimed ones; both parts. */
void mome_bench_defaults(mome_bench_opts *o);

/* Runs the benchmark, collective over comm; rank 0 prints the results to out as key=value lines, the first
 * being "student_train_tok_s=N teacher_infer_tok_s=M". Returns MOME_OK or an error (bad sizes) with a message,
 * the same on every rank. */
int mome_bench_run(const mome_bench_opts *o, MPI_Comm comm, FILE *out);

/* The machine's matrix-multiply rate: GFLOP/s of single-precision square sgemm (n = 2048) with the current
 * OpenBLAS thread count, the best of repeated calls over about `seconds`. */
double mome_bench_sgemm_gflops(double seconds);

#endif
