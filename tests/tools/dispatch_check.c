/* dispatch_check — run under mpirun: every rank sends rows tagged (source rank, expert, index) to random
 * experts; checks that each expert receives exactly its rows, in the documented order, and that the reverse
 * exchange brings every row back to its place. Usage: dispatch_check N_EXPERTS ROWS_PER_RANK SEED */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/dispatch.h"
#include "mome/rng.h"

#define W 5 /* row width: source, expert, index, payload, payload */

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int E = argc > 1 ? atoi(argv[1]) : 4, max_rows = argc > 2 ? atoi(argv[2]) : 100;
    uint64_t seed = argc > 3 ? (uint64_t)atoll(argv[3]) : 1;
    mome_dispatch d;
    int rc = mome_dispatch_init(&d, MPI_COMM_WORLD, E);
    MOME_CHECK(rc == MOME_OK, "init: %s", mome_error_message());
    int failures = 0;
    for (int round = 0; round < 3; round++) {
        /* Each rank draws how many rows go to each expert (some zero), then fills rows grouped by expert. */
        mome_rng rng;
        mome_rng_stream(&rng, seed, (uint64_t)rank, (uint64_t)round);
        int *counts = mome_calloc((size_t)E, sizeof *counts);
        int n = 0;
        for (int e = 0; e < E; e++) {
            counts[e] = mome_rng_below(&rng, 4) == 0 ? 0 : (int)mome_rng_below(&rng, (uint64_t)max_rows + 1);
            n += counts[e];
        }
        float *send = mome_malloc(((size_t)n + 1) * W * sizeof(float));
        int i = 0;
        for (int e = 0; e < E; e++)
            for (int k = 0; k < counts[e]; k++, i++) {
                float *row = send + (size_t)i * W;
                row[0] = (float)rank, row[1] = (float)e, row[2] = (float)k;
                row[3] = mome_rng_uniform(&rng), row[4] = -row[3];
            }
        rc = mome_dispatch_plan(&d, counts);
        MOME_CHECK(rc == MOME_OK, "plan: %s", mome_error_message());
        size_t nr = mome_dispatch_recv_rows(&d);
        float *recv = mome_malloc((nr + 1) * W * sizeof(float)), *scratch = mome_malloc((nr + 1) * W * sizeof(float));
        rc = mome_dispatch_forward(&d, send, recv, scratch, W);
        MOME_CHECK(rc == MOME_OK, "forward: %s", mome_error_message());
        /* Every received row belongs to the expert block it sits in; within a block sources are increasing and
         * indices count up from 0 per source. */
        for (int l = 0; l < d.n_local; l++) {
            int e = d.first[rank] + l, prev_src = -1, next_idx = 0;
            for (int j = d.expert_first[l]; j < d.expert_first[l + 1]; j++) {
                const float *row = recv + (size_t)j * W;
                int src = (int)row[0];
                if (src != prev_src) {
                    if (src < prev_src) failures++;
                    prev_src = src, next_idx = 0;
                }
                if ((int)row[1] != e || (int)row[2] != next_idx++ || row[4] != -row[3]) {
                    if (failures < 5)
                        fprintf(stderr, "rank %d: expert %d block row %d holds (src %d, expert %d, idx %d)\n", rank, e,
                                j, src, (int)row[1], (int)row[2]);
                    failures++;
                }
            }
        }
        /* The experts answer with payload * (expert + 1); the reverse must return it to the sender's order. */
        for (size_t j = 0; j < nr; j++) {
            float *row = recv + j * W;
            row[3] *= row[1] + 1.0f;
            row[4] *= row[1] + 1.0f;
        }
        float *back = mome_malloc(((size_t)n + 1) * W * sizeof(float));
        rc = mome_dispatch_reverse(&d, recv, back, scratch, W);
        MOME_CHECK(rc == MOME_OK, "reverse: %s", mome_error_message());
        for (int j = 0; j < n; j++) {
            const float *a = send + (size_t)j * W, *b = back + (size_t)j * W;
            if (a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || b[3] != a[3] * (a[1] + 1.0f)) {
                if (failures < 5) fprintf(stderr, "rank %d: row %d came back wrong\n", rank, j);
                failures++;
            }
        }
        long tot[2] = {(long)d.n_send, (long)d.n_recv};
        MPI_Allreduce(MPI_IN_PLACE, tot, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        if (tot[0] != tot[1]) {
            fprintf(stderr, "rank %d: %ld rows sent but %ld received in total\n", rank, tot[0], tot[1]);
            failures++;
        }
        mome_free(back);
        mome_free(recv);
        mome_free(scratch);
        mome_free(send);
        mome_free(counts);
    }
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("dispatch_check: %d ranks, %d experts: %s (%d failures)\n", size, E, all ? "FAILED" : "ok", all);
    mome_dispatch_free(&d);
    MPI_Finalize();
    return all ? 1 : 0;
}
