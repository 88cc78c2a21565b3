/* train.c — the training loop: data-parallel over the ranks of a communicator, AdamW, evaluation, metrics,
 * checkpoints with exact resume, and a clean stop on SIGTERM/SIGUSR1.
 *
 * Every rank holds the whole (dense) model and processes batch_size/world sequences of each micro-batch;
 * gradients are summed with MPI_Allreduce after the last micro-batch. The model, loss and optimizer kernels
 * live in model.c, loss.c and optim.c; this file only orchestrates them.
 */
#include "mome/train.h"
#include "mome/watchdog.h"

#include <cblas.h>
#include <ctype.h>
#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/kernels.h"
#include "mome/loss.h"
#include "mome/distill.h"
#include "mome/bench.h"
#include "mome/monitor.h"
#include "mome/optim.h"
#include "mome/parallel.h"
#include "mome/rng.h"


int mome_set_threads(int n) {
    if (n <= 0) {
        const char *env = getenv("OMP_NUM_THREADS");
        n = env && atoi(env) > 0 ? atoi(env) : (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (n <= 0) n = 1;
    }
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    return n;
}

/* Stream purpose of the on-policy seed (mome_rng_stream(train.seed, ON_POLICY_STREAM, 0)). */
#define ON_POLICY_STREAM 0x6f6e70ULL

/* The on-policy coin of a micro-batch: uniform in [0, 1) from (seed, micro-batch) alone, so every rank and a
 * resumed run toss the same. Its stream index (2^64 - 1) is one no sampled row uses. */
static float on_policy_coin(uint64_t seed, uint64_t global_micro) {
    mome_rng r;
    mome_rng_stream(&r, seed, global_micro, UINT64_MAX);
    return mome_rng_uniform(&r);
}

/* All ranks agree on a status: the worst (most negative) one wins, so either every rank goes on or every rank
 * returns an error and none is left waiting in a collective. */
static int agree(int rc, MPI_Comm comm) {
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MIN, comm);
    if (worst != MOME_OK && rc == MOME_OK)
        rc = mome_error_set(worst, "stopping because another rank failed (its message is above)");
    return rc;
}

static int model_config_from(const mome_config *cfg, int vocab, mome_gpt_config *mc) {
    if (cfg->model.vocab_size != 0 && cfg->model.vocab_size != vocab)
        return mome_error_set(MOME_EMISMATCH, "[model] vocab_size = %d but the corpus tokenizer has %d tokens",
                              cfg->model.vocab_size, vocab);
    mc->vocab_size = vocab;
    mc->seq_len = cfg->model.seq_len;
    mc->n_layer = cfg->model.n_layer;
    mc->n_head = cfg->model.n_head;
    mc->d_model = cfg->model.d_model;
    mc->d_ff = cfg->model.d_ff > 0 ? cfg->model.d_ff : 4 * cfg->model.d_model;
    mc->n_experts = cfg->moe.n_experts;
    mc->top_k = cfg->moe.top_k;
    mc->capacity_factor = cfg->moe.capacity_factor;
    mc->shared_d_ff = cfg->moe.shared_d_ff;
    mc->aux_coef = cfg->moe.aux_coef;
    mc->z_coef = cfg->moe.z_coef;
    return mome_gpt_config_check(mc);
}

static int modular_config_from(const mome_config *cfg, int vocab, int n_trunks, mome_modular_config *mc) {
    if (cfg->model.vocab_size != 0 && cfg->model.vocab_size != vocab)
        return mome_error_set(MOME_EMISMATCH, "[model] vocab_size = %d but the corpus tokenizer has %d tokens",
                              cfg->model.vocab_size, vocab);
    *mc = (mome_modular_config){.vocab_size = vocab,
                                .seq_len = cfg->model.seq_len,
                                .d_model = cfg->model.d_model,
                                .n_head = cfg->model.n_head,
                                .d_ff = cfg->model.d_ff > 0 ? cfg->model.d_ff : 4 * cfg->model.d_model,
                                .n_experts = n_trunks,
                                .trunk_layers = cfg->modular.trunk_layers > 0 ? cfg->modular.trunk_layers
                                                                              : cfg->model.n_layer,
                                .common = cfg->modular.common};
    return mome_modular_config_check(mc);
}

/* The router file of a config: [modular] router, or <data.dir>/router.h5. */
void mome_modular_router_path(const mome_config *cfg, char *out, size_t cap) {
    if (cfg->modular.router[0])
        snprintf(out, cap, "%s", cfg->modular.router);
    else
        snprintf(out, cap, "%s/router.h5", cfg->data.dir);
}

int mome_modular_routing_open(const mome_config *cfg, const mome_dataset *ds, mome_seq_router *sr,
                              mome_seqroute_mode *mode) {
    *mode = (mome_seqroute_mode)mome_seqroute_mode_parse(cfg->modular.routing);
    char path[MOME_CFG_STR + 16];
    mome_modular_router_path(cfg, path, sizeof path);
    /* The router is needed to route by it; with another routing it is still loaded when there is one, for the
     * evaluation's "routed" variant. */
    const int load = *mode == MOME_SEQROUTE_ROUTER || access(path, R_OK) == 0;
    int rc = mome_seq_router_init(sr, load ? MOME_SEQROUTE_ROUTER : *mode, cfg->modular.experts, ds, path,
                                  cfg->model.seq_len);
    if (rc == MOME_OK && *mode == MOME_SEQROUTE_GOLD)
        for (int d = 0; d < ds->n_domains; d++)
            if (sr->domain_trunk[d] < 0) {
                rc = mome_error_set(MOME_ECONFIG, "[modular] routing = gold: the data's domain '%s' has no trunk "
                                    "in [modular] experts = '%s'", ds->domains[d].name, cfg->modular.experts);
                mome_seq_router_free(sr);
                break;
            }
    return rc;
}

/* ---- evaluation ---- */

int mome_evaluate_with(mome_eval_forward fn, void *ctx, const mome_dataset *ds, int T, int B, long max_windows,
                       MPI_Comm comm, mome_eval_result *out) {
    int rank, world;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &world);
    int32_t *buf = mome_malloc((size_t)B * (size_t)(T + 1) * sizeof *buf);
    int32_t *inp = mome_malloc((size_t)B * (size_t)T * sizeof *inp);
    int32_t *tgt = mome_malloc((size_t)B * (size_t)T * sizeof *tgt);
    double sums[2 * MOME_MAX_DOMAINS] = {0};
    memset(out, 0, sizeof *out);
    out->n_domains = ds->n_domains;
    for (int d = 0; d < ds->n_domains; d++) {
        snprintf(out->name[d], sizeof out->name[d], "%s", ds->domains[d].name);
        size_t W = mome_dataset_val_windows(ds, d, T);
        if (max_windows > 0 && W > (size_t)max_windows) W = (size_t)max_windows;
        /* Every rank runs the same number of forward passes (an expert-parallel forward is collective); a rank
         * whose windows ran out repeats window 0 and does not count it. */
        size_t per_rank = (W + (size_t)world - 1) / (size_t)world;
        size_t batches = (per_rank + (size_t)B - 1) / (size_t)B;
        size_t w = (size_t)rank;
        for (size_t bi = 0; bi < batches; bi++) {
            int b = 0;
            for (; b < B && w < W; b++, w += (size_t)world) {
                mome_dataset_val_window(ds, d, w, T, buf + (size_t)b * (size_t)(T + 1));
                memcpy(inp + (size_t)b * T, buf + (size_t)b * (T + 1), (size_t)T * sizeof *inp);
                memcpy(tgt + (size_t)b * T, buf + (size_t)b * (T + 1) + 1, (size_t)T * sizeof *tgt);
            }
            int real = b;
            if (real == 0) {
                mome_dataset_val_window(ds, d, 0, T, buf);
                memcpy(inp, buf, (size_t)T * sizeof *inp);
                b = 1;
            }
            int vocab = 0;
            float *logits = fn(ctx, inp, b, T, d, &vocab);
            if (real == 0) continue;
            size_t valid = 0;
            sums[2 * d] += mome_xent_forward_backward(logits, tgt, (size_t)b * T, vocab, 0.0f, &valid);
            sums[2 * d + 1] += (double)valid;
        }
    }
    MPI_Allreduce(MPI_IN_PLACE, sums, 2 * ds->n_domains, MPI_DOUBLE, MPI_SUM, comm);
    for (int d = 0; d < ds->n_domains; d++) {
        out->tokens[d] = sums[2 * d + 1];
        out->loss[d] = sums[2 * d + 1] > 0 ? sums[2 * d] / sums[2 * d + 1] : NAN;
    }
    mome_free(buf);
    mome_free(inp);
    mome_free(tgt);
    return MOME_OK;
}

static float *gpt_eval_forward(void *ctx, const int32_t *inputs, int B, int T, int domain, int *vocab) {
    (void)domain;
    mome_gpt *m = ctx;
    mome_gpt_forward(m, inputs, B, T);
    *vocab = m->cfg.vocab_size;
    return m->logits;
}

int mome_evaluate(mome_gpt *m, const mome_dataset *ds, int T, int B, long max_windows, MPI_Comm comm,
                  mome_eval_result *out) {
    MOME_CHECK(B >= 1 && B <= m->max_B && T <= m->max_T, "evaluate: batch %dx%d exceeds reserved %dx%d", B, T,
               m->max_B, m->max_T);
    return mome_evaluate_with(gpt_eval_forward, m, ds, T, B, max_windows, comm, out);
}

int mome_modular_variants(const mome_modular *m, const mome_seq_router *r, const mome_dataset *ds,
                          mome_modular_variant *v, int max) {
    int n = 0;
#define ADD(nm, md, tr, uc)                                                                                     \
    do {                                                                                                        \
        if (n < max) {                                                                                          \
            snprintf(v[n].name, sizeof v[n].name, "%s", nm);                                                    \
            v[n].mode = md, v[n].trunk = tr, v[n].use_common = uc;                                              \
        }                                                                                                       \
        n++;                                                                                                    \
    } while (0)
    if (r->router) ADD("routed", MOME_SEQROUTE_ROUTER, MOME_VARIANT_BY_MODE, 1);
    int gold_ok = 1;
    for (int d = 0; d < ds->n_domains; d++) gold_ok &= r->domain_trunk[d] >= 0;
    if (gold_ok) ADD("gold", MOME_SEQROUTE_GOLD, MOME_VARIANT_BY_MODE, 1);
    ADD("average", MOME_SEQROUTE_AVERAGE, MOME_VARIANT_BY_MODE, 1);
    for (int e = 0; e < r->n_trunks; e++) {
        char name[48];
        snprintf(name, sizeof name, "%s", r->names[e]);
        ADD(name, MOME_SEQROUTE_GOLD, e, 0);
        if (m->cfg.common) {
            snprintf(name, sizeof name, "%s+common", r->names[e]);
            ADD(name, MOME_SEQROUTE_GOLD, e, 1);
        }
    }
    if (m->cfg.common) ADD("common", MOME_SEQROUTE_GOLD, MOME_ROUTE_COMMON, 1);
#undef ADD
    return n;
}

typedef struct {
    mome_modular *m;
    mome_seq_router *r;
    const mome_modular_variant *v;
    int32_t *routes;
    int *domains;
} modular_eval_ctx;

static float *modular_eval_forward(void *ctx, const int32_t *inputs, int B, int T, int domain, int *vocab) {
    modular_eval_ctx *c = ctx;
    for (int b = 0; b < B; b++) c->domains[b] = domain;
    if (c->v->trunk == MOME_VARIANT_BY_MODE)
        mome_seq_router_route(c->r, (mome_seqroute_mode)c->v->mode, inputs, c->domains, B, T, c->routes);
    else
        for (int b = 0; b < B; b++) c->routes[b] = c->v->trunk;
    c->m->use_common = c->v->use_common;
    mome_modular_forward(c->m, inputs, c->routes, B, T);
    c->m->use_common = 1;
    *vocab = c->m->cfg.vocab_size;
    return c->m->logits;
}

int mome_modular_evaluate(mome_modular *m, mome_seq_router *r, const mome_modular_variant *v, const mome_dataset *ds,
                          int T, int B, long max_windows, MPI_Comm comm, mome_eval_result *out) {
    MOME_CHECK(B >= 1 && B <= m->max_B && T <= m->max_T, "evaluate: batch %dx%d exceeds reserved %dx%d", B, T,
               m->max_B, m->max_T);
    modular_eval_ctx c = {m, r, v, mome_malloc((size_t)B * sizeof(int32_t)), mome_malloc((size_t)B * sizeof(int))};
    const long agree0 = r->n_agree, routed0 = r->n_routed; /* evaluation does not count in the training agreement */
    const int rc = mome_evaluate_with(modular_eval_forward, &c, ds, T, B, max_windows, comm, out);
    r->n_agree = agree0, r->n_routed = routed0;
    mome_free(c.routes);
    mome_free(c.domains);
    return rc;
}

void mome_modular_variants_print(FILE *out, const mome_modular_variant *v, const mome_eval_result *r, int n) {
    if (n == 0) return;
    fprintf(out, "%-16s", "variant");
    for (int d = 0; d < r[0].n_domains; d++) fprintf(out, " %10s", r[0].name[d]);
    fprintf(out, " %10s\n", "mean");
    for (int i = 0; i < n; i++) {
        double sum = 0.0;
        fprintf(out, "%-16s", v[i].name);
        for (int d = 0; d < r[i].n_domains; d++) {
            fprintf(out, " %10.4f", r[i].loss[d]);
            sum += r[i].loss[d];
        }
        fprintf(out, " %10.4f\n", sum / r[i].n_domains);
    }
    fflush(out);
}

void mome_eval_print(FILE *out, const mome_eval_result *before, const mome_eval_result *after) {
    if (before) {
        fprintf(out, "%-10s %10s %10s   %10s %10s %10s\n", "domain", "loss@start", "ppl@start", "loss", "ppl",
                "tokens");
        for (int d = 0; d < after->n_domains; d++)
            fprintf(out, "%-10s %10.4f %10.2f   %10.4f %10.2f %10.0f\n", after->name[d], before->loss[d],
                    exp(before->loss[d]), after->loss[d], exp(after->loss[d]), after->tokens[d]);
    } else {
        fprintf(out, "%-10s %10s %10s %10s\n", "domain", "loss", "ppl", "tokens");
        for (int d = 0; d < after->n_domains; d++)
            fprintf(out, "%-10s %10.4f %10.2f %10.0f\n", after->name[d], after->loss[d], exp(after->loss[d]),
                    after->tokens[d]);
    }
    fflush(out);
}

/* ---- loading ---- */

/* The stored config of a checkpoint, checked to hold a model of `kind`. */
static int load_config(const char *ckpt_path, const char *kind, mome_config *cfg, char *origin, size_t cap) {
    mome_ckpt_info info;
    int rc = mome_ckpt_read_info(ckpt_path, &info);
    if (rc) return rc;
    if (strcmp(info.model_kind, kind) != 0) {
        rc = mome_error_set(MOME_EMISMATCH, "%s holds a '%s' model, not a '%s' one%s", ckpt_path, info.model_kind,
                            kind,
                            strcmp(info.model_kind, "modular") == 0
                                ? " (a modular student cannot be a teacher or generate text yet; `mome eval` "
                                  "evaluates it)"
                                : "");
        mome_ckpt_info_free(&info);
        return rc;
    }
    mome_config_defaults(cfg);
    snprintf(origin, cap, "%s:/config", ckpt_path);
    rc = mome_config_load_string(cfg, info.config_text, origin);
    mome_ckpt_info_free(&info);
    return rc;
}

int mome_load_modular(const char *ckpt_path, const char *router, mome_config *cfg, const mome_dataset *ds,
                      mome_modular *m, mome_seq_router *sr, mome_seqroute_mode *routing) {
    char origin[1100];
    int rc = load_config(ckpt_path, "modular", cfg, origin, sizeof origin);
    if (rc) return rc;
    if (router) snprintf(cfg->modular.router, sizeof cfg->modular.router, "%s", router);
    /* the trunks are named in the stored config ([modular] experts is resolved when training starts) */
    rc = mome_modular_routing_open(cfg, ds, sr, routing);
    if (rc) return mome_error_wrap(rc, "%s", origin);
    mome_modular_config mc;
    rc = modular_config_from(cfg, cfg->model.vocab_size, sr->n_trunks, &mc);
    if (rc == MOME_OK) rc = mome_modular_init(m, &mc);
    if (rc == MOME_OK) rc = mome_ckpt_read_tensors(ckpt_path, &m->table, m->params, NULL, NULL);
    if (rc) {
        mome_modular_free(m);
        mome_seq_router_free(sr);
    }
    return rc;
}

int mome_load_model(const char *ckpt_path, mome_config *cfg, mome_gpt *m) {
    char origin[1100];
    int rc = load_config(ckpt_path, "gpt", cfg, origin, sizeof origin);
    if (rc) return rc;
    /* The stored config is the resolved one: vocab_size and d_ff are set. */
    mome_gpt_config mc;
    rc = model_config_from(cfg, cfg->model.vocab_size, &mc);
    if (rc) return mome_error_wrap(rc, "%s", origin);
    rc = mome_gpt_init(m, &mc);
    if (rc) return rc;
    mome_gpt_set_inference(m);
    rc = mome_ckpt_read_tensors(ckpt_path, &m->table, m->params, NULL, NULL);
    if (rc) mome_gpt_free(m);
    return rc;
}

/* ---- the training loop ---- */

static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) { stop_signal = sig; }

typedef struct {
    const mome_config *cfg;
    MPI_Comm comm;
    int rank, world;
    int T, B, B_local, accum;
    mome_dataset ds;
    mome_parallel par;     /* communicators and the expert partition */
    int modular;           /* the student: 0 the GPT of [model]/[moe], 1 a modular student ([modular]) */
    mome_gpt model;        /* dense tensors, then this rank's experts */
    mome_modular mod;      /* shared tensors and common trunk, then this rank's expert trunks */
    /* views of whichever student it is */
    mome_tensor_table *table;
    float *params, *grads, *logits;
    size_t n_dense;        /* floats replicated on every rank (before the experts) */
    mome_seq_router sr;    /* modular: which trunk each sequence goes to */
    mome_seqroute_mode routing;
    int32_t *routes;       /* (B_local) trunk of each sequence of the micro-batch */
    int *domains;          /* (B_local) data domain of each sequence */
    double trunk_seqs[MOME_MAX_DOMAINS]; /* modular: sequences sent to each trunk in the last step (global) */
    mome_tensor_table full_table; /* the model with every expert: what checkpoints hold */
    mome_adamw opt;
    mome_distiller kd;     /* the teacher, when [teacher] checkpoint is set */
    mome_kd_alpha alpha;   /* CE/KD weighting state (saved in checkpoints) */
    mome_kd_schedule schedule;
    mome_rng rng;          /* this rank's generator (saved in checkpoints; reserved for stochastic parts) */
    uint64_t on_policy_seed; /* kd.on_policy: seed of the coin per micro-batch and of the student's samples */
    int on_policy_from;    /* kd.on_policy: the first position the student samples */
    uint64_t data_cursor;  /* samples drawn by this rank */
    long step;             /* optimizer steps completed */
    int64_t tokens_seen;
    char ckpt_dir[600];
    char run_dir[600];
    char *config_text;     /* resolved config, with vocab_size and d_ff filled in */
    mome_monitor *mon;     /* rank 0: metrics.jsonl and the ZeroMQ stream (monitor.h) */
    double flop_per_token; /* of a training step (3 x forward), for the MFU */
    double sgemm_gflops;   /* measured by rank 0 at start, times the ranks; 0: not measured */
    mome_watchdog *wd;     /* train.watchdog: ends this rank if no step, evaluation or checkpoint progresses */
} trainer;

/* Fault injection for tests/faults (docs/reliability.md), off unless the environment asks:
 * MOME_FAULT_NONFINITE = WHERE:VALUE:FIRST[-LAST][@RANK] puts VALUE (nan or inf) into WHERE at the steps
 * FIRST..LAST (1-based: the step being computed) on rank RANK (default 0; "all": every rank). WHERE is loss
 * (the rank's loss sum, before the all-reduce), grad (its first gradient, before the all-reduce) or param (its
 * first weight, after the step's update: the weights themselves go bad, on every replica with @all). */
typedef enum { FAULT_NONE, FAULT_LOSS, FAULT_GRAD, FAULT_PARAM } fault_where;
typedef struct {
    fault_where where;
    double value;
    long first, last;
} fault_injection;

static fault_injection fault_injection_get(int rank) {
    fault_injection f = {FAULT_NONE, 0.0, 0, -1};
    const char *env = getenv("MOME_FAULT_NONFINITE");
    if (!env || !*env) return f;
    char where[16] = "", value[16] = "";
    long first = 0, last = 0;
    int at = 0, n = 0;
    int ok = sscanf(env, "%15[a-z]:%15[a-z]:%ld%n", where, value, &first, &n) == 3 && first >= 1;
    const char *p = env + (ok ? n : 0);
    last = first;
    if (ok && *p == '-') {
        ok = sscanf(p, "-%ld%n", &last, &n) == 1 && last >= first;
        p += ok ? n : 0;
    }
    if (ok && strcmp(p, "@all") == 0) {
        at = -1;
        p += 4;
    } else if (ok && *p == '@') {
        ok = sscanf(p, "@%d%n", &at, &n) == 1 && at >= 0;
        p += ok ? n : 0;
    }
    ok = ok && *p == 0 && (strcmp(value, "nan") == 0 || strcmp(value, "inf") == 0);
    f.where = strcmp(where, "loss") == 0 ? FAULT_LOSS : strcmp(where, "grad") == 0 ? FAULT_GRAD
              : strcmp(where, "param") == 0 ? FAULT_PARAM : FAULT_NONE;
    if (!ok || f.where == FAULT_NONE)
        MOME_FATAL("MOME_FAULT_NONFINITE = '%s': expected loss|grad|param:nan|inf:STEP[-STEP][@RANK|@all]", env);
    char who[32] = "every rank";
    if (at >= 0) snprintf(who, sizeof who, "rank %d", at);
    if (rank == 0) mome_warn("fault injection: %s into the %s at steps %ld-%ld on %s", value, where, first, last, who);
    f.value = strcmp(value, "nan") == 0 ? NAN : INFINITY;
    f.first = first;
    f.last = last;
    if (at >= 0 && rank != at) f.where = FAULT_NONE;
    return f;
}

static int fault_now(const fault_injection *f, long step, fault_where where) {
    return f->where == where && step >= f->first && step <= f->last;
}

/* A checkpoint never holds a non-finite weight or moment: it would become `latest` and push good ones out. */
static int check_finite(const mome_tensor_table *t, float *const bufs[3], long step) {
    static const char *const part[3] = {"model", "optimizer/m", "optimizer/v"};
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < t->n; i++) {
            const float *x = bufs[b] + t->t[i].offset;
            for (size_t j = 0; j < t->t[i].numel; j++)
                if (!isfinite(x[j]))
                    return mome_error_set(MOME_ENONFINITE, "step %ld: /%s/%s[%zu] is %g: no checkpoint of non-finite "
                                          "weights (the previous checkpoints are kept)", step, part[b],
                                          t->t[i].name, j, (double)x[j]);
        }
    return MOME_OK;
}

static int save_checkpoint_now(trainer *tr) {
    /* Every expert, by global id, onto rank 0 (a checkpoint never depends on the number of ranks). */
    const mome_tensor_table *full = &tr->full_table;
    float *bufs[3] = {NULL, NULL, NULL};
    if (tr->rank == 0)
        for (int b = 0; b < 3; b++) bufs[b] = mome_malloc(full->total * sizeof(float));
    const float *local[3] = {tr->params, tr->opt.m, tr->opt.v};
    int grc = mome_parallel_gather(&tr->par, tr->table, local, full, bufs, 3);
    MPI_Bcast(&grc, 1, MPI_INT, 0, tr->comm);
    if (grc) {
        for (int b = 0; b < 3; b++) mome_free(bufs[b]);
        return grc;
    }
    uint64_t mine[5];
    memcpy(mine, tr->rng.s, sizeof tr->rng.s);
    mine[4] = tr->data_cursor;
    uint64_t *all = tr->rank == 0 ? mome_malloc((size_t)tr->world * 5 * sizeof *all) : NULL;
    MPI_Gather(mine, 5, MPI_UINT64_T, all, 5, MPI_UINT64_T, 0, tr->comm);
    int rc = MOME_OK;
    if (tr->rank == 0) {
        uint64_t *rngs = mome_malloc((size_t)tr->world * 4 * sizeof *rngs);
        uint64_t *cursors = mome_malloc((size_t)tr->world * sizeof *cursors);
        for (int r = 0; r < tr->world; r++) {
            memcpy(rngs + 4 * r, all + 5 * r, 4 * sizeof *rngs);
            cursors[r] = all[5 * r + 4];
        }
        mome_ckpt_save_args a = {
            .step = tr->step,
            .tokens_seen = tr->tokens_seen,
            .world_size = tr->world,
            .config_text = tr->config_text,
            .tokenizer_hash = tr->ds.tokenizer_hash,
            .model_kind = tr->modular ? "modular" : "gpt",
            .table = full,
            .params = bufs[0],
            .adam_m = bufs[1],
            .adam_v = bufs[2],
            .adam_step = tr->opt.step,
            .n_streams = tr->world,
            .rng_states = rngs,
            .data_cursors = cursors,
        };
        double *kd_ce = NULL, *kd_kd = NULL;
        if (tr->kd.on) {
            a.kd_window = tr->alpha.window;
            kd_ce = mome_malloc(tr->alpha.window * sizeof(double));
            kd_kd = mome_malloc(tr->alpha.window * sizeof(double));
            mome_kd_alpha_export(&tr->alpha, kd_ce, kd_kd, &a.kd_count);
            a.kd_ce = kd_ce;
            a.kd_kd = kd_kd;
        }
        float *router = NULL;
        if (tr->kd.on && tr->kd.method == MOME_KD_METHOD_SAR) { /* the teacher's router, trained with the run */
            router = mome_malloc(3 * tr->kd.gate_n * sizeof(float));
            rc = mome_distill_router_state_get(&tr->kd, router, router + tr->kd.gate_n, router + 2 * tr->kd.gate_n,
                                               &a.router_step);
            a.router_n = tr->kd.gate_n;
            a.router_gate = router;
            a.router_m = router + tr->kd.gate_n;
            a.router_v = router + 2 * tr->kd.gate_n;
        }
        char path[1024];
        double t0 = mome_now();
        if (rc == MOME_OK) rc = check_finite(full, bufs, tr->step);
        if (rc == MOME_OK) rc = mome_ckpt_save(tr->ckpt_dir, &a, tr->cfg->checkpoint.keep, path, sizeof path);
        if (rc == MOME_OK && router) { /* and as a teacher checkpoint of its own, loadable as teacher.checkpoint */
            char dir[1100];
            snprintf(dir, sizeof dir, "%s/teacher_router", tr->ckpt_dir);
            rc = mome_distill_save_router(&tr->kd, dir);
        }
        mome_free(router);
        const double secs = mome_now() - t0;
        if (rc == MOME_OK)
            mome_info("checkpoint: %s (step %ld, %.2f s)", path, tr->step, secs);
        else
            mome_log(MOME_LOG_ERROR, "checkpoint at step %ld failed: %s", tr->step, mome_error_message());
        mome_monitor_publish(tr->mon, "mome.ckpt", tr->step,
                             json_pack("{s:s, s:b, s:f, s:o}", "path", rc == MOME_OK ? path : "", "ok", rc == MOME_OK,
                                       "seconds", secs,
                                       "error", rc == MOME_OK ? json_null() : json_string(mome_error_message())));
        mome_free(rngs);
        mome_free(cursors);
        mome_free(all);
        mome_free(kd_ce);
        mome_free(kd_kd);
    }
    for (int b = 0; b < 3; b++) mome_free(bufs[b]);
    MPI_Bcast(&rc, 1, MPI_INT, 0, tr->comm);
    return rc;
}

/* "dir/step_00001000.h5" -> 1000; -1 for any other name (a .tmp, a file named by the user). */
static long step_of_name(const char *path) {
    const char *name = strrchr(path, '/');
    name = name ? name + 1 : path;
    if (strncmp(name, "step_", 5) != 0 || !isdigit((unsigned char)name[5])) return -1;
    long v = 0;
    const char *p = name + 5;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > (LONG_MAX - 9) / 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return strcmp(p, ".h5") == 0 ? v : -1;
}

/* A checkpoint read into memory, not yet installed: every rank reads it, and it is installed only once every
 * rank has, so that a file one rank cannot read leaves all of them as they were (and free to try another). */
typedef struct {
    mome_ckpt_info info;
    float *params, *m, *v; /* the full table: every expert */
} loaded_ckpt;

static void loaded_free(loaded_ckpt *L) {
    mome_ckpt_info_free(&L->info);
    mome_free(L->params);
    mome_free(L->m);
    mome_free(L->v);
    memset(L, 0, sizeof *L);
}

/* Reads and checks a checkpoint; no collective, nothing of the trainer changes. Besides the loader's checks
 * (checksums, truncation, shapes), the attributes no checksum covers are checked against each other and
 * against the file's name, so that a flipped byte in the step counters is caught too. */
static int resume_read(const trainer *tr, const char *path, loaded_ckpt *L) {
    memset(L, 0, sizeof *L);
    int rc = mome_ckpt_read_info(path, &L->info);
    if (rc) return rc;
    const mome_ckpt_info *info = &L->info;
    const long named = step_of_name(path);
    if (named >= 0 && info->step != named) {
        rc = mome_error_set(MOME_ECORRUPT, "%s: damaged checkpoint: attribute step = %lld, but the file is named for "
                            "step %ld", path, (long long)info->step, named);
    } else if (info->step < 0 || info->adam_step < 0 || info->adam_step > info->step || info->tokens_seen < 0) {
        rc = mome_error_set(MOME_ECORRUPT, "%s: damaged checkpoint: step %lld, optimizer step %lld and tokens_seen "
                            "%lld do not fit together", path, (long long)info->step, (long long)info->adam_step,
                            (long long)info->tokens_seen);
    } else if (info->n_streams != info->world_size) {
        rc = mome_error_set(MOME_ECORRUPT, "%s: damaged checkpoint: /rng/state has %d rows, attribute world_size is %d",
                            path, info->n_streams, info->world_size);
    } else if (strcmp(info->tokenizer_hash, tr->ds.tokenizer_hash) != 0) {
        rc = mome_error_set(MOME_EMISMATCH, "%s: trained with tokenizer %s, but corpus %s has tokenizer %s", path,
                            info->tokenizer_hash, tr->ds.dir, tr->ds.tokenizer_hash);
    } else if (strcmp(info->model_kind, tr->modular ? "modular" : "gpt") != 0) {
        rc = mome_error_set(MOME_EMISMATCH, "%s: holds a '%s' model, this run trains '%s'", path, info->model_kind,
                            tr->modular ? "modular" : "gpt");
    } else if (tr->kd.on && info->kd_window > 0 && info->kd_window != tr->alpha.window) {
        rc = mome_error_set(MOME_EMISMATCH, "%s: distillation state: saved alpha window %zu, configured window %zu",
                            path, info->kd_window, tr->alpha.window);
    } else if (tr->kd.on && tr->kd.method == MOME_KD_METHOD_SAR && info->router_n != 0 &&
               info->router_n != tr->kd.gate_n) {
        rc = mome_error_set(MOME_EMISMATCH, "%s:/kd/router holds %zu floats, the teacher's gate has %zu", path,
                            info->router_n, tr->kd.gate_n);
    }
    if (rc == MOME_OK) {
        /* Every expert is read, and this rank's kept: resuming works on any number of ranks. */
        const size_t total = tr->full_table.total;
        L->params = mome_malloc(total * sizeof(float));
        L->m = mome_malloc(total * sizeof(float));
        L->v = mome_malloc(total * sizeof(float));
        rc = mome_ckpt_read_tensors(path, &tr->full_table, L->params, L->m, L->v);
    }
    if (rc) loaded_free(L);
    return rc;
}

/* Installs a checkpoint every rank has read: model, optimizer, step and per-rank state (collective for a
 * kd.method = sar teacher router). */
static int resume_apply(trainer *tr, const char *path, const loaded_ckpt *L) {
    const mome_ckpt_info *info = &L->info;
    mome_table_copy_experts(tr->table, tr->params, tr->par.expert_first, &tr->full_table, L->params, 0);
    mome_table_copy_experts(tr->table, tr->opt.m, tr->par.expert_first, &tr->full_table, L->m, 0);
    mome_table_copy_experts(tr->table, tr->opt.v, tr->par.expert_first, &tr->full_table, L->v, 0);
    tr->step = (long)info->step;
    tr->tokens_seen = info->tokens_seen;
    tr->opt.step = (long)info->adam_step;
    if (info->n_streams == tr->world) {
        memcpy(tr->rng.s, info->rng_states + 4 * tr->rank, sizeof tr->rng.s);
        tr->data_cursor = info->data_cursors[tr->rank];
    } else {
        /* Another world size wrote it: the samples are global, so only the per-rank streams are re-derived. */
        mome_rng_stream(&tr->rng, tr->cfg->train.seed, 0x7a11, (uint64_t)tr->rank + 1000003u * (uint64_t)info->step);
        tr->data_cursor = (uint64_t)info->step * (uint64_t)tr->accum * (uint64_t)tr->B_local;
        mome_info("resume: checkpoint written by %d ranks, continuing on %d", info->n_streams, tr->world);
    }
    int rc = MOME_OK;
    if (tr->kd.on && info->kd_window > 0) {
        rc = mome_kd_alpha_import(&tr->alpha, info->kd_ce, info->kd_kd, info->kd_window, info->kd_count);
        if (rc) rc = mome_error_wrap(rc, "%s: distillation state", path);
    }
    if (rc == MOME_OK && tr->kd.on && tr->kd.method == MOME_KD_METHOD_SAR) {
        /* every rank read the same file; the set call installs rank 0's copy wherever the teacher runs */
        if (info->router_n == tr->kd.gate_n)
            rc = mome_distill_router_state_set(&tr->kd, info->router_gate, info->router_m, info->router_v,
                                               info->router_step);
        else
            mome_warn("resume: %s holds no trained teacher router; kd.method = sar starts from the teacher's own",
                      path);
    }
    if (strcmp(info->config_text, tr->config_text) != 0)
        mome_warn("resume: the configuration differs from the one stored in %s; the run continues with the new "
                  "one (losses may not match an uninterrupted run)", path);
    return rc;
}

typedef struct {
    double aux, z, dropped_frac; /* means over the step's micro-batches */
} moe_step_stats;

/* Finite numbers as JSON reals, the others as null. */
static json_t *json_num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

typedef struct {
    double ce, kd;     /* mean CE and T^2 * KL per position over the step (NaN where not computed) */
    double alpha;      /* the CE weight used in this step */
    double bytes;      /* teacher target bytes rank 0 sent to the other ranks this step */
    double router;     /* kd.method = sar: the teacher router's loss before its steps (mean over micro-batches) */
    double on_policy;  /* kd.on_policy: share of the step's micro-batches the student sampled (NaN: off) */
} kd_step_stats;

static void log_step(trainer *tr, double loss, double ce, const moe_step_stats *ms, const kd_step_stats *ks,
                     float lr, double gnorm, double step_s, double tok_s, int skipped) {
    const mome_config *cfg = tr->cfg;
    if (tr->rank != 0) return;
    if (cfg->train.log_every > 0 && (tr->step % cfg->train.log_every == 0 || tr->step == cfg->train.steps ||
                                     tr->step == 1)) {
        double eta = step_s * (double)(cfg->train.steps - tr->step);
        char moe[256] = "";
        int off = 0;
        if (ks)
            off += snprintf(moe + off, sizeof moe - (size_t)off, " (ce %.4f kd %.4f alpha %.3f, teacher %.0f kB)",
                            ks->ce, ks->kd, ks->alpha, ks->bytes / 1e3);
        if (ms && !ks) off += snprintf(moe + off, sizeof moe - (size_t)off, " (ce %.4f)", ce);
        if (ms)
            snprintf(moe + off, sizeof moe - (size_t)off, " (aux %.3f z %.2f drop %.1f%%)", ms->aux, ms->z,
                     100.0 * ms->dropped_frac);
        mome_info("step %5ld/%ld | loss %.4f%s | lr %.2e | grad norm %.3f | %.0f ms | %.0f tok/s | eta %.0fs",
                  tr->step, cfg->train.steps, loss, moe, lr, gnorm, step_s * 1e3, tok_s, eta);
    }
    if (!tr->mon) return;
    const int has_moe = ms != NULL;
    json_t *o = json_object();
    json_object_set_new(o, "loss", json_num(loss));
    json_object_set_new(o, "ce", json_num(ks ? ks->ce : ce));
    json_object_set_new(o, "kd", ks ? json_num(ks->kd) : json_null());
    json_object_set_new(o, "aux", has_moe ? json_num(ms->aux) : json_null());
    json_object_set_new(o, "z_loss", has_moe ? json_num(ms->z) : json_null());
    json_object_set_new(o, "alpha", ks ? json_num(ks->alpha) : json_null());
    json_object_set_new(o, "lr", json_real((double)lr));
    json_object_set_new(o, "grad_norm", json_num(gnorm));
    json_object_set_new(o, "tokens_per_s", json_num(tok_s));
    json_object_set_new(o, "mfu", tr->sgemm_gflops > 0 ? json_num(tok_s * tr->flop_per_token / 1e9 / tr->sgemm_gflops)
                                                       : json_null());
    json_object_set_new(o, "step_ms", json_real(step_s * 1e3));
    json_object_set_new(o, "eta_s", json_num(step_s * (double)(cfg->train.steps - tr->step)));
    json_object_set_new(o, "tokens_seen", json_integer((json_int_t)tr->tokens_seen));
    json_object_set_new(o, "dropped_frac", has_moe ? json_num(ms->dropped_frac) : json_null());
    json_object_set_new(o, "teacher_bytes", ks ? json_num(ks->bytes) : json_null());
    json_object_set_new(o, "teacher_router_loss", ks ? json_num(ks->router) : json_null());
    json_object_set_new(o, "on_policy", ks ? json_num(ks->on_policy) : json_null());
    json_object_set_new(o, "skipped", json_boolean(skipped)); /* non-finite loss or gradients: no update */
    json_t *load = json_null();
    if (tr->modular) { /* one row: the share of the step's sequences each expert trunk received */
        double total = 0.0;
        for (int e = 0; e < tr->mod.cfg.n_experts; e++) total += tr->trunk_seqs[e];
        json_t *row = json_array();
        for (int e = 0; e < tr->mod.cfg.n_experts; e++)
            json_array_append_new(row, json_num(total > 0 ? tr->trunk_seqs[e] / total : NAN));
        load = json_pack("[o]", row);
        json_object_set_new(o, "router_agreement", tr->routing == MOME_SEQROUTE_ROUTER && tr->sr.n_routed > 0
                                                       ? json_real((double)tr->sr.n_agree / (double)tr->sr.n_routed)
                                                       : json_null());
    } else if (has_moe) { /* load fractions per layer and expert, of the step's last micro-batch */
        const int L = tr->model.cfg.n_layer, E = tr->model.cfg.n_experts;
        load = json_array();
        for (int l = 0; l < L; l++) {
            json_t *row = json_array();
            for (int e = 0; e < E; e++) json_array_append_new(row, json_num(tr->model.expert_load[l * E + e]));
            json_array_append_new(load, row);
        }
    }
    json_object_set_new(o, "expert_load", load);
    mome_monitor_publish(tr->mon, "mome.train", tr->step, o);
}

static json_t *domain_losses(const mome_eval_result *r) {
    json_t *loss = json_object();
    for (int d = 0; d < r->n_domains; d++) json_object_set_new(loss, r->name[d], json_num(r->loss[d]));
    return loss;
}

/* variants (n of them, results vr): the modular student's evaluation variants, added as "variants": {name:
 * {domain: loss}}. */
static void log_eval(trainer *tr, const mome_eval_result *r, const mome_modular_variant *v,
                     const mome_eval_result *vr, int n) {
    if (tr->rank != 0 || !tr->mon) return;
    json_t *ppl = json_object();
    for (int d = 0; d < r->n_domains; d++) json_object_set_new(ppl, r->name[d], json_num(exp(r->loss[d])));
    json_t *o = json_pack("{s:o, s:o}", "val_loss", domain_losses(r), "val_ppl", ppl);
    if (n > 0) {
        json_t *vars = json_object();
        for (int i = 0; i < n; i++) json_object_set_new(vars, v[i].name, domain_losses(&vr[i]));
        json_object_set_new(o, "variants", vars);
    }
    mome_monitor_publish(tr->mon, "mome.eval", tr->step, o);
}

/* The training routing's variant of a modular student. */
static mome_modular_variant routing_variant(const trainer *tr) {
    mome_modular_variant v = {.mode = tr->routing, .trunk = MOME_VARIANT_BY_MODE, .use_common = 1};
    snprintf(v.name, sizeof v.name, "%s",
             tr->routing == MOME_SEQROUTE_ROUTER ? "routed" : tr->routing == MOME_SEQROUTE_GOLD ? "gold" : "average");
    return v;
}

/* Validation loss per domain, as the run routes (r); with all_variants, a modular student is also evaluated every
 * other way (mome_modular_variants) and the table is printed on rank 0. */
static int run_eval_now(trainer *tr, mome_eval_result *r, int all_variants) {
    const long windows = (long)tr->cfg->train.eval_batches * tr->B;
    if (!tr->modular) {
        int rc = mome_evaluate(&tr->model, &tr->ds, tr->T, tr->B_local, windows, tr->comm, r);
        if (rc == MOME_OK) log_eval(tr, r, NULL, NULL, 0);
        return rc;
    }
    const mome_modular_variant mine = routing_variant(tr);
    int rc = mome_modular_evaluate(&tr->mod, &tr->sr, &mine, &tr->ds, tr->T, tr->B_local, windows, tr->comm, r);
    if (rc || !all_variants) {
        if (rc == MOME_OK) log_eval(tr, r, NULL, NULL, 0);
        return rc;
    }
    mome_modular_variant v[2 * MOME_MAX_DOMAINS + 4];
    const int n = mome_modular_variants(&tr->mod, &tr->sr, &tr->ds, v, (int)(sizeof v / sizeof v[0]));
    mome_eval_result *vr = mome_calloc((size_t)n, sizeof *vr);
    for (int i = 0; i < n && rc == MOME_OK; i++)
        rc = mome_modular_evaluate(&tr->mod, &tr->sr, &v[i], &tr->ds, tr->T, tr->B_local, windows, tr->comm, &vr[i]);
    if (rc == MOME_OK) {
        log_eval(tr, r, v, vr, n);
        if (tr->rank == 0) {
            mome_info("validation loss of every routing variant (rows) per domain:");
            mome_modular_variants_print(stdout, v, vr, n);
        }
    }
    mome_free(vr);
    return rc;
}

static int trainer_setup(trainer *tr, const mome_config *cfg, MPI_Comm comm, mome_watchdog *wd) {
    memset(tr, 0, sizeof *tr);
    tr->cfg = cfg;
    tr->comm = comm;
    tr->wd = wd;
    MPI_Comm_rank(comm, &tr->rank);
    MPI_Comm_size(comm, &tr->world);
    tr->T = cfg->model.seq_len;
    tr->B = cfg->train.batch_size;
    tr->accum = cfg->train.grad_accum;
    if (tr->B % tr->world != 0)
        return mome_error_set(MOME_ECONFIG, "[train] batch_size = %d is not divisible by the %d ranks", tr->B,
                              tr->world);
    tr->B_local = tr->B / tr->world;
    /* The data and, for a modular student, its trunks and router first: every rank agrees on them before the
     * collective set-up of the parallel layout. */
    tr->modular = cfg->modular.enabled;
    int rc = mome_dataset_open(&tr->ds, cfg->data.dir, cfg->data.domains);
    for (int d = 0; rc == MOME_OK && d < tr->ds.n_domains; d++)
        if (tr->ds.domains[d].n_train <= (size_t)tr->T + 1)
            rc = mome_error_set(MOME_EINVAL, "domain %s has %zu train tokens, too few for seq_len %d",
                                tr->ds.domains[d].name, tr->ds.domains[d].n_train, tr->T);
    if (rc == MOME_OK && tr->modular) rc = mome_modular_routing_open(cfg, &tr->ds, &tr->sr, &tr->routing);
    rc = agree(rc, comm);
    if (rc) return rc;
    mome_watchdog_tick(tr->wd, 0, "the start-up (building the model)");
    const int n_experts = tr->modular ? tr->sr.n_trunks : cfg->moe.n_experts;
    rc = mome_parallel_init(&tr->par, comm, cfg->parallel.ep, n_experts);
    if (rc) return rc;
    mome_gpt_config mc;
    mome_modular_config mmc;
    if (tr->modular) {
        rc = modular_config_from(cfg, tr->ds.vocab_size, tr->sr.n_trunks, &mmc);
        if (rc) return rc;
        rc = mome_modular_init_experts(&tr->mod, &mmc, tr->par.expert_first, tr->par.expert_count);
        if (rc) return rc;
        mome_modular_init_weights(&tr->mod, cfg->train.seed);
        if (tr->par.ep > 1) rc = mome_modular_set_dispatch(&tr->mod, &tr->par.dispatch);
        if (rc == MOME_OK) rc = mome_modular_reserve(&tr->mod, tr->B_local, tr->T);
        if (rc) return rc;
        tr->table = &tr->mod.table;
        tr->params = tr->mod.params;
        tr->grads = tr->mod.grads;
        tr->logits = tr->mod.logits;
        tr->n_dense = tr->mod.n_dense;
        tr->routes = mome_calloc((size_t)tr->B_local, sizeof *tr->routes);
        tr->domains = mome_calloc((size_t)tr->B_local, sizeof *tr->domains);
        mc.vocab_size = mmc.vocab_size;
        mc.d_ff = mmc.d_ff;
    } else {
        rc = model_config_from(cfg, tr->ds.vocab_size, &mc);
        if (rc) return rc;
        rc = mome_gpt_init_experts(&tr->model, &mc, tr->par.expert_first, tr->par.expert_count);
        if (rc) return rc;
        mome_gpt_init_weights(&tr->model, cfg->train.seed);
        /* MoE routing statistics (capacity, load balance) over the whole global batch, and experts reached
         * through the dispatch when they are spread over several ranks. */
        if (mc.n_experts > 0 && tr->world > 1)
            mome_gpt_set_parallel(&tr->model, comm, tr->par.ep > 1 ? &tr->par.dispatch : NULL);
        rc = mome_gpt_reserve(&tr->model, tr->B_local, tr->T);
        if (rc) return rc;
        tr->table = &tr->model.table;
        tr->params = tr->model.params;
        tr->grads = tr->model.grads;
        tr->logits = tr->model.logits;
        tr->n_dense = tr->model.n_dense;
    }
    mome_table_with_experts(tr->table, n_experts, &tr->full_table);
    mome_watchdog_tick(tr->wd, 0, "the start-up (loading the teacher)");
    rc = mome_distill_init(&tr->kd, cfg, tr->ds.tokenizer_hash, tr->ds.vocab_size, tr->B_local, tr->T, comm);
    if (rc) return rc;
    tr->schedule = strcmp(cfg->kd.schedule, "alternating") == 0 ? MOME_KD_ALTERNATING : MOME_KD_COMBINED;
    rc = mome_kd_alpha_init(&tr->alpha,
                            strcmp(cfg->kd.alpha_mode, "adaptive") == 0 ? MOME_KD_ALPHA_ADAPTIVE : MOME_KD_ALPHA_FIXED,
                            cfg->kd.alpha, mome_kd_alpha_window((uint64_t)cfg->train.steps));
    if (rc) return rc;
    mome_adamw_config oc = {
        .lr = cfg->train.lr,
        .min_lr = cfg->train.min_lr,
        .warmup_steps = cfg->train.warmup_steps,
        .total_steps = (int)cfg->train.steps,
        .beta1 = cfg->train.beta1,
        .beta2 = cfg->train.beta2,
        .eps = cfg->train.eps,
        .weight_decay = cfg->train.weight_decay,
        .grad_clip = cfg->train.grad_clip,
    };
    rc = mome_adamw_init(&tr->opt, &oc, tr->table->total);
    if (rc) return rc;
    mome_rng_stream(&tr->rng, cfg->train.seed, 0x7a11, (uint64_t)tr->rank);
    if (cfg->kd.on_policy > 0.0f) {
        mome_rng r;
        mome_rng_stream(&r, cfg->train.seed, ON_POLICY_STREAM, 0);
        tr->on_policy_seed = mome_rng_u64(&r);
        tr->on_policy_from = tr->T - (cfg->kd.on_policy_tokens > 0 ? cfg->kd.on_policy_tokens : tr->T / 4);
    }

    /* The resolved config records what the model really is (vocabulary, MLP width). */
    mome_config resolved = *cfg;
    resolved.model.vocab_size = mc.vocab_size;
    resolved.model.d_ff = mc.d_ff;
    if (tr->modular) { /* the trunks by name and depth, so that the checkpoint describes itself */
        resolved.modular.trunk_layers = mmc.trunk_layers;
        resolved.modular.experts[0] = 0;
        for (int e = 0; e < tr->sr.n_trunks; e++)
            snprintf(resolved.modular.experts + strlen(resolved.modular.experts),
                     sizeof resolved.modular.experts - strlen(resolved.modular.experts), "%s%s", e ? "," : "",
                     tr->sr.names[e]);
    }
    snprintf(resolved.train.resume, sizeof resolved.train.resume, "none");
    tr->config_text = mome_config_to_string(&resolved);

    snprintf(tr->ckpt_dir, sizeof tr->ckpt_dir, "%s/%s", cfg->checkpoint.dir, cfg->train.run_name);
    snprintf(tr->run_dir, sizeof tr->run_dir, "runs/%s", cfg->train.run_name);
    return MOME_OK;
}

static void trainer_free(trainer *tr) {
    if (tr->mon) {
        mome_log_set_hook(NULL, NULL);
        mome_monitor_close(tr->mon);
    }
    if (tr->par.ep > 0) mome_parallel_free(&tr->par);
    mome_free(tr->config_text);
    mome_adamw_free(&tr->opt);
    mome_distill_free(&tr->kd);
    mome_kd_alpha_free(&tr->alpha);
    mome_gpt_free(&tr->model);
    mome_modular_free(&tr->mod);
    mome_seq_router_free(&tr->sr);
    mome_free(tr->routes);
    mome_free(tr->domains);
    mome_dataset_close(&tr->ds);
}

static const char *level_name(mome_log_level l) {
    return l == MOME_LOG_ERROR ? "error" : l == MOME_LOG_WARN ? "warn" : l == MOME_LOG_INFO ? "info" : "debug";
}

/* Rank 0's log lines, also as mome.log records. */
static void log_to_monitor(mome_log_level level, const char *message, void *ctx) {
    trainer *tr = ctx;
    mome_monitor_publish(tr->mon, "mome.log", tr->step,
                         json_pack("{s:s, s:s}", "level", level_name(level), "message", message));
}

/* Rank 0: metrics.jsonl, the stream, its mome.meta record, and the log hook. */
static int open_monitor(trainer *tr) {
    const mome_config *cfg = tr->cfg;
    const mome_monitor_config mc = {.bind = cfg->monitor.bind, .curve_secret_key = cfg->monitor.curve_secret_key,
                                    .insecure = cfg->monitor.insecure, .hwm = cfg->monitor.hwm,
                                    .sndbuf = cfg->monitor.sndbuf,
                                    .linger_ms = cfg->monitor.linger_ms,
                                    .meta_every_s = cfg->monitor.meta_every_s};
    int rc = mome_monitor_open(&tr->mon, &mc, tr->run_dir, cfg->train.run_name, tr->step);
    if (rc) return rc;
    json_t *model;
    if (tr->modular) {
        const mome_modular_config *g = &tr->mod.cfg;
        tr->flop_per_token = 3.0 * mome_modular_flops_per_token(g, tr->T);
        json_t *trunks = json_array();
        for (int e = 0; e < tr->sr.n_trunks; e++) json_array_append_new(trunks, json_string(tr->sr.names[e]));
        model = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:o, s:s}", "kind", "modular", "trunk_layers",
                          g->trunk_layers, "d_model", g->d_model, "n_head", g->n_head, "vocab_size", g->vocab_size,
                          "seq_len", g->seq_len, "n_experts", g->n_experts, "common", g->common, "trunks", trunks,
                          "routing", cfg->modular.routing);
    } else {
        const mome_gpt_config *g = &tr->model.cfg;
        tr->flop_per_token = 3.0 * mome_gpt_flops_per_token(g, tr->T);
        model = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i}", "kind", "gpt", "n_layer", g->n_layer,
                          "d_model", g->d_model, "n_head", g->n_head, "vocab_size", g->vocab_size, "seq_len",
                          g->seq_len, "n_experts", g->n_experts, "top_k", g->top_k);
    }
    if (cfg->monitor.sgemm_probe) tr->sgemm_gflops = mome_bench_sgemm_gflops(0.3) * tr->world;
    json_t *domains = json_array();
    for (int d = 0; d < tr->ds.n_domains; d++) json_array_append_new(domains, json_string(tr->ds.domains[d].name));
    json_t *meta = json_object();
    json_object_set_new(meta, "config", json_string(tr->config_text));
    json_object_set_new(meta, "n_params", json_integer((json_int_t)tr->full_table.total));
    json_object_set_new(meta, "world", json_integer(tr->world));
    json_object_set_new(meta, "threads", json_integer(omp_get_max_threads()));
    json_object_set_new(meta, "steps", json_integer((json_int_t)cfg->train.steps));
    json_object_set_new(meta, "start_step", json_integer((json_int_t)tr->step));
    json_object_set_new(meta, "tokens_per_step", json_integer((json_int_t)tr->B * tr->T * tr->accum));
    json_object_set_new(meta, "flop_per_token", json_real(tr->flop_per_token));
    json_object_set_new(meta, "sgemm_gflops", tr->sgemm_gflops > 0 ? json_real(tr->sgemm_gflops) : json_null());
    json_object_set_new(meta, "model", model);
    json_object_set_new(meta, "domains", domains);
    json_object_set_new(meta, "teacher", cfg->teacher.checkpoint[0] ? json_string(cfg->teacher.checkpoint)
                                                                     : json_null());
    mome_monitor_set_meta(tr->mon, tr->step, meta);
    mome_log_set_hook(log_to_monitor, tr);
    return MOME_OK;
}

static int cmp_long_desc(const void *a, const void *b) {
    const long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

/* The step_XXXXXXXX.h5 files of dir, newest first (*n of them; NULL when none or no directory). */
static long *step_files(const char *dir, int *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    int cap = 16;
    long *steps = mome_malloc((size_t)cap * sizeof *steps);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const long s = step_of_name(e->d_name);
        if (s < 0) continue;
        if (*n == cap) {
            long *bigger = mome_malloc(2 * (size_t)cap * sizeof *bigger);
            memcpy(bigger, steps, (size_t)cap * sizeof *steps);
            mome_free(steps);
            steps = bigger;
            cap *= 2;
        }
        steps[(*n)++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)*n, sizeof *steps, cmp_long_desc);
    return steps;
}

static void append_line(char **text, size_t *len, const char *line) {
    const size_t add = strlen(line) + 1;
    char *bigger = mome_malloc(*len + add + 1);
    if (*len) memcpy(bigger, *text, *len);
    memcpy(bigger + *len, line, add - 1);
    bigger[*len + add - 1] = '\n';
    bigger[*len + add] = 0;
    mome_free(*text);
    *text = bigger;
    *len += add;
}

/* Rank 0, resume=auto: the checkpoints to try, newest first, one path a line ("" when there is none). First
 * the one `latest` names, then the older step files of the directory, so that a damaged newest checkpoint
 * falls back to the previous one (never to a newer one: `latest` may have been pointed back on purpose).
 * Without a `latest`, or with one that names nothing usable, every step file, newest first: a job killed
 * between renaming a checkpoint into place and updating `latest` left a complete file that nothing names. */
static int auto_candidates(const char *dir, char **text) {
    size_t len = 0;
    *text = NULL;
    char path[1024];
    int n = 0;
    long *steps = step_files(dir, &n);
    long below = LONG_MAX; /* step files below this step are candidates */
    int rc = mome_ckpt_latest(dir, path, sizeof path);
    if (rc == MOME_OK) {
        append_line(text, &len, path);
        const long s = step_of_name(path);
        if (s >= 0) below = s;
    } else if (rc == MOME_ENOENT) {
        if (n > 0)
            mome_warn("resume: %s has no 'latest' but holds %d checkpoint file(s) (a job stopped between writing "
                      "one and updating 'latest'?); trying them newest first", dir, n);
    } else {
        if (n == 0) {
            mome_free(steps);
            return rc;
        }
        mome_warn("resume: %s; trying the checkpoint files of %s instead, newest first", mome_error_message(), dir);
    }
    for (int i = 0; i < n; i++) {
        if (steps[i] >= below) continue;
        snprintf(path, sizeof path, "%s/step_%08ld.h5", dir, steps[i]);
        append_line(text, &len, path);
    }
    mome_free(steps);
    if (!*text) append_line(text, &len, "");
    return MOME_OK;
}

/* Errors after which resume=auto tries the previous checkpoint: the file is damaged, truncated, not a
 * checkpoint, or gone. A checkpoint of another model or corpus (MOME_EMISMATCH) stops the run instead: the
 * older ones would be refused as well, and the message would be lost. */
static int damaged_error(int rc) {
    return rc == MOME_ECORRUPT || rc == MOME_EFORMAT || rc == MOME_ENOENT || rc == MOME_EIO;
}

static int trainer_resume(trainer *tr) {
    const char *resume = tr->cfg->train.resume;
    if (strcmp(resume, "none") == 0) return MOME_OK;
    const int is_auto = strcmp(resume, "auto") == 0;
    /* The candidates, decided by rank 0 alone and broadcast: every rank tries the same files in the same order. */
    char *list = NULL;
    long len = 0;
    int rc = MOME_OK;
    if (tr->rank == 0) {
        if (is_auto)
            rc = auto_candidates(tr->ckpt_dir, &list);
        else
            list = mome_strdup(resume);
        len = list ? (long)strlen(list) + 1 : 0;
    }
    rc = agree(rc, tr->comm);
    if (rc) return rc;
    MPI_Bcast(&len, 1, MPI_LONG, 0, tr->comm);
    if (tr->rank != 0) list = mome_malloc((size_t)len);
    MPI_Bcast(list, (int)len, MPI_CHAR, 0, tr->comm);
    if (is_auto && list[0] == '\n') {
        mome_info("resume=auto: no checkpoint in %s yet, starting from scratch", tr->ckpt_dir);
        mome_free(list);
        return MOME_OK;
    }
    int tried = 0;
    char first_error[1024] = "";
    rc = MOME_ENOENT;
    for (char *path = list, *next; *path; path = next) {
        next = path + strcspn(path, "\n");
        if (*next) *next++ = 0;
        if (!*path) continue;
        loaded_ckpt L;
        mome_watchdog_tick(tr->wd, 0, "the start-up (reading a checkpoint to resume from)");
        int mine = resume_read(tr, path, &L);
        tried++;
        /* [any rank failed, any rank failed for a reason other than damage] */
        int verdict[2] = {mine != MOME_OK, mine != MOME_OK && (!damaged_error(mine) || !is_auto)};
        MPI_Allreduce(MPI_IN_PLACE, verdict, 2, MPI_INT, MPI_MAX, tr->comm);
        if (!verdict[0]) {
            rc = resume_apply(tr, path, &L);
            loaded_free(&L);
            if (rc == MOME_OK)
                mome_info("resumed from %s at step %ld%s", path, tr->step,
                          tried > 1 ? " (the newer checkpoint(s) above could not be read)" : "");
            break;
        }
        if (mine == MOME_OK) loaded_free(&L);
        /* Rank 0 speaks for all when it failed too (usually the same message on every rank). */
        int rank0 = mine;
        MPI_Bcast(&rank0, 1, MPI_INT, 0, tr->comm);
        if (verdict[1]) {
            rc = mine != MOME_OK ? mine : mome_error_set(MOME_EIO, "stopping because another rank could not read %s "
                                                         "(its message is above)", path);
            break;
        }
        if (mine != MOME_OK && (tr->rank == 0 || rank0 == MOME_OK))
            mome_warn("resume: %s; trying the previous checkpoint", mome_error_message());
        if (!first_error[0] && mine != MOME_OK) snprintf(first_error, sizeof first_error, "%s", mome_error_message());
        rc = mome_error_set(MOME_ECORRUPT, "resume=auto: none of the %d checkpoint(s) of %s reads back intact (the "
                            "newest: %s); train.resume=none starts from scratch", tried, tr->ckpt_dir,
                            first_error[0] ? first_error : "unreadable on another rank");
    }
    mome_free(list);
    return rc;
}

/* Rank 0, before training: an interrupted checkpoint (a killed job, a full disk) can leave a
 * step_XXXXXXXX.h5.tmp or a latest.tmp.<pid> in the run's checkpoint directories; nothing reads them, and on
 * a full disk their space is what the next checkpoint needs. */
static void remove_stale_temporaries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        const size_t len = strlen(n);
        const int ckpt_tmp = strncmp(n, "step_", 5) == 0 && len > 7 && strcmp(n + len - 7, ".h5.tmp") == 0;
        if (!ckpt_tmp && strncmp(n, "latest.tmp.", 11) != 0) continue;
        char path[1400];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, n);
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && unlink(path) == 0)
            mome_info("removed %s, left by an interrupted checkpoint", path);
    }
    closedir(d);
}

/* The watchdog's clock restarts when a checkpoint or an evaluation begins and again when it ends, so that each
 * gets the whole timeout and the step after it too. */
static int save_checkpoint(trainer *tr) {
    mome_watchdog_tick(tr->wd, tr->step, "a checkpoint");
    const int rc = save_checkpoint_now(tr);
    mome_watchdog_tick(tr->wd, tr->step, "the step after a checkpoint");
    return rc;
}

static int run_eval(trainer *tr, mome_eval_result *r, int all_variants) {
    mome_watchdog_tick(tr->wd, tr->step, "an evaluation");
    const int rc = run_eval_now(tr, r, all_variants);
    mome_watchdog_tick(tr->wd, tr->step, "the step after an evaluation");
    return rc;
}

int mome_train(const mome_config *cfg, MPI_Comm comm) {
    /* The watchdog covers the start-up too: a rank stuck reading the data, the teacher or a checkpoint (a hung
     * network file system) would otherwise hold the allocation as long as one stuck in a collective. */
    mome_watchdog *wd = NULL;
    if (cfg->train.watchdog > 0) {
        int rank;
        MPI_Comm_rank(comm, &rank);
        wd = mome_watchdog_start(cfg->train.watchdog, rank);
        if (!wd) MOME_FATAL("%s", mome_error_message());
        mome_watchdog_tick(wd, 0, "the start-up (opening the data)");
    }
    trainer tr;
    int rc = agree(trainer_setup(&tr, cfg, comm, wd), comm);
    if (rc == MOME_OK && tr.rank == 0) {
        char sub[700];
        snprintf(sub, sizeof sub, "%s/teacher_router", tr.ckpt_dir);
        remove_stale_temporaries(tr.ckpt_dir);
        remove_stale_temporaries(sub);
    }
    if (rc == MOME_OK) rc = agree(trainer_resume(&tr), comm);
    mome_watchdog_tick(wd, tr.step, "the start-up (opening the monitor stream)");
    if (rc == MOME_OK && tr.rank == 0) rc = open_monitor(&tr);
    rc = agree(rc, comm);
    if (rc) {
        mome_watchdog_stop(wd);
        trainer_free(&tr);
        return rc;
    }
    const int T = tr.T, Bl = tr.B_local;
    const int V = tr.ds.vocab_size;
    if (tr.rank == 0 && tr.modular) {
        const mome_modular_config *mc = &tr.mod.cfg;
        mome_info("model: modular, %d expert trunks (%s)%s of %d layers, d_model %d, %d heads, d_ff %d, vocab %d, "
                  "seq_len %d: %.2fM parameters; routing: %s",
                  mc->n_experts, cfg->modular.experts[0] ? cfg->modular.experts : "the data's domains",
                  mc->common ? " + a common trunk" : "", mc->trunk_layers, mc->d_model, mc->n_head, mc->d_ff,
                  mc->vocab_size, mc->seq_len, (double)tr.full_table.total / 1e6, cfg->modular.routing);
    } else if (tr.rank == 0) {
        const mome_gpt_config *mc = &tr.model.cfg;
        mome_info("model: gpt, %d layers, d_model %d, %d heads, d_ff %d, vocab %d, seq_len %d: %.2fM parameters",
                  mc->n_layer, mc->d_model, mc->n_head, mc->d_ff, mc->vocab_size, mc->seq_len,
                  (double)tr.full_table.total / 1e6);
    }
    if (tr.rank == 0) {
        mome_info("data: %s, %d domains; batch %d x %d tokens x %d accumulation over %d rank(s), %d thread(s) each",
                  tr.ds.dir, tr.ds.n_domains, tr.B, T, tr.accum, tr.world, omp_get_max_threads());
    }

    struct sigaction sa, old_term, old_usr1;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGUSR1, &sa, &old_usr1);
    stop_signal = 0;

    mome_eval_result before = {0}, after = {0};
    int have_before = 0;
    if (tr.step == 0) {
        run_eval(&tr, &before, 0);
        have_before = 1;
        if (tr.rank == 0) {
            mome_info("validation before training:");
            mome_eval_print(stdout, NULL, &before);
        }
    }

    int32_t *buf = mome_malloc((size_t)Bl * (size_t)(T + 1) * sizeof *buf);
    int32_t *inp = mome_malloc((size_t)Bl * (size_t)T * sizeof *inp);
    int32_t *tgt = mome_malloc((size_t)Bl * (size_t)T * sizeof *tgt);
    const float grad_scale = 1.0f / ((float)tr.B * (float)T * (float)tr.accum);
    const int every = cfg->checkpoint.every;
    const int eval_every = cfg->train.eval_every;
    const long steps = cfg->train.steps;
    const int sequential = strcmp(cfg->data.order, "sequential") == 0;
    const int nonfinite_stop = strcmp(cfg->train.nonfinite, "stop") == 0;
    const fault_injection inject = fault_injection_get(tr.rank);
    int stopped = 0, failed = 0, nonfinite_run = 0;

    while (tr.step < steps) {
        mome_watchdog_tick(tr.wd, tr.step + 1, "a training step");
        double t0 = mome_now();
        mome_zero(tr.grads, tr.table->total);
        for (int e = 0; e < MOME_MAX_DOMAINS; e++) tr.trunk_seqs[e] = 0.0;
        double loss_sum = 0.0, aux_sum = 0.0, z_sum = 0.0, drop_sum = 0.0;
        /* With a teacher: the weighted objective in loss_sum, and its parts (summed over rows) for the log and the
         * adaptive alpha: [ce_sum, ce_rows, kl_sum, kl_rows]. */
        double parts[4] = {0, 0, 0, 0};
        int on_policy_micro = 0; /* micro-batches the student sampled */
        const double alpha = mome_kd_alpha_get(&tr.alpha);
        size_t kd_bytes = 0;
        double router_sum[2] = {0, 0}; /* sar: the last router loss, and the step's sum */
        for (int micro = 0; micro < tr.accum; micro++) {
            uint64_t base = ((uint64_t)tr.step * (uint64_t)tr.accum + (uint64_t)micro) * (uint64_t)tr.B +
                            (uint64_t)tr.rank * (uint64_t)Bl;
            for (int b = 0; b < Bl; b++) {
                int32_t *row = buf + (size_t)b * (T + 1);
                int d = -1;
                if (sequential) { /* phase p of n_domains trains domain p only */
                    d = (int)((tr.step * (long)tr.ds.n_domains) / steps);
                    mome_dataset_sample_from(&tr.ds, d, cfg->train.seed, base + (uint64_t)b, T, row);
                } else {
                    mome_dataset_sample(&tr.ds, cfg->train.seed, base + (uint64_t)b, T, row, &d);
                }
                if (tr.domains) tr.domains[b] = d;
                memcpy(inp + (size_t)b * T, row, (size_t)T * sizeof *inp);
                memcpy(tgt + (size_t)b * T, row + 1, (size_t)T * sizeof *tgt);
            }
            tr.data_cursor += (uint64_t)Bl;
            float w_ce = 1.0f, w_kd = 0.0f;
            if (tr.kd.on)
                mome_kd_weights(tr.schedule, alpha, (uint64_t)tr.step * (uint64_t)tr.accum + (uint64_t)micro, &w_ce,
                                &w_kd);
            /* On-policy (GKD): on a share of the KD micro-batches, the student writes the end of each sequence
             * itself and the teacher scores it; the coin is a function of (seed, micro-batch), the same on every
             * rank, so they all generate together (the MoE forward is collective). No CE on the student's tokens. */
            const uint64_t global_micro = (uint64_t)tr.step * (uint64_t)tr.accum + (uint64_t)micro;
            if (w_kd > 0.0f && cfg->kd.on_policy > 0.0f && on_policy_coin(tr.on_policy_seed, global_micro) <
                                                               cfg->kd.on_policy) {
                rc = mome_generate_rows(&tr.model, inp, Bl, T, tr.on_policy_from, cfg->kd.on_policy_temperature,
                                        tr.on_policy_seed, global_micro, base);
                if (rc) MOME_FATAL("on-policy sampling: %s", mome_error_message());
                for (int b = 0; b < Bl; b++)
                    for (int t = tr.on_policy_from - 1; t < T; t++) tgt[(size_t)b * T + t] = -1;
                on_policy_micro++;
            }
            if (tr.modular) {
                mome_seq_router_route(&tr.sr, tr.routing, inp, tr.domains, Bl, T, tr.routes);
                for (int b = 0; b < Bl; b++) {
                    if (tr.routes[b] >= 0) tr.trunk_seqs[tr.routes[b]] += 1.0;
                    if (tr.routes[b] == MOME_ROUTE_ALL)
                        for (int e = 0; e < tr.mod.cfg.n_experts; e++) tr.trunk_seqs[e] += 1.0;
                }
                mome_modular_forward(&tr.mod, inp, tr.routes, Bl, T);
            } else {
                mome_gpt_forward(&tr.model, inp, Bl, T);
            }
            if (w_kd > 0.0f) {
                /* Student-aware router: one step of the teacher's gate toward what helps this student (its logits
                 * of this micro-batch), then the targets from the updated teacher. */
                if (tr.kd.method == MOME_KD_METHOD_SAR) {
                    rc = agree(mome_distill_router_step(&tr.kd, inp, tr.logits, base, &router_sum[0]), comm);
                    if (rc == MOME_ENONFINITE)
                        mome_warn("step %ld: non-finite teacher router loss, router step skipped", tr.step + 1);
                    else if (rc)
                        MOME_FATAL("teacher router step: %s", mome_error_message());
                    router_sum[1] += router_sum[0];
                }
                rc = agree(mome_distill_targets(&tr.kd, inp, base), comm);
                if (rc) MOME_FATAL("teacher targets: %s", mome_error_message());
                kd_bytes += tr.kd.bytes_sent;
            }
            if (tr.kd.on) {
                mome_kd_sums ks;
                loss_sum += mome_distill_loss(&tr.kd, tr.logits, &ks, tgt, w_ce, w_kd, grad_scale);
                parts[0] += ks.ce_sum;
                parts[1] += (double)ks.n_valid;
                parts[2] += ks.kl_sum;
                parts[3] += (double)ks.n_kd;
            } else {
                size_t valid = 0;
                loss_sum += mome_xent_forward_backward(tr.logits, tgt, (size_t)Bl * T, V, grad_scale, &valid);
            }
            if (tr.modular) {
                mome_modular_backward(&tr.mod, inp, tr.routes, Bl, T);
            } else {
                /* The MoE losses are means over the global micro-batch; each micro-batch weighs 1/accum. */
                mome_gpt_backward_ex(&tr.model, inp, Bl, T, 1.0f / (float)tr.accum);
                aux_sum += tr.model.aux_loss;
                z_sum += tr.model.z_loss;
                drop_sum += tr.model.dropped_frac;
            }
        }
        if (tr.modular && tr.world > 1)
            MPI_Allreduce(MPI_IN_PLACE, tr.trunk_seqs, tr.mod.cfg.n_experts, MPI_DOUBLE, MPI_SUM, comm);
        if (fault_now(&inject, tr.step + 1, FAULT_LOSS)) loss_sum = inject.value;
        if (fault_now(&inject, tr.step + 1, FAULT_GRAD)) tr.grads[0] = (float)inject.value;
        rc = mome_parallel_allreduce_grads(&tr.par, tr.grads, tr.n_dense, tr.table->total);
        if (rc) MOME_FATAL("%s", mome_error_message());
        if (tr.world > 1) MPI_Allreduce(MPI_IN_PLACE, &loss_sum, 1, MPI_DOUBLE, MPI_SUM, comm);
        if (tr.world > 1 && tr.kd.on) MPI_Allreduce(MPI_IN_PLACE, parts, 4, MPI_DOUBLE, MPI_SUM, comm);
        double ce = loss_sum / ((double)tr.B * T * tr.accum);
        kd_step_stats ks = {NAN, NAN, alpha, (double)kd_bytes,
                            tr.kd.on && tr.kd.method == MOME_KD_METHOD_SAR ? router_sum[1] / tr.accum : NAN,
                            cfg->kd.on_policy > 0.0f ? (double)on_policy_micro / tr.accum : NAN};
        if (tr.kd.on) {
            const double T2 = (double)cfg->kd.temperature * (double)cfg->kd.temperature;
            ks.ce = parts[1] > 0 ? parts[0] / parts[1] : NAN;
            ks.kd = parts[3] > 0 ? T2 * parts[2] / parts[3] : NAN;
            if (isfinite(ks.ce) && isfinite(ks.kd)) mome_kd_alpha_push(&tr.alpha, ks.ce, ks.kd);
        }
        double aux = aux_sum / tr.accum, zl = z_sum / tr.accum;
        double loss = ce + (double)cfg->moe.aux_coef * aux + (double)cfg->moe.z_coef * zl;
        double gnorm = mome_parallel_grad_norm(&tr.par, tr.grads, tr.n_dense, tr.table->total);
        float clip = 1.0f;
        if (cfg->train.grad_clip > 0 && gnorm > cfg->train.grad_clip) clip = (float)(cfg->train.grad_clip / (gnorm + 1e-6));
        float lr = mome_lr_at(&tr.opt.cfg, tr.step);
        /* A NaN or Inf in the loss or the gradients: no update on any rank (one verdict for all, so that the
         * replicated weights stay identical), then skip the step or stop, as train.nonfinite says. */
        int nonfinite = !isfinite(loss) || !isfinite(gnorm);
        if (tr.world > 1) MPI_Allreduce(MPI_IN_PLACE, &nonfinite, 1, MPI_INT, MPI_MAX, comm);
        if (!nonfinite) {
            mome_adamw_update(&tr.opt, tr.table, tr.params, tr.grads, lr, clip);
            nonfinite_run = 0;
        } else {
            nonfinite_run++;
            failed = nonfinite_stop || (cfg->train.nonfinite_limit > 0 && nonfinite_run >= cfg->train.nonfinite_limit);
            if (tr.rank == 0)
                mome_warn("step %ld: non-finite %s (loss %g, gradient norm %g): update skipped%s", tr.step + 1,
                          !isfinite(loss) && !isfinite(gnorm) ? "loss and gradients"
                          : !isfinite(loss)                   ? "loss"
                                                              : "gradients",
                          loss, gnorm, failed ? "" : nonfinite_run > 1 ? ", again" : "");
        }
        if (fault_now(&inject, tr.step + 1, FAULT_PARAM)) tr.params[0] = (float)inject.value;
        tr.step++;
        tr.tokens_seen += (int64_t)tr.B * T * tr.accum;
        double dt = mome_now() - t0;
        moe_step_stats ms = {aux, zl, drop_sum / tr.accum};
        log_step(&tr, loss, ce, cfg->moe.n_experts > 0 ? &ms : NULL, tr.kd.on ? &ks : NULL, lr, gnorm, dt,
                 (double)tr.B * T * tr.accum / dt, nonfinite);
        mome_monitor_poll(tr.mon, tr.step);
        if (failed) {
            char latest[1024] = "";
            const int have = mome_ckpt_latest(tr.ckpt_dir, latest, sizeof latest) == MOME_OK;
            rc = mome_error_set(MOME_ENONFINITE, "step %ld: non-finite loss or gradients%s: stopping without a "
                                "checkpoint (%s%s)", tr.step, nonfinite_stop ? " and train.nonfinite = stop" : "",
                                have ? "the newest checkpoint stays " : "there is no checkpoint yet", latest);
            if (!nonfinite_stop)
                rc = mome_error_wrap(rc, "%d non-finite steps in a row (train.nonfinite_limit = %d)", nonfinite_run,
                                     cfg->train.nonfinite_limit);
            if (tr.rank == 0) mome_log(MOME_LOG_ERROR, "%s", mome_error_message());
            break;
        }

        if (eval_every > 0 && tr.step % eval_every == 0 && tr.step < steps) {
            mome_eval_result r;
            run_eval(&tr, &r, 0);
            if (tr.rank == 0) {
                char line[1024];
                int off = snprintf(line, sizeof line, "eval step %ld |", tr.step);
                for (int d = 0; d < r.n_domains && off < (int)sizeof line; d++)
                    off += snprintf(line + off, sizeof line - (size_t)off, " %s %.4f", r.name[d], r.loss[d]);
                mome_info("%s", line);
            }
        }
        int sig = stop_signal, any = 0;
        MPI_Allreduce(&sig, &any, 1, MPI_INT, MPI_MAX, comm);
        if (any) {
            mome_info("signal %d received: checkpointing at step %ld and stopping", any, tr.step);
            rc = save_checkpoint(&tr);
            stopped = 1;
            break;
        }
        if (every > 0 && tr.step % every == 0 && tr.step < steps) save_checkpoint(&tr);
    }
    if (!stopped && !failed) {
        if (tr.rank == 0) mome_info("validation after %ld steps:", tr.step);
        run_eval(&tr, &after, 1);
        if (tr.rank == 0) mome_eval_print(stdout, have_before ? &before : NULL, &after);
        rc = save_checkpoint(&tr);
    }
    mome_watchdog_stop(tr.wd);
    tr.wd = NULL;
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    mome_free(buf);
    mome_free(inp);
    mome_free(tgt);
    if (tr.mon) {
        const char *status = rc != MOME_OK ? "failed" : stopped ? "stopped" : "completed";
        const int code = rc == MOME_ENONFINITE ? MOME_EXIT_NONFINITE : rc != MOME_OK ? 1
                         : stopped                 ? MOME_EXIT_STOPPED
                                                   : 0;
        mome_monitor_publish(tr.mon, "mome.end", tr.step,
                             json_pack("{s:s, s:i, s:I}", "status", status, "exit_code", code, "published",
                                       (json_int_t)mome_monitor_published(tr.mon) + 1));
    }
    trainer_free(&tr);
    if (rc == MOME_OK && stopped) rc = mome_error_set(MOME_ESTOP, "stopped by signal after a checkpoint");
    return rc;
}
