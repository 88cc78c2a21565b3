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
#include "mome/modular.h"
#include "mome/seqroute.h"

/* Exit code of `mome train` when it stopped on SIGTERM/SIGUSR1 after writing a checkpoint (for requeueing). */
#define MOME_EXIT_STOPPED 75
/* Exit code of `mome train` when non-finite values stopped it (train.nonfinite = stop, or nonfinite_limit steps
 * in a row), without a checkpoint: the newest checkpoint is the last good state. Not a reason to requeue as is. */
#define MOME_EXIT_NONFINITE 76

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
/* The model behind an evaluation: runs B sequences inputs (B, T) of data domain `domain` and returns their
 * logits (B, T, *vocab). */
typedef float *(*mome_eval_forward)(void *ctx, const int32_t *inputs, int B, int T, int domain, int *vocab);
/* mome_evaluate for any model: fn is called the same number of times on every rank (collective models). */
int mome_evaluate_with(mome_eval_forward fn, void *ctx, const mome_dataset *ds, int T, int B, long max_windows,
                       MPI_Comm comm, mome_eval_result *out);

/* How a modular student is evaluated (Al-Maamari et al. report all of these per domain). */
#define MOME_VARIANT_BY_MODE (-100)
typedef struct {
    char name[48];  /* "routed", "gold", "average", "<trunk>", "<trunk>+common", "common" */
    int mode;       /* mome_seqroute_mode when trunk == MOME_VARIANT_BY_MODE */
    int trunk;      /* every sequence to this trunk (or MOME_ROUTE_COMMON), or MOME_VARIANT_BY_MODE */
    int use_common; /* 0: the expert trunks without the common trunk */
} mome_modular_variant;
/* The variants that apply to m: routed (when r has a router), gold (when every data domain has a trunk),
 * average, each trunk alone, each trunk with the common trunk and the common trunk alone (with a common trunk).
 * Writes up to max, returns how many there are. */
int mome_modular_variants(const mome_modular *m, const mome_seq_router *r, const mome_dataset *ds,
                          mome_modular_variant *v, int max);
int mome_modular_evaluate(mome_modular *m, mome_seq_router *r, const mome_modular_variant *v, const mome_dataset *ds,
                          int T, int B, long max_windows, MPI_Comm comm, mome_eval_result *out);

/* Prints the variants' validation loss per domain (rows: variants; columns: domains and their mean). */
void mome_modular_variants_print(FILE *out, const mome_modular_variant *v, const mome_eval_result *r, int n);
/* The router file of a config: [modular] router, or <data.dir>/router.h5. */
void mome_modular_router_path(const mome_config *cfg, char *out, size_t cap);
/* The trunks and routing of a modular config over ds: *mode from [modular] routing; the router is loaded when
 * routing = router (an error if it cannot be) and otherwise when the file exists (for the "routed" evaluation).
 * Gold routing needs a trunk for every data domain. */
int mome_modular_routing_open(const mome_config *cfg, const mome_dataset *ds, mome_seq_router *sr,
                              mome_seqroute_mode *mode);

/* Prints a table of loss and perplexity; with `before` non-NULL, prints before and after side by side. */
void mome_eval_print(FILE *out, const mome_eval_result *before, const mome_eval_result *after);

/* Loads the resolved config and the model weights of a checkpoint, as an inference-only model
 * (mome_gpt_set_inference): for teachers, evaluation and generation. */
int mome_load_model(const char *ckpt_path, mome_config *cfg, mome_gpt *m);
/* Loads a modular student's checkpoint with every trunk on this process, and its routing over ds: the router file
 * `router`, or when NULL the one of its config, loaded when routing = router or the file exists. */
int mome_load_modular(const char *ckpt_path, const char *router, mome_config *cfg, const mome_dataset *ds,
                      mome_modular *m, mome_seq_router *sr, mome_seqroute_mode *routing);

/* Samples `n_tokens` continuation tokens after `prompt` (ids), temperature and top-k (0 = off), writing the
 * new ids to out; stops after an end-of-document token. Returns the number of ids written, or a negative
 * status. Deterministic for a seed. temperature <= 0 takes the most likely token. */
int mome_generate(mome_gpt *m, const int32_t *prompt, int n_prompt, int n_tokens, float temperature, int top_k,
                  uint64_t seed, int32_t *out);

/* On-policy distillation (kd.on_policy): replaces tokens [from, T) of each of the B rows (B, T) with the model's
 * own samples at `temperature` (<= 0: the most likely), one position at a time for all rows together (a forward
 * of (B, t) per new position t, so under expert parallelism every rank must call it with the same B, T and from).
 * Row b draws from mome_rng_stream(seed, counter, row_base + b): its random numbers depend neither on the other
 * rows nor on how the batch is split over ranks or threads (its tokens do only through the logits). Leaves the model's activations of the last
 * (B, T - 1) forward; the caller runs its training forward afterwards. */
int mome_generate_rows(mome_gpt *m, int32_t *rows, int B, int T, int from, float temperature, uint64_t seed,
                       uint64_t counter, uint64_t row_base);

#endif
