/* modular_dispatch_check — run under mpirun: the modular student with its expert trunks spread over the ranks
 * (sequences dispatched to their trunk's rank) against the same model on one process.
 *
 * Every rank builds the reference (all trunks local) and its part of the distributed model from the same seed.
 * The global batch mixes every kind of route (each expert, the average of all, the common trunk alone); each rank
 * runs its slice of the sequences through the distributed model and the whole batch through the reference. The
 * logits of the slice, the input gradient of a fixed upstream gradient (through the weight gradients: the shared
 * and common ones summed over ranks, each expert's on the rank that owns it) must match the reference to float
 * rounding. Usage: modular_dispatch_check N_EXPERTS COMMON(0/1) SEQS_PER_RANK */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/dispatch.h"
#include "mome/modular.h"
#include "mome/parallel.h"
#include "mome/rng.h"

static double max_rel(const float *a, const float *b, size_t n) {
    double worst = 0.0, scale = 1e-6;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)b[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - (double)b[i]) / scale);
    return worst;
}

/* out (global table, zeroed first): the dense part of ref_buf and this rank's experts only (own: scratch of the
 * local table's size). */
static void own_view(const mome_modular *dist, const mome_tensor_table *full, float *ref_buf, float *own,
                     float *out) {
    memset(out, 0, full->total * sizeof(float));
    mome_table_copy_experts(&dist->table, own, dist->expert_first, full, ref_buf, 0);
    mome_table_copy_experts(&dist->table, own, dist->expert_first, full, out, 1);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const int E = argc > 1 ? atoi(argv[1]) : 4, common = argc > 2 ? atoi(argv[2]) : 1;
    const int Bl = argc > 3 ? atoi(argv[3]) : 3, B = Bl * size, T = 8;
    const mome_modular_config cfg = {.vocab_size = 37, .seq_len = T, .d_model = 16, .n_head = 2, .d_ff = 32,
                                      .n_experts = E, .trunk_layers = 2, .common = common};
    mome_dispatch d;
    MOME_CHECK(mome_dispatch_init(&d, MPI_COMM_WORLD, E) == MOME_OK, "%s", mome_error_message());
    mome_modular ref, dist;
    MOME_CHECK(mome_modular_init(&ref, &cfg) == MOME_OK, "%s", mome_error_message());
    MOME_CHECK(mome_modular_init_experts(&dist, &cfg, d.first[rank], d.n_local) == MOME_OK, "%s",
               mome_error_message());
    MOME_CHECK(mome_modular_set_dispatch(&dist, &d) == MOME_OK, "%s", mome_error_message());
    mome_modular_init_weights(&ref, 7);
    mome_modular_init_weights(&dist, 7);
    MOME_CHECK(mome_modular_reserve(&ref, B, T) == MOME_OK && mome_modular_reserve(&dist, Bl, T) == MOME_OK, "%s",
               mome_error_message());
    /* The distributed parameters are the reference's (initialisation depends only on the global trunk id). */
    mome_tensor_table full;
    mome_table_with_experts(&dist.table, E, &full);
    MOME_CHECK(full.total == ref.table.total, "tables differ: %zu vs %zu floats", full.total, ref.table.total);
    float *own = mome_calloc(dist.table.total, sizeof(float));
    float *dfull = mome_calloc(full.total, sizeof(float)), *rfull = mome_calloc(full.total, sizeof(float));
    int failures = 0;
    own_view(&dist, &full, ref.params, own, rfull);
    mome_table_copy_experts(&dist.table, dist.params, dist.expert_first, &full, dfull, 1);
    if (memcmp(dfull, rfull, full.total * sizeof(float)) != 0) {
        printf("rank %d: distributed initial weights differ from the reference's\n", rank);
        failures++;
    }

    int32_t *inputs = mome_malloc((size_t)B * T * sizeof *inputs), *routes = mome_malloc((size_t)B * sizeof *routes);
    mome_rng rng;
    mome_rng_stream(&rng, 11, 0, 0);
    for (int i = 0; i < B * T; i++) inputs[i] = (int32_t)mome_rng_below(&rng, (uint64_t)cfg.vocab_size);
    for (int b = 0; b < B; b++) { /* every expert, the average and (with a common trunk) common alone */
        const int kinds = E + 1 + common, k = (b * 5 + 3) % kinds;
        routes[b] = k < E ? k : k == E ? MOME_ROUTE_ALL : MOME_ROUTE_COMMON;
    }
    const size_t V = (size_t)cfg.vocab_size, mine = (size_t)rank * Bl * T;
    for (int round = 0; round < 2; round++) {
        mome_modular_zero_grad(&ref);
        mome_modular_zero_grad(&dist);
        mome_modular_forward(&ref, inputs, routes, B, T);
        mome_modular_forward(&dist, inputs + mine, routes + (size_t)rank * Bl, Bl, T);
        const double lerr = max_rel(dist.logits, ref.logits + mine * V, (size_t)Bl * T * V);
        /* upstream gradient: a fixed function of the position, for both models */
        for (size_t i = 0; i < (size_t)B * T * V; i++) ref.logits[i] = 0.01f * sinf(0.37f * (float)i);
        for (size_t i = 0; i < (size_t)Bl * T * V; i++) dist.logits[i] = 0.01f * sinf(0.37f * (float)(mine * V + i));
        mome_modular_backward(&ref, inputs, routes, B, T);
        mome_modular_backward(&dist, inputs + mine, routes + (size_t)rank * Bl, Bl, T);
        /* shared + common gradients summed over ranks; experts are each on one rank */
        MPI_Allreduce(MPI_IN_PLACE, dist.grads, (int)dist.n_dense, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        const double gdense = max_rel(dist.grads, ref.grads, dist.n_dense);
        memset(dfull, 0, full.total * sizeof(float));
        mome_table_copy_experts(&dist.table, dist.grads, dist.expert_first, &full, dfull, 1);
        own_view(&dist, &full, ref.grads, own, rfull);
        const double gexp = max_rel(dfull + dist.n_dense, rfull + dist.n_dense, full.total - dist.n_dense);
        const double tol = 2e-5;
        if (!(lerr < tol && gdense < tol && gexp < tol)) failures++;
        printf("rank %d/%d E %d common %d round %d: logits %.2e, shared grads %.2e, own expert grads %.2e, "
               "bytes %zu\n",
               rank, size, E, common, round, lerr, gdense, gexp, dist.bytes_sent);
        /* second round: other routes, so plans and buffer growth are exercised */
        for (int b = 0; b < B; b++) routes[b] = b % 3 == 0 ? MOME_ROUTE_ALL : (b * 7 + round) % E;
    }
    int any = 0;
    MPI_Allreduce(&failures, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mome_free(inputs);
    mome_free(routes);
    mome_free(own);
    mome_free(dfull);
    mome_free(rfull);
    mome_modular_free(&ref);
    mome_modular_free(&dist);
    mome_dispatch_free(&d);
    if (rank == 0) printf("%s\n", any ? "FAIL" : "ok");
    MPI_Finalize();
    return any ? 1 : 0;
}
