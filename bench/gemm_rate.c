/* gemm_rate — mome_gemm against OpenBLAS's cblas_sgemm at the student benchmark's product shapes, same threads.
 *
 *   build/gemm_rate [--threads N] [--reps R]
 *
 * Per shape (M N K and the transposes, as the model calls them) it times both in turn, best of 5 rounds of R calls
 * on the same operands (warm caches: the products' own rate, not the step's), and prints GFLOP/s for each and their
 * largest difference relative to the largest |C|. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/gemm.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    int reps = 50;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
#ifdef _OPENMP
            omp_set_num_threads(atoi(argv[++i]));
#else
            ++i;
#endif
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: gemm_rate [--threads N] [--reps R]\n");
            return 2;
        }
    }
    /* M N K ta tb: an expert (512 of 2048 tokens) forward, d(input), d(weight); attention projections; the head */
    static const int shapes[][5] = {
        {512, 1024, 256, 0, 1},  {512, 256, 1024, 0, 1}, {512, 256, 1024, 0, 0},  {512, 1024, 256, 0, 0},
        {256, 1024, 512, 1, 0},  {1024, 256, 512, 1, 0}, {2048, 768, 256, 0, 1},  {2048, 256, 768, 0, 0},
        {768, 256, 2048, 1, 0},  {2048, 4096, 256, 0, 1}, {2048, 256, 4096, 0, 0}, {4096, 256, 2048, 1, 0},
    };
    printf("native kernel: %s\n", mome_gemm_native() ? "yes" : "no (mome_gemm is cblas_sgemm)");
    printf("%6s %6s %6s %s  %10s %10s  %s\n", "M", "N", "K", "op", "openblas", "mome_gemm", "max rel diff");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], ta = shapes[s][3], tb = shapes[s][4];
        const int lda = ta ? M : K, ldb = tb ? K : N;
        float *A = malloc((size_t)M * K * sizeof *A), *B = malloc((size_t)K * N * sizeof *B);
        float *C0 = malloc((size_t)M * N * sizeof *C0), *C1 = malloc((size_t)M * N * sizeof *C1);
        if (!A || !B || !C0 || !C1) return 1;
        srand(1);
        for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
        for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
        double best[2] = {INFINITY, INFINITY};
        for (int round = 0; round < 5; round++)
            for (int w = 0; w < 2; w++) {
                const double t0 = now();
                for (int r = 0; r < reps; r++) {
                    if (w == 0)
                        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                                    N, K, 1.0f, A, lda, B, ldb, 0.0f, C0, N);
                    else
                        mome_gemm(ta, tb, M, N, K, A, lda, B, ldb, NULL, 0.0f, C1, N);
                }
                const double t = (now() - t0) / reps;
                if (t < best[w]) best[w] = t;
            }
        double diff = 0.0, scale = 0.0;
        for (size_t i = 0; i < (size_t)M * N; i++) {
            diff = fmax(diff, fabs((double)C0[i] - C1[i]));
            scale = fmax(scale, fabs((double)C0[i]));
        }
        const double flop = 2.0 * M * N * K;
        printf("%6d %6d %6d %c%c  %10.1f %10.1f  %.1e\n", M, N, K, ta ? 'T' : 'N', tb ? 'T' : 'N',
               flop / best[0] / 1e9, flop / best[1] / 1e9, diff / scale);
        free(A), free(B), free(C0), free(C1);
    }
    mome_gemm_release();
    return 0;
}
