/* train.h — the training loop, evaluation and generation on top of the model, data, optimizer and checkpoints.
 *
 * Every rank runs the same loop on its share of the global batch; the communicator is passed in, never
 * hard-coded. Rank 0 writes logs, metrics and checkpoints.
 */
#ifndef MOME_TRAIN_H
#define MOME_TRAIN_H

#include <mpi.h>
#include <stdio.h>

#include "mome/config.h"
#include "mome/data.h"
#include "mome/model.h"

/* Exit code of `mome train` when it stopped on SIGTERM/SIGUSR1 after writing a checkpoint (for requeueing). */
#define MOME_EXIT_STOPPED 75

/* Sets OpenMP and OpenBLAS threads; n <= 0 means OMP_NUM_THREADS or the number of cores. Returns the count. */
int mome_set_threads(int n);

/* Trains as configured. Returns MOME_OK, MOME_ESTOP when a signal stopped it (after a checkpoint), or an error
 * (with the message recorded; the caller prints it). Collective over comm. */
int mome_train(const mome_config *cfg, MPI_Comm comm);

typedef struct {
    int n_domains;
    char name[MOME_MAX_DOMAINS][32];
    double loss[MOME_MAX_DOMAINS];   /* mean cross-entropy per token (nats) */
    double tokens[MOME_MAX_DOMAINS]; /* tokens evaluated */
} mome_eval_result;

/* Mean validation loss per domain over up to max_windows windows of seq_len tokens per domain, batches of B.
 * Windows are dealt round-robin to ranks; the result is the same on every rank. */
int mome_evaluate(mome_gpt *m, const mome_dataset *ds, int T, int B, long max_windows, MPI_Comm comm,
                  mome_eval_result *out);
/* Prints a table of loss and perplexity; with `before` non-NULL, prints before and after side by side. */
void mome_eval_print(FILE *out, const mome_eval_result *before, const mome_eval_result *after);

/* Loads the resolved config and the model weights of a checkpoint, as an inference-only model
 * (mome_gpt_set_inference): for teachers, evaluation and generation. */
int mome_load_model(const char *ckpt_path, mome_config *cfg, mome_gpt *m);

/* Samples `n_tokens` continuation tokens after `prompt` (ids), temperature and top-k (0 = off), writing the
 * new ids to out; stops after an end-of-document token. Returns the number of ids written, or a negative
 * status. Deterministic for a seed. temperature <= 0 takes the most likely token. */
int mome_generate(mome_gpt *m, const int32_t *prompt, int n_prompt, int n_tokens, float temperature, int top_k,
                  uint64_t seed, int32_t *out);

#endif
