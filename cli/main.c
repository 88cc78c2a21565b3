/* main.c — the `mome` command line: parses arguments and dispatches each verb to libmome.
 *
 * Verbs that may run under mpirun (train, eval, analyze) initialise MPI; the others do not need it. Rank 0 parses
 * and validates the configuration and broadcasts the resolved text, so every rank runs the same configuration
 * and a bad file is reported once.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mome/analyze.h"
#include "mome/bench.h"
#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/config.h"
#include "mome/corpus.h"
#include "mome/data.h"
#include "mome/distill.h"
#include "mome/monitor_view.h"
#include "mome/route.h"
#include "mome/tokenizer.h"
#include "mome/train.h"

#ifndef MOME_VERSION
#define MOME_VERSION "0.1.0"
#endif

enum { EXIT_ERROR = 1, EXIT_USAGE = 2 };

static const char *usage_main =
    "usage: mome <verb> [options]\n"
    "\n"
    "mome trains Mixture-of-Experts language models distilled from a teacher, on CPU clusters (MPI).\n"
    "\n"
    "verbs:\n"
    "  data build [--out DIR] [--domain NAME=PATH ...] [--vocab N]\n"
    "                            build a corpus: tokenizer and token shards (default: the embedded corpus)\n"
    "  train CONFIG [section.key=value ...]\n"
    "                            train (run under mpirun for more than one rank)\n"
    "  eval CHECKPOINT [--data DIR]\n"
    "                            per-domain validation loss and perplexity\n"
    "  analyze gates CHECKPOINT [--data DIR] [--windows N] [--json FILE] [--plot FILE.svg]\n"
    "                            how an MoE model's gate spreads its mass over activated and other experts\n"
    "  generate CHECKPOINT [--prompt TEXT] [--tokens N]\n"
    "                            sample a continuation\n"
    "  teacher cache CONFIG [section.key=value ...]\n"
    "                            write the teacher's top-k targets for every sample of a run (placement=cache)\n"
    "  route train --data DIR --out ROUTER.h5 | route predict ROUTER.h5 [FILE] | route eval ROUTER.h5 FILE\n"
    "                            the domain router (TF-IDF character n-grams, logistic regression)\n"
    "  monitor RUN_DIR | ENDPOINT [--json] [--timeout S] [--server-key KEY]\n"
    "                            watch a run live (its ZeroMQ stream); plain lines when not a terminal\n"
    "  bench [--threads N] [--steps N] [--student|--teacher] [--profile]\n"
    "                            throughput of the fixed benchmark model (run under mpirun to split it)\n"
    "\n"
    "`mome VERB --help` describes a verb. Documentation: README.md and docs/.\n";

static const char *usage_data =
    "usage: mome data build [--out DIR] [--domain NAME=PATH ...] [--vocab N] [--val-fraction F]\n"
    "                       [--max-mb-per-domain N]\n"
    "\n"
    "Builds a corpus: raw/<domain>/{train,val}.jsonl, tokenizer.h5 (byte-level BPE), tokens/<domain>.h5.\n"
    "Without --domain it builds the embedded default corpus (en, fr, de, python) from the Debian packages\n"
    "manpages, manpages-fr, manpages-de, debian-reference-{en,fr,de} and the python3 standard library.\n"
    "\n"
    "  --out DIR              output directory (default data/default)\n"
    "  --domain NAME=PATH     a domain made of every file under PATH (repeat for each domain)\n"
    "  --vocab N              vocabulary size (default 4096)\n"
    "  --val-fraction F       share of documents held out for validation (default 0.05)\n"
    "  --max-mb-per-domain N  cap on raw text per domain before balancing\n";

static const char *usage_bench =
    "usage: mome bench [--threads N] [--steps N] [--warmup N] [--student | --teacher] [--profile]\n"
    "                  [--seq-len N] [--batch N] [--d-model N] [--layers N] [--heads N] [--experts N]\n"
    "                  [--top-k N] [--vocab N]\n"
    "       mpirun -np R mome bench [options]\n"
    "\n"
    "Times the fixed benchmark model on random tokens (docs/performance.md): a student MoE GPT (d_model 256,\n"
    "4 layers, 4 heads, 4 experts top-1, FFN 4 x d_model) trained with KD (alpha 0.5, T 2) + CE against a\n"
    "teacher's logits, and a dense teacher (d_model 384, 6 layers, 6 heads) in inference; vocabulary 4096,\n"
    "sequence length 256, batch 8. Prints student_train_tok_s=N teacher_infer_tok_s=M, then the MFU against\n"
    "the measured sgemm rate, the peak resident memory and the layout. Under mpirun the batch is split over\n"
    "the ranks and the student's experts spread over them.\n"
    "\n"
    "  --threads N     threads per rank (default: OMP_NUM_THREADS, else the node's cores over its ranks)\n"
    "  --steps N       timed iterations of each part (default 10), after --warmup N untimed ones (default 2)\n"
    "  --student       time only the student step;  --teacher  only the teacher's inference\n"
    "  --profile       also print the seconds of each phase of the student step\n"
    "  --seq-len, --batch, --d-model, --layers, --heads, --experts, --top-k, --vocab\n"
    "                  change the student's (and the batch's) sizes, for scaling measurements\n";

static const char *usage_train =
    "usage: mome train CONFIG [section.key=value ...]\n"
    "       mpirun -np N mome train CONFIG [section.key=value ...]\n"
    "\n"
    "Trains the model described by the INI file CONFIG; any key can be overridden as section.key=value.\n"
    "Checkpoints go to <checkpoint.dir>/<train.run_name>/, metrics to runs/<train.run_name>/metrics.jsonl.\n"
    "train.resume=auto continues from the latest checkpoint. SIGTERM or SIGUSR1 makes every rank stop at the\n"
    "same step after a checkpoint, with exit code 75. Non-finite values that stop training (train.nonfinite =\n"
    "stop, or train.nonfinite_limit steps in a row) exit with code 76, leaving the newest checkpoint as it was.\n"
    "\n"
    "  --help-config          list every section and key with its default and range\n";

static const char *usage_eval =
    "usage: mome eval CHECKPOINT [--data DIR] [--windows N] [--router FILE]\n"
    "       mome eval --experts NAME=CHECKPOINT[,NAME=CHECKPOINT...] [--data DIR] [--windows N] [--router FILE]\n"
    "\n"
    "Prints the validation loss and perplexity per domain of the model in CHECKPOINT. For a modular student,\n"
    "the loss per domain of every way of routing: routed by the router, gold domain, average of all trunks,\n"
    "each trunk alone and with the common trunk, the common trunk alone.\n"
    "  --data DIR     corpus to evaluate on (default: the data.dir the model was trained with)\n"
    "  --windows N    validation sequences per domain (default: all)\n"
    "  --router FILE  router for a modular student (default: the one its config names), or for --experts\n"
    "                 (default: DIR/router.h5)\n"
    "  --experts ...  separately trained students, one per domain (pre-trained language experts), combined:\n"
    "                 each sequence is scored by the student the router picks (\"routed\") or by the student\n"
    "                 of its own domain (\"gold\")\n";

static const char *usage_analyze =
    "usage: mome analyze gates CHECKPOINT [--data DIR] [--windows N] [--json FILE] [--plot FILE.svg]\n"
    "       mpirun -np N mome analyze gates CHECKPOINT [options]\n"
    "\n"
    "How the gate of an MoE model spreads its probability over the experts (\"Every Expert Matters\": the experts\n"
    "a layer does not activate still carry gate mass; docs/analysis.md). Runs the GPT in CHECKPOINT (a checkpoint\n"
    "file, or a run directory: its latest), whose MLPs must be MoE layers, with its trained top-k gate over the\n"
    "validation windows of every domain (those `mome eval` uses) and prints, per layer: the mean gate probability\n"
    "at each rank (the E probabilities sorted per token), the mass on the top_k activated experts and on the\n"
    "others, overall and per domain, and each expert's mean probability and share of the routed assignments.\n"
    "  --data DIR       corpus (default: the data.dir the model was trained with)\n"
    "  --windows N      validation sequences per domain (default: all)\n"
    "  --json FILE      also write the numbers as JSON (overall and per domain)\n"
    "  --plot FILE.svg  also write a figure: mean probability against rank per layer (log scale) and the\n"
    "                   activated vs non-activated mass per layer\n";

static const char *usage_generate =
    "usage: mome generate CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "                     [--data DIR]\n"
    "\n"
    "Samples a continuation of TEXT (default: empty, start of a document) from the model in CHECKPOINT.\n"
    "  --tokens N        tokens to generate (default 100)\n"
    "  --temperature T   sampling temperature; 0 takes the most likely token (default 0.8)\n"
    "  --top-k K         sample among the K most likely tokens; 0 = all (default 40)\n"
    "  --seed S          random seed (default 1)\n"
    "  --data DIR        corpus whose tokenizer to use (default: the model's data.dir)\n";

static const char *usage_teacher =
    "usage: mome teacher cache CONFIG [section.key=value ...]\n"
    "\n"
    "Runs the teacher of CONFIG ([teacher] checkpoint) once over every sample the configured run will draw\n"
    "(train.steps x train.grad_accum x train.batch_size sequences; samples depend only on the seed) and writes\n"
    "the top-k targets ([kd] teacher_topk > 0) to [teacher] cache (default teacher_cache/<run_name>.h5).\n"
    "Train with teacher.placement=cache to read them instead of running the teacher.\n";

static int is_help(const char *a) { return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0; }

static int fail(const char *verb) {
    const char *msg = mome_error_message();
    fprintf(stderr, "mome %s: error: %s\n", verb, msg[0] ? msg : "failed");
    return EXIT_ERROR;
}

/* MPI_Init, this process's rank and the world size, and log lines prefixed with the rank. */
static void mpi_start(int *rank, int *world) {
    MPI_Init(NULL, NULL);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, world);
    mome_log_set_rank(*rank, *world);
}

static int parse_long(const char *s, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end) return -1;
    *out = v;
    return 0;
}

/* --windows N of `verb`: a positive count of validation windows per domain; an error message otherwise. */
static int parse_windows(const char *verb, const char *v, long *out) {
    if (parse_long(v, out) || *out < 1) {
        fprintf(stderr, "%s: --windows %s: expected a positive integer\n", verb, v);
        return -1;
    }
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end) return -1;
    *out = v;
    return 0;
}

/* ---- mome data build ---- */

static int cmd_data(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage_data, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "build") != 0) {
        fprintf(stderr, "mome data: unknown subcommand '%s'\n%s", argv[1], usage_data);
        return EXIT_USAGE;
    }
    mome_data_build_opts o;
    mome_data_build_defaults(&o);
    mome_domain_spec specs[32];
    size_t n_specs = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long lv;
        double dv;
        if (is_help(a)) {
            fputs(usage_data, stdout);
            return 0;
        } else if (strcmp(a, "--out") == 0 && v) {
            o.out_dir = v, i++;
        } else if (strcmp(a, "--vocab") == 0 && v) {
            if (parse_long(v, &lv) || lv < MOME_TOK_FIRST_MERGE || lv > 65536) {
                fprintf(stderr, "mome data build: --vocab %s: expected an integer in [%d, 65536]\n", v,
                        MOME_TOK_FIRST_MERGE);
                return EXIT_USAGE;
            }
            o.vocab_size = (int)lv, i++;
        } else if (strcmp(a, "--val-fraction") == 0 && v) {
            if (parse_double(v, &dv) || !(dv > 0 && dv < 0.5)) {
                fprintf(stderr, "mome data build: --val-fraction %s: expected a number in (0, 0.5)\n", v);
                return EXIT_USAGE;
            }
            o.val_fraction = dv, i++;
        } else if (strcmp(a, "--max-mb-per-domain") == 0 && v) {
            if (parse_double(v, &dv) || !(dv > 0)) {
                fprintf(stderr, "mome data build: --max-mb-per-domain %s: expected a positive number\n", v);
                return EXIT_USAGE;
            }
            o.max_bytes_per_domain = (size_t)(dv * 1048576.0), i++;
        } else if (strcmp(a, "--domain") == 0 && v) {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v || !eq[1] || (size_t)(eq - v) >= sizeof specs[0].name) {
                fprintf(stderr, "mome data build: --domain %s: expected NAME=PATH\n", v);
                return EXIT_USAGE;
            }
            if (n_specs == sizeof specs / sizeof specs[0]) {
                fprintf(stderr, "mome data build: too many domains\n");
                return EXIT_USAGE;
            }
            snprintf(specs[n_specs].name, sizeof specs[n_specs].name, "%.*s", (int)(eq - v), v);
            specs[n_specs].path = (char *)(eq + 1);
            n_specs++, i++;
        } else {
            fprintf(stderr, "mome data build: unknown or incomplete option '%s'\n%s", a, usage_data);
            return EXIT_USAGE;
        }
    }
    o.domains = n_specs ? specs : NULL;
    o.n_domains = n_specs;
    return mome_data_build(&o) == MOME_OK ? 0 : fail("data build");
}

/* ---- mome train ---- */

/* Threads of this rank: `requested` if > 0, else OMP_NUM_THREADS if set, else the node's cores shared among the
 * ranks on that node. Collective over MPI_COMM_WORLD. */
static int set_rank_threads(int requested) {
    int threads = requested;
    if (threads <= 0 && !getenv("OMP_NUM_THREADS")) {
        MPI_Comm node;
        int local = 1, rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
        MPI_Comm_size(node, &local);
        MPI_Comm_free(&node);
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores / local > 0 ? (int)(cores / local) : 1;
    }
    return mome_set_threads(threads);
}

static int cmd_train(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--help-config") == 0) {
        mome_config_print_schema(stdout);
        return 0;
    }
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage_train, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    int rank, world;
    mpi_start(&rank, &world);

    /* Rank 0 parses and validates; the others receive the resolved text. */
    mome_config cfg;
    mome_config_defaults(&cfg);
    char *text = NULL;
    long len = 0;
    int rc = MOME_OK;
    if (rank == 0) {
        rc = mome_config_load_file(&cfg, argv[1]);
        for (int i = 2; i < argc && rc == MOME_OK; i++) rc = mome_config_override(&cfg, argv[i]);
        if (rc == MOME_OK) rc = mome_config_validate(&cfg);
        if (rc == MOME_OK) {
            text = mome_config_to_string(&cfg);
            len = (long)strlen(text) + 1;
        } else {
            fail("train");
        }
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rc != MOME_OK) {
        MPI_Finalize();
        return EXIT_ERROR;
    }
    MPI_Bcast(&len, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    if (rank != 0) text = mome_malloc((size_t)len);
    MPI_Bcast(text, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank != 0) {
        rc = mome_config_load_string(&cfg, text, "config from rank 0");
        MOME_CHECK(rc == MOME_OK, "rank %d: cannot parse the configuration broadcast by rank 0: %s", rank,
                   mome_error_message());
    }
    mome_free(text);

    set_rank_threads(cfg.train.threads);
    rc = mome_train(&cfg, MPI_COMM_WORLD);
    int code = 0;
    if (rc == MOME_ESTOP) code = MOME_EXIT_STOPPED;
    else if (rc != MOME_OK) {
        fail("train");
        code = rc == MOME_ENONFINITE ? MOME_EXIT_NONFINITE : EXIT_ERROR;
    }
    MPI_Finalize();
    return code;
}

/* ---- mome eval / generate: load a checkpoint and its corpus ---- */

typedef struct {
    mome_config cfg;
    int modular;            /* the checkpoint holds a modular student */
    mome_gpt model;
    mome_modular mod;
    mome_seq_router sr;
    mome_seqroute_mode routing;
    mome_dataset ds;
} loaded;

/* The corpus of a checkpoint (its data.dir and domains, or data_dir with every domain), checked against the
 * tokenizer it was trained with, then the model (router: a router file for a modular student, or NULL). */
static int load_checkpoint_and_data(const char *ckpt, const char *data_dir, const char *router, loaded *L) {
    memset(L, 0, sizeof *L);
    mome_ckpt_info info;
    int rc = mome_ckpt_read_info(ckpt, &info);
    if (rc) return rc;
    L->modular = strcmp(info.model_kind, "modular") == 0;
    char origin[1100];
    snprintf(origin, sizeof origin, "%s:/config", ckpt);
    mome_config_defaults(&L->cfg);
    rc = mome_config_load_string(&L->cfg, info.config_text, origin);
    const char *dir = data_dir ? data_dir : L->cfg.data.dir;
    if (rc == MOME_OK) rc = mome_dataset_open(&L->ds, dir, data_dir ? "" : L->cfg.data.domains);
    if (rc == MOME_OK && strcmp(info.tokenizer_hash, L->ds.tokenizer_hash) != 0)
        rc = mome_error_set(MOME_EMISMATCH,
                            "%s was trained with tokenizer %s, but corpus %s has tokenizer %s (use --data DIR)", ckpt,
                            info.tokenizer_hash, dir, L->ds.tokenizer_hash);
    mome_ckpt_info_free(&info);
    if (rc) return rc;
    if (L->modular) return mome_load_modular(ckpt, router, &L->cfg, &L->ds, &L->mod, &L->sr, &L->routing);
    return mome_load_model(ckpt, &L->cfg, &L->model);
}

static void unload(loaded *L) {
    mome_dataset_close(&L->ds);
    mome_gpt_free(&L->model);
    mome_modular_free(&L->mod);
    mome_seq_router_free(&L->sr);
}

/* ---- mome eval --experts: separately trained students combined by the router (PLE) ---- */

typedef struct {
    int n;                 /* students, one per domain name */
    mome_gpt *models;
    mome_seq_router *sr;   /* names = the students' domains */
    mome_seqroute_mode mode;
    int32_t *routes, *sub; /* (B), (B, T) */
    int *domains;          /* (B) */
    float *logits;         /* (B, T, V) */
} ple_ctx;

static float *ple_forward(void *ctx, const int32_t *inputs, int B, int T, int domain, int *vocab) {
    ple_ctx *c = ctx;
    const size_t V = (size_t)c->models[0].cfg.vocab_size, row = (size_t)T * V;
    for (int b = 0; b < B; b++) c->domains[b] = domain;
    mome_seq_router_route(c->sr, c->mode, inputs, c->domains, B, T, c->routes);
    for (int e = 0; e < c->n; e++) { /* each student runs the sequences routed to it */
        int n = 0;
        for (int b = 0; b < B; b++)
            if (c->routes[b] == e) memcpy(c->sub + (size_t)n++ * T, inputs + (size_t)b * T, (size_t)T * sizeof *c->sub);
        if (n == 0) continue;
        mome_gpt_forward(&c->models[e], c->sub, n, T);
        for (int b = 0, i = 0; b < B; b++)
            if (c->routes[b] == e) memcpy(c->logits + (size_t)b * row, c->models[e].logits + (size_t)i++ * row,
                                          row * sizeof(float));
    }
    *vocab = (int)V;
    return c->logits;
}

/* spec: NAME=CKPT[,NAME=CKPT...]. Every student is loaded on every rank; windows are split over the ranks. */
static int eval_experts(const char *spec, const char *data_dir, const char *router, long windows, int rank,
                        int world) {
    char names[512] = "", paths[MOME_MAX_DOMAINS][1024];
    int n = 0, rc = MOME_OK;
    for (const char *p = spec; *p && rc == MOME_OK;) {
        const size_t len = strcspn(p, ","), eq = strcspn(p, "=");
        if (eq >= len || eq == 0 || len - eq - 1 >= sizeof paths[0] || n == MOME_MAX_DOMAINS)
            rc = mome_error_set(MOME_EINVAL, "--experts '%s': expected NAME=CHECKPOINT[,NAME=CHECKPOINT...]", spec);
        else {
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%.*s", n ? "," : "", (int)eq, p);
            snprintf(paths[n++], sizeof paths[0], "%.*s", (int)(len - eq - 1), p + eq + 1);
        }
        p += len + (p[len] == ',');
    }
    if (rc) return rc;
    ple_ctx c = {.n = n, .models = mome_calloc((size_t)n, sizeof(mome_gpt)), .sr = mome_calloc(1, sizeof(mome_seq_router))};
    mome_config cfg;
    mome_dataset ds;
    memset(&ds, 0, sizeof ds);
    for (int e = 0; e < n && rc == MOME_OK; e++) {
        rc = mome_load_model(paths[e], &cfg, &c.models[e]);
        if (rc == MOME_OK && e == 0) rc = mome_dataset_open(&ds, data_dir ? data_dir : cfg.data.dir, "");
        mome_ckpt_info info;
        if (rc == MOME_OK && (rc = mome_ckpt_read_info(paths[e], &info)) == MOME_OK) {
            if (strcmp(info.tokenizer_hash, ds.tokenizer_hash) != 0)
                rc = mome_error_set(MOME_EMISMATCH, "%s was trained with tokenizer %s, corpus %s has %s", paths[e],
                                    info.tokenizer_hash, ds.dir, ds.tokenizer_hash);
            else if (c.models[e].cfg.seq_len != c.models[0].cfg.seq_len)
                rc = mome_error_set(MOME_EMISMATCH, "%s: seq_len %d, %s has %d", paths[e], c.models[e].cfg.seq_len,
                                    paths[0], c.models[0].cfg.seq_len);
            mome_ckpt_info_free(&info);
        }
    }
    const int T = rc == MOME_OK ? c.models[0].cfg.seq_len : 0, B = 8;
    char rpath[1100];
    snprintf(rpath, sizeof rpath, "%s/router.h5", ds.dir);
    if (rc == MOME_OK) rc = mome_seq_router_init(c.sr, MOME_SEQROUTE_ROUTER, names, &ds, router ? router : rpath, T);
    for (int e = 0; e < n && rc == MOME_OK; e++) rc = mome_gpt_reserve(&c.models[e], B, T);
    if (rc == MOME_OK) {
        c.routes = mome_malloc((size_t)B * sizeof *c.routes);
        c.domains = mome_malloc((size_t)B * sizeof *c.domains);
        c.sub = mome_malloc((size_t)B * (size_t)T * sizeof *c.sub);
        c.logits = mome_malloc((size_t)B * (size_t)T * (size_t)c.models[0].cfg.vocab_size * sizeof(float));
        int gold_ok = 1;
        for (int d = 0; d < ds.n_domains; d++) gold_ok &= c.sr->domain_trunk[d] >= 0;
        mome_modular_variant v[2] = {{"routed", MOME_SEQROUTE_ROUTER, MOME_VARIANT_BY_MODE, 1},
                                     {"gold", MOME_SEQROUTE_GOLD, MOME_VARIANT_BY_MODE, 1}};
        mome_eval_result r[2];
        const int nv = gold_ok ? 2 : 1;
        for (int i = 0; i < nv && rc == MOME_OK; i++) {
            c.mode = (mome_seqroute_mode)v[i].mode;
            rc = mome_evaluate_with(ple_forward, &c, &ds, T, B, windows, MPI_COMM_WORLD, &r[i]);
        }
        if (rc == MOME_OK && rank == 0) {
            printf("students %s combined by the router (%d rank(s)) on %s\n", names, world, ds.dir);
            mome_modular_variants_print(stdout, v, r, nv);
        }
    }
    for (int e = 0; e < n; e++) mome_gpt_free(&c.models[e]);
    mome_seq_router_free(c.sr);
    mome_dataset_close(&ds);
    mome_free(c.models);
    mome_free(c.sr);
    mome_free(c.routes);
    mome_free(c.domains);
    mome_free(c.sub);
    mome_free(c.logits);
    return rc;
}

static int cmd_eval(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage_eval, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *data_dir = NULL, *router = NULL, *experts = NULL;
    long windows = 0;
    if (strcmp(argv[1], "--experts") == 0 && argc >= 3) { /* no single checkpoint: the students of --experts */
        experts = argv[2];
        argv++, argc--;
    }
    for (int i = 2; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--data") == 0 && v) {
            data_dir = v, i++;
        } else if (strcmp(argv[i], "--router") == 0 && v) {
            router = v, i++;
        } else if (strcmp(argv[i], "--windows") == 0 && v) {
            if (parse_windows("mome eval", v, &windows)) return EXIT_USAGE;
            i++;
        } else {
            fprintf(stderr, "mome eval: unknown or incomplete option '%s'\n%s", argv[i], usage_eval);
            return EXIT_USAGE;
        }
    }
    int rank, world;
    mpi_start(&rank, &world);
    mome_set_threads(0);
    if (experts) {
        const int rc = eval_experts(experts, data_dir, router, windows, rank, world);
        const int code = rc ? fail("eval") : 0;
        MPI_Finalize();
        return code;
    }
    loaded L;
    int rc = load_checkpoint_and_data(argv[1], data_dir, router, &L);
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    int code = 0;
    if (worst == MOME_OK) {
        int B = L.cfg.train.batch_size / world > 0 ? L.cfg.train.batch_size / world : 1;
        const int T = L.cfg.model.seq_len;
        if (L.modular) {
            /* every way of routing (the run's own first), loss per domain; every rank holds every trunk */
            mome_modular_variant v[2 * MOME_MAX_DOMAINS + 4];
            const int n = mome_modular_variants(&L.mod, &L.sr, &L.ds, v, (int)(sizeof v / sizeof v[0]));
            mome_eval_result *vr = mome_calloc((size_t)n, sizeof *vr);
            rc = mome_modular_reserve(&L.mod, B, T);
            for (int i = 0; i < n && rc == MOME_OK; i++)
                rc = mome_modular_evaluate(&L.mod, &L.sr, &v[i], &L.ds, T, B, windows, MPI_COMM_WORLD, &vr[i]);
            if (rc == MOME_OK && rank == 0) {
                printf("checkpoint %s (modular, %d trunks%s, trained with routing = %s) on %s\n", argv[1],
                       L.mod.cfg.n_experts, L.mod.cfg.common ? " + common" : "", L.cfg.modular.routing, L.ds.dir);
                mome_modular_variants_print(stdout, v, vr, n);
            }
            mome_free(vr);
        } else {
            rc = mome_gpt_reserve(&L.model, B, T);
            mome_eval_result r;
            if (rc == MOME_OK) rc = mome_evaluate(&L.model, &L.ds, T, B, windows, MPI_COMM_WORLD, &r);
            if (rc == MOME_OK && rank == 0) {
                printf("checkpoint %s on %s\n", argv[1], L.ds.dir);
                mome_eval_print(stdout, NULL, &r);
            }
        }
        if (rc) code = fail("eval");
    } else if (rc != MOME_OK) {
        code = fail("eval");
    } else {
        code = EXIT_ERROR;
    }
    unload(&L);
    MPI_Finalize();
    return code;
}

/* ---- mome analyze gates ---- */

static int cmd_analyze(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1]) || (argc >= 3 && is_help(argv[2]))) {
        const int help = argc >= 2;
        fputs(usage_analyze, help ? stdout : stderr);
        return help ? 0 : EXIT_USAGE;
    }
    if (strcmp(argv[1], "gates") != 0) {
        fprintf(stderr, "mome analyze: unknown analysis '%s' (there is: gates)\n%s", argv[1], usage_analyze);
        return EXIT_USAGE;
    }
    if (argc < 3 || argv[2][0] == '-') {
        fprintf(stderr, "mome analyze gates: expected a CHECKPOINT\n%s", usage_analyze);
        return EXIT_USAGE;
    }
    const char *spec = argv[2], *data_dir = NULL, *json = NULL, *plot = NULL;
    long windows = 0;
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (is_help(a)) {
            fputs(usage_analyze, stdout);
            return 0;
        } else if (strcmp(a, "--data") == 0 && v) {
            data_dir = v, i++;
        } else if (strcmp(a, "--json") == 0 && v) {
            json = v, i++;
        } else if (strcmp(a, "--plot") == 0 && v) {
            plot = v, i++;
        } else if (strcmp(a, "--windows") == 0 && v) {
            if (parse_windows("mome analyze gates", v, &windows)) return EXIT_USAGE;
            i++;
        } else {
            fprintf(stderr, "mome analyze gates: unknown or incomplete option '%s'\n%s", a, usage_analyze);
            return EXIT_USAGE;
        }
    }
    int rank, world;
    mpi_start(&rank, &world);
    mome_set_threads(0);
    /* refuse a dense model, a single expert or a modular student before opening the corpus */
    char path[1100];
    loaded L;
    memset(&L, 0, sizeof L);
    int rc = mome_gate_checkpoint(spec, path, sizeof path);
    if (rc == MOME_OK) rc = load_checkpoint_and_data(path, data_dir, NULL, &L);
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    int code = 0;
    if (worst == MOME_OK) {
        /* the batches of `mome eval`: capacity (when the model has one) is per forward of B x T tokens */
        const int B = L.cfg.train.batch_size / world > 0 ? L.cfg.train.batch_size / world : 1;
        mome_gate_stats s;
        rc = mome_gate_analyze(&L.model, &L.ds, B, windows, MPI_COMM_WORLD, &s);
        if (rc == MOME_OK && rank == 0) {
            mome_gate_stats_print(stdout, &s, path);
            if (json) rc = mome_gate_stats_write_json(&s, path, json);
            if (rc == MOME_OK && plot) rc = mome_gate_stats_write_svg(&s, path, plot);
            if (rc == MOME_OK && (json || plot))
                printf("\nwrote%s%s%s%s\n", json ? " " : "", json ? json : "", plot ? " " : "", plot ? plot : "");
        }
        mome_gate_stats_free(&s);
        if (rc) code = fail("analyze gates");
    } else {
        code = rc != MOME_OK ? fail("analyze gates") : EXIT_ERROR;
    }
    unload(&L);
    MPI_Finalize();
    return code;
}

static int cmd_generate(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage_generate, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *prompt = "", *data_dir = NULL;
    long n_tokens = 100, top_k = 40, seed = 1;
    double temperature = 0.8;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v) bad = 1;
        else if (strcmp(a, "--prompt") == 0) prompt = v;
        else if (strcmp(a, "--data") == 0) data_dir = v;
        else if (strcmp(a, "--tokens") == 0) bad = parse_long(v, &n_tokens) || n_tokens < 1 || n_tokens > 100000;
        else if (strcmp(a, "--top-k") == 0) bad = parse_long(v, &top_k) || top_k < 0;
        else if (strcmp(a, "--seed") == 0) bad = parse_long(v, &seed);
        else if (strcmp(a, "--temperature") == 0) bad = parse_double(v, &temperature) || temperature < 0;
        else bad = 1;
        if (bad) {
            fprintf(stderr, "mome generate: bad, unknown or incomplete option '%s%s%s'\n%s", a, v ? " " : "",
                    v ? v : "", usage_generate);
            return EXIT_USAGE;
        }
        i++;
    }
    mome_set_threads(0);
    loaded L;
    int rc = load_checkpoint_and_data(argv[1], data_dir, NULL, &L);
    if (rc == MOME_OK && L.modular)
        rc = mome_error_set(MOME_EINVAL, "%s holds a modular student: generation supports GPT checkpoints", argv[1]);
    if (rc) {
        unload(&L);
        return fail("generate");
    }
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    rc = mome_tokenizer_encode(L.ds.tok, prompt, strlen(prompt), &ids, &n, &cap);
    int32_t *ctx = mome_malloc((n + 1) * sizeof *ctx);
    ctx[0] = MOME_TOK_BOS;
    for (size_t i = 0; i < n; i++) ctx[i + 1] = (int32_t)ids[i];
    free(ids);
    int32_t *out = mome_malloc((size_t)n_tokens * sizeof *out);
    int got = rc ? rc : mome_generate(&L.model, ctx, (int)n + 1, (int)n_tokens, (float)temperature, (int)top_k,
                                      (uint64_t)seed, out);
    int code = 0;
    if (got < 0) {
        code = fail("generate");
    } else {
        uint32_t *u = mome_malloc(((size_t)got + 1) * sizeof *u);
        for (int i = 0; i < got; i++) u[i] = (uint32_t)out[i];
        size_t need = mome_tokenizer_decode(L.ds.tok, u, (size_t)got, NULL, 0);
        char *text = mome_malloc(need + 1);
        mome_tokenizer_decode(L.ds.tok, u, (size_t)got, text, need);
        text[need] = 0;
        printf("%s%s\n", prompt, text);
        mome_free(text);
        mome_free(u);
    }
    mome_free(out);
    mome_free(ctx);
    unload(&L);
    return code;
}

static int cmd_teacher(int argc, char **argv) {
    if (argc < 3 || is_help(argv[1]) || strcmp(argv[1], "cache") != 0 || is_help(argv[2])) {
        int help = argc >= 2 && (is_help(argv[1]) || (argc >= 3 && is_help(argv[2])));
        fputs(usage_teacher, help ? stdout : stderr);
        return help ? 0 : EXIT_USAGE;
    }
    MPI_Init(NULL, NULL);
    mome_config cfg;
    mome_config_defaults(&cfg);
    int rc = mome_config_load_file(&cfg, argv[2]);
    for (int i = 3; i < argc && rc == MOME_OK; i++) rc = mome_config_override(&cfg, argv[i]);
    if (rc == MOME_OK) rc = mome_config_validate(&cfg);
    if (rc == MOME_OK) {
        mome_set_threads(cfg.train.threads);
        rc = mome_teacher_cache_write(&cfg);
    }
    int code = rc == MOME_OK ? 0 : fail("teacher cache");
    MPI_Finalize();
    return code;
}

static int cmd_bench(int argc, char **argv) {
    mome_bench_opts o;
    mome_bench_defaults(&o);
    long threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (is_help(a)) {
            fputs(usage_bench, stdout);
            return 0;
        }
        if (strcmp(a, "--student") == 0 || strcmp(a, "--teacher") == 0) {
            o.student = a[2] == 's';
            o.teacher = a[2] == 't';
            continue;
        }
        if (strcmp(a, "--profile") == 0) {
            o.profile = 1;
            continue;
        }
        struct {
            const char *name;
            int *dst;
            long min;
        } ints[] = {{"--steps", &o.steps, 1},      {"--warmup", &o.warmup, 0},    {"--seq-len", &o.seq_len, 1},
                    {"--batch", &o.batch, 1},      {"--d-model", &o.d_model, 1},  {"--layers", &o.n_layer, 1},
                    {"--heads", &o.n_head, 1},     {"--experts", &o.n_experts, 0}, {"--top-k", &o.top_k, 1},
                    {"--vocab", &o.vocab, 2}};
        int bad = !v, found = 0;
        long x = 0;
        if (!bad && strcmp(a, "--threads") == 0) {
            found = 1;
            bad = parse_long(v, &threads) || threads < 1 || threads > 4096;
        }
        for (size_t k = 0; !bad && !found && k < sizeof ints / sizeof ints[0]; k++) {
            if (strcmp(a, ints[k].name) != 0) continue;
            found = 1;
            bad = parse_long(v, &x) || x < ints[k].min || x > 1000000;
            if (!bad) *ints[k].dst = (int)x;
        }
        if (bad || !found) {
            fprintf(stderr, "mome bench: bad, unknown or incomplete option '%s%s%s'\n%s", a, v ? " " : "",
                    v ? v : "", usage_bench);
            return EXIT_USAGE;
        }
        i++;
    }
    int rank, world;
    mpi_start(&rank, &world);
    set_rank_threads((int)threads);
    int rc = mome_bench_run(&o, MPI_COMM_WORLD, stdout);
    int code = 0;
    if (rc != MOME_OK) code = rank == 0 ? fail("bench") : EXIT_ERROR;
    MPI_Finalize();
    return code;
}

int main(int argc, char **argv) {
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("mome %s\n", MOME_VERSION);
        return 0;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "data") == 0) return cmd_data(argc - 1, argv + 1);
    if (strcmp(verb, "train") == 0) return cmd_train(argc - 1, argv + 1);
    if (strcmp(verb, "eval") == 0) return cmd_eval(argc - 1, argv + 1);
    if (strcmp(verb, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
    if (strcmp(verb, "analyze") == 0) return cmd_analyze(argc - 1, argv + 1);
    if (strcmp(verb, "teacher") == 0) return cmd_teacher(argc - 1, argv + 1);
    if (strcmp(verb, "bench") == 0) return cmd_bench(argc - 1, argv + 1);
    if (strcmp(verb, "monitor") == 0) return mome_monitor_main(argc - 1, argv + 1);
    if (strcmp(verb, "route") == 0) return mome_route_main(argc - 1, argv + 1);
    fprintf(stderr, "mome: unknown verb '%s'\n\n%s", verb, usage_main);
    return EXIT_USAGE;
}
