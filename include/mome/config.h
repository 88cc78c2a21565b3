/* config.h — the run configuration: INI files (inih) with `section.key=value` overrides.
 *
 * One schema table in config.c lists every key with its type, default, allowed range and a line of help;
 * parsing, overrides, validation, `mome train --help-config` and the resolved text stored in checkpoints are
 * all driven by it. An unknown section or key, a value of the wrong type or out of range is an error that
 * names the file and line (or the override) and what was expected.
 */
#ifndef MOME_CONFIG_H
#define MOME_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define MOME_CFG_STR 256

typedef struct {
    /* [model] */
    int vocab_size;  /* 0: take it from the tokenizer; otherwise must equal it */
    int seq_len;     /* tokens per training sequence (and learned positions) */
    int n_layer;
    int n_head;
    int d_model;
    int d_ff;        /* 0: 4 * d_model */
} mome_model_section;

typedef struct {
    char run_name[MOME_CFG_STR]; /* names checkpoints/<run_name> and runs/<run_name> */
    long steps;                  /* optimizer steps */
    int batch_size;              /* sequences per micro-batch, global (split over ranks) */
    int grad_accum;              /* micro-batches per optimizer step */
    float lr;
    float min_lr;
    int warmup_steps;
    float weight_decay;
    float beta1, beta2, eps;
    float grad_clip;             /* 0: off */
    uint64_t seed;
    char resume[MOME_CFG_STR];   /* "none", "auto" (from latest if any) or a checkpoint path */
    int log_every;
    int eval_every;              /* 0: only before and after training */
    int eval_batches;            /* validation sequences per domain = eval_batches * batch_size */
    int threads;                 /* threads per rank; 0: OMP_NUM_THREADS, or the node's cores / ranks on the node */
    char nonfinite[MOME_CFG_STR]; /* a non-finite loss or gradient norm: "skip" the update | "stop" the run */
    int nonfinite_limit;         /* skip: non-finite steps in a row that stop the run anyway; 0: no limit */
    int watchdog;                /* seconds without a step, evaluation or checkpoint ending: the rank exits; 0: off */
} mome_train_section;

typedef struct {
    char dir[MOME_CFG_STR];      /* corpus directory from `mome data build` */
    char domains[MOME_CFG_STR];  /* comma-separated subset, or "" for every domain in the corpus */
    char order[MOME_CFG_STR];    /* "balanced" (domains in turn) | "sequential" (one domain after another) */
} mome_data_section;

typedef struct {
    char dir[MOME_CFG_STR];      /* checkpoints go to <dir>/<run_name>/ */
    int every;                   /* steps between checkpoints; 0: only at the end */
    int keep;                    /* keep the last K checkpoints */
} mome_checkpoint_section;

typedef struct {
    int n_experts;          /* 0: dense model */
    int top_k;
    float capacity_factor;  /* 0: dropless */
    int shared_d_ff;        /* 0: no shared expert */
    float aux_coef;
    float z_coef;
} mome_moe_section;

typedef struct {
    int ep;                 /* expert-parallel group size; 0: the whole world */
} mome_parallel_section;
typedef struct {
    int enabled;                /* 1: the student is a modular model (modular.h) instead of [model]/[moe]'s GPT */
    char experts[MOME_CFG_STR]; /* comma-separated domain names, one expert trunk each; "": the data's domains */
    int trunk_layers;           /* blocks per trunk; 0: [model] n_layer */
    int common;                 /* 1: a common trunk every sequence passes through */
    char routing[MOME_CFG_STR]; /* "router" | "gold" | "average" */
    char router[MOME_CFG_STR];  /* router.h5 for routing=router; "": <data.dir>/router.h5 */
} mome_modular_section;

typedef struct {
    char checkpoint[MOME_CFG_STR]; /* teacher checkpoint file or run directory; "" = no distillation */
    char placement[MOME_CFG_STR];  /* "coordinator" | "each" | "cache" */
    char cache[MOME_CFG_STR];      /* target cache for placement=cache; "" = teacher_cache/<run_name>.h5 */
} mome_teacher_section;

typedef struct {
    float alpha;                   /* CE weight in fixed mode */
    char alpha_mode[MOME_CFG_STR]; /* "fixed" | "adaptive" */
    char schedule[MOME_CFG_STR];   /* "combined" | "alternating" */
    float temperature;
    char direction[MOME_CFG_STR];  /* "forward" | "reverse" */
    int teacher_topk;              /* 0: full logits */
    /* Distilling an MoE teacher ("Every Expert Matters", Kim et al. 2025; distill.h) */
    char method[MOME_CFG_STR];     /* "topk" | "all" | "ka" | "sar": how the teacher routes */
    int ka_passes;                 /* ka: teacher passes M per micro-batch (the KD loss is their mean) */
    float ka_lambda;               /* ka: probability of sampling the experts instead of taking the top n */
    int ka_n;                      /* ka: experts per token n; 0: n_experts - 1 */
    float sar_lr;                  /* sar: learning rate of the teacher's router (AdamW, no weight decay) */
    float sar_aux_coef;            /* sar: coefficient of the load-balancing term of the router loss */
    float on_policy;               /* share of KD micro-batches whose continuations the student samples (GKD) */
    int on_policy_tokens;          /* on_policy: sampled tokens at the end of each sequence; 0: seq_len / 4 */
    float on_policy_temperature;   /* on_policy: the student's sampling temperature */
} mome_kd_section;

typedef struct {
    char bind[MOME_CFG_STR];             /* ZeroMQ endpoint rank 0 binds; "none": no stream */
    char curve_secret_key[MOME_CFG_STR]; /* file with the server's Z85 CURVE secret key; "" = no encryption */
    int insecure;                        /* 1: allow a non-loopback bind without CURVE */
    int hwm;                             /* send queue per subscriber, messages */
    int sndbuf;                          /* kernel send buffer per connection, bytes; 0: the system's */
    int linger_ms;                       /* how long close waits for queued messages */
    float meta_every_s;                  /* seconds between repeated mome.meta messages */
    int sgemm_probe;                     /* 1: measure sgemm at start for the MFU */
} mome_monitor_section;
typedef struct {
    mome_model_section model;
    mome_train_section train;
    mome_data_section data;
    mome_checkpoint_section checkpoint;
    mome_moe_section moe;
    mome_teacher_section teacher;
    mome_kd_section kd;
    mome_parallel_section parallel;
    mome_monitor_section monitor;
    mome_modular_section modular;
} mome_config;

/* Fills every field with its schema default. */
void mome_config_defaults(mome_config *cfg);
/* Parses an INI file over the current values of cfg. */
int mome_config_load_file(mome_config *cfg, const char *path);
/* Parses INI text (for example the /config stored in a checkpoint); `origin` names it in errors. */
int mome_config_load_string(mome_config *cfg, const char *text, const char *origin);
/* Applies one "section.key=value" override. */
int mome_config_override(mome_config *cfg, const char *assignment);
/* Cross-field checks (n_head divides d_model, batch_size divisible by world size is checked by train). */
int mome_config_validate(const mome_config *cfg);
/* The fully resolved configuration as INI text (every key, schema order); caller frees with mome_free. */
char *mome_config_to_string(const mome_config *cfg);
/* Prints every section and key with type, default, range and help. */
void mome_config_print_schema(void *file /* FILE* */);

#endif
