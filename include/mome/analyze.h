/* analyze.h — `mome analyze gates`: how the gate of an MoE model spreads its probability over the experts.
 *
 * "Every Expert Matters" (Kim et al. 2025) observes that the experts an MoE teacher does not activate still carry
 * gate probability, i.e. knowledge that top-k distillation throws away. This module measures it on a trained
 * checkpoint: the model runs forward (inference, its trained TOPK gate) over the corpus's validation windows, the
 * same windows and batches as `mome eval`, and for every MoE layer and every token it reads the softmax over the
 * E experts (mome_moe.probs) and the experts the layer routed the token to (mome_moe.plan.expert, the top_k by
 * logit). Accumulated over all tokens, per domain and over all domains:
 *   sorted mean   (E) rank r: mean over tokens of the r-th largest probability of the token (non-increasing,
 *                 sums to 1);
 *   activated     mean over tokens of the probability of the top_k routed experts; non-activated = 1 - it.
 *                 Never below top_k / E (the top_k largest of E numbers summing to 1);
 *   expert prob   (E) mean probability of each expert (the soft load, P_e of the Switch aux loss);
 *   expert routed (E) share of the assignments routed to each expert (the hard load f_e, before dropping);
 *   dropped       share of assignments dropped by capacity (0 for a dropless model).
 * Reading the model is read-only: mome_gpt_moe_layer gives each layer's gate buffers after mome_gpt_forward.
 * Left to others: loading the checkpoint and the corpus (cli/main.c), the model and the gate themselves.
 */
#ifndef MOME_ANALYZE_H
#define MOME_ANALYZE_H

#include <mpi.h>
#include <stddef.h>
#include <stdio.h>

#include "mome/data.h"
#include "mome/model.h"

/* Gate statistics of one model over a corpus. Part p is domain p for p < n_domains and all domains together for
 * p == n_domains (the overall numbers, every token weighing the same). While accumulating the arrays hold sums
 * over tokens; mome_gate_stats_finish turns them into the means described in the header comment. */
typedef struct {
    int n_layer, n_experts, top_k; /* L, E, k */
    float capacity_factor;         /* of the model (0: dropless) */
    int n_domains;                 /* D */
    char domain[MOME_MAX_DOMAINS][32];
    int seq_len, batch;            /* T and sequences per forward */
    long windows;                  /* the cap on windows per domain (0: all) */
    double tokens[MOME_MAX_DOMAINS + 1]; /* (D + 1) tokens per part */
    double *sorted;                /* (D + 1, L, E) probability at rank r (0 = largest) */
    double *activated;             /* (D + 1, L) probability on the routed top_k experts */
    double *prob;                  /* (D + 1, L, E) probability of expert e */
    double *routed;                /* (D + 1, L, E) assignments routed to expert e (a share after finish) */
    double *dropped;               /* (D + 1, L) assignments dropped by capacity (a share after finish) */
    int finished;                  /* 1 after mome_gate_stats_finish: means */
} mome_gate_stats;

/* Resolves CHECKPOINT (a checkpoint file, or a run directory: its `latest`) into path and checks that it holds a
 * GPT whose MLPs are MoE layers with more than one expert. MOME_ENOENT / MOME_EFORMAT for a missing or foreign
 * file, MOME_EINVAL with a message naming the file and why for a dense model, a single expert or a modular
 * student. Reads the file's attributes and configuration only (not the corpus). */
int mome_gate_checkpoint(const char *spec, char *path, size_t cap);

/* Sizes s for model m (n_experts > 1) over the domains of ds; zeroes the sums. */
int mome_gate_stats_init(mome_gate_stats *s, const mome_gpt *m, const mome_dataset *ds);
void mome_gate_stats_free(mome_gate_stats *s);
/* Adds every layer's gate of m's last forward (its N tokens, all of domain `domain`) to the sums. */
void mome_gate_stats_add(mome_gate_stats *s, const mome_gpt *m, int domain);
/* Sums the parts over the ranks of comm (MPI_COMM_NULL: this process only) and turns the sums into means. */
void mome_gate_stats_finish(mome_gate_stats *s, MPI_Comm comm);

/* Runs m (an inference-only MoE model with all its experts, e.g. from mome_load_model) over the validation windows
 * of ds: up to max_windows (0: all) per domain, dealt round-robin to the ranks of comm in batches of B sequences
 * of m->cfg.seq_len tokens, as mome_evaluate deals them; init, add and finish s. The result is the same on every
 * rank. Reserves m's buffers for B sequences. Collective over comm. */
int mome_gate_analyze(mome_gpt *m, const mome_dataset *ds, int B, long max_windows, MPI_Comm comm,
                      mome_gate_stats *s);

/* Index of (part, layer) in activated/dropped, and of (part, layer, rank or expert) in sorted/prob/routed. */
static inline size_t mome_gate_pl(const mome_gate_stats *s, int part, int layer) {
    return (size_t)part * (size_t)s->n_layer + (size_t)layer;
}
static inline size_t mome_gate_ple(const mome_gate_stats *s, int part, int layer, int e) {
    return mome_gate_pl(s, part, layer) * (size_t)s->n_experts + (size_t)e;
}

/* Report of finished statistics: a header (checkpoint, tokens, top_k, E), one row per layer of the sorted means,
 * activated and non-activated mass, then the activated mass per domain and the per-expert mean probability. */
void mome_gate_stats_print(FILE *out, const mome_gate_stats *s, const char *checkpoint);
/* The same numbers as JSON (docs/analysis.md has the schema), written atomically (temporary file + rename). */
int mome_gate_stats_write_json(const mome_gate_stats *s, const char *checkpoint, const char *path);
/* An SVG figure: per layer a line of the mean probability against rank (log y axis), and per layer a stacked bar
 * of activated vs non-activated mass; written atomically. */
int mome_gate_stats_write_svg(const mome_gate_stats *s, const char *checkpoint, const char *path);

#endif
