/* config.c — the run configuration (see config.h): one schema table drives defaults, INI parsing (inih),
 * `section.key=value` overrides, the resolved text and the `--help-config` listing.
 *
 * Parsing rules (also printed by mome_config_print_schema):
 *  - sections and keys are case-sensitive; an unknown section or key is an error naming the file, the line and
 *    the known names (with a "did you mean" for a near miss);
 *  - numbers are parsed strictly: base-10 integers (a u64 may also be 0x-hex), no trailing characters, no
 *    overflow; floats must be finite; every value is range-checked against the schema;
 *  - a key given twice in one file (or text) is an error naming both lines; overrides applied later replace
 *    file values (that is their purpose);
 *  - comments are whole lines starting with ';' or '#', or an inline " ; comment" (inih's rule); values are
 *    taken verbatim after stripping surrounding whitespace, so strings cannot keep leading/trailing blanks;
 *  - indentation is allowed and means nothing (no multi-line values); lines may be of any length.
 * The line number in messages is counted here (the reader below hands inih one line at a time), so it does
 * not depend on how inih was built (INI_HANDLER_LINENO, INI_STOP_ON_FIRST_ERROR, INI_ALLOW_MULTILINE,
 * INI_MAX_LINE).
 *
 * Left to others: what the values mean (train.c, model.c), checks that need the data or the world size
 * (vocab_size against the tokenizer, batch_size divisible by the ranks), and broadcasting the config.
 */
#include "mome/config.h"

#include <ini.h>

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mome/common.h"
#include "mome/monitor.h"

/* ---------------------------------------------------------------------------------------------------------
 * The schema. */

typedef enum { T_INT, T_LONG, T_FLOAT, T_U64, T_STR } field_type;

typedef struct {
    const char *section;
    const char *key;
    field_type type;
    size_t offset;     /* into mome_config */
    const char *def;   /* default, as text (parsed by the same code as a file value) */
    double min, max;   /* inclusive range for numbers; ignored for strings and u64 */
    const char *help;
} field;

#define F(sec, member) offsetof(mome_config, sec.member)

static const field schema[] = {
    {"model", "vocab_size", T_INT, F(model, vocab_size), "0", 0, 16777216,
     "vocabulary size; 0: take it from the tokenizer, otherwise it must equal the tokenizer's"},
    {"model", "seq_len", T_INT, F(model, seq_len), "128", 2, 65536,
     "tokens per training sequence (and number of learned positions)"},
    {"model", "n_layer", T_INT, F(model, n_layer), "4", 1, 1024, "transformer blocks"},
    {"model", "n_head", T_INT, F(model, n_head), "4", 1, 1024, "attention heads; must divide d_model"},
    {"model", "d_model", T_INT, F(model, d_model), "128", 1, 65536, "width of the residual stream"},
    {"model", "d_ff", T_INT, F(model, d_ff), "0", 0, 1048576, "hidden width of the MLP; 0: 4 * d_model"},

    {"train", "run_name", T_STR, F(train, run_name), "run", 0, 0,
     "names checkpoints/<run_name> and runs/<run_name>; letters, digits, '.', '_', '-'"},
    {"train", "steps", T_LONG, F(train, steps), "1000", 1, 1000000000, "optimizer steps"},
    {"train", "batch_size", T_INT, F(train, batch_size), "16", 1, 1048576,
     "sequences per micro-batch, global (split over the ranks, which must divide it)"},
    {"train", "grad_accum", T_INT, F(train, grad_accum), "1", 1, 65536, "micro-batches per optimizer step"},
    {"train", "lr", T_FLOAT, F(train, lr), "3e-3", 0, 10, "peak learning rate (after warmup)"},
    {"train", "min_lr", T_FLOAT, F(train, min_lr), "3e-4", 0, 10,
     "learning rate at the end of the cosine decay; <= lr"},
    {"train", "warmup_steps", T_INT, F(train, warmup_steps), "50", 0, 1000000000,
     "steps of linear warmup; <= steps"},
    {"train", "weight_decay", T_FLOAT, F(train, weight_decay), "0.1", 0, 10,
     "AdamW decoupled weight decay (weight matrices only)"},
    {"train", "beta1", T_FLOAT, F(train, beta1), "0.9", 0, 1, "AdamW first-moment decay; < 1"},
    {"train", "beta2", T_FLOAT, F(train, beta2), "0.95", 0, 1, "AdamW second-moment decay; < 1"},
    {"train", "eps", T_FLOAT, F(train, eps), "1e-8", 1e-30, 1, "AdamW epsilon"},
    {"train", "grad_clip", T_FLOAT, F(train, grad_clip), "1", 0, 1e6, "clip the global gradient norm; 0: off"},
    {"train", "seed", T_U64, F(train, seed), "1337", 0, 0, "seed of every random stream (init, data, sampling)"},
    {"train", "resume", T_STR, F(train, resume), "none", 0, 0,
     "none | auto (from <checkpoint.dir>/<run_name>/latest if any) | a checkpoint path"},
    {"train", "log_every", T_INT, F(train, log_every), "10", 0, 1000000000,
     "steps between progress lines; 0: none"},
    {"train", "eval_every", T_INT, F(train, eval_every), "100", 0, 1000000000,
     "steps between validation passes; 0: only before and after training"},
    {"train", "eval_batches", T_INT, F(train, eval_batches), "4", 1, 1000000,
     "validation sequences per domain = eval_batches * batch_size"},
    {"train", "threads", T_INT, F(train, threads), "0", 0, 4096,
     "threads per rank; 0: OMP_NUM_THREADS, or the node's cores divided among the ranks on it"},
    {"train", "nonfinite", T_STR, F(train, nonfinite), "skip", 0, 0,
     "a step whose loss or gradient norm is NaN or Inf: skip (no update, a warning, the run goes on) | stop (no "
     "update, no checkpoint: the run ends with exit code 76 and the last checkpoint stays the newest)"},
    {"train", "nonfinite_limit", T_INT, F(train, nonfinite_limit), "10", 0, 1000000000,
     "with nonfinite = skip, this many non-finite steps in a row stop the run as nonfinite = stop would (exit "
     "76); 0: no limit"},
    {"train", "watchdog", T_INT, F(train, watchdog), "1800", 0, 604800,
     "seconds a rank may spend on one step, evaluation, checkpoint or stage of the start-up; past that it prints "
     "where it was and exits with code 77, which ends the job (a hung rank, network or file system would otherwise "
     "keep every rank waiting); 0: off"},

    {"data", "dir", T_STR, F(data, dir), "data/default", 0, 0, "corpus directory written by `mome data build`"},
    {"data", "domains", T_STR, F(data, domains), "", 0, 0,
     "comma-separated subset of the corpus domains; empty: every domain"},
    {"data", "order", T_STR, F(data, order), "balanced", 0, 0,
     "balanced (the domains in turn, every batch mixed) | sequential (the steps split into one phase per domain, "
     "in the order of data.domains or the corpus)"},

    {"checkpoint", "dir", T_STR, F(checkpoint, dir), "checkpoints", 0, 0,
     "checkpoints go to <dir>/<run_name>/"},
    {"checkpoint", "every", T_INT, F(checkpoint, every), "0", 0, 1000000000,
     "steps between checkpoints; 0: only at the end"},
    {"checkpoint", "keep", T_INT, F(checkpoint, keep), "3", 0, 1000000, "keep the last K checkpoints; 0: all"},

    {"moe", "n_experts", T_INT, F(moe, n_experts), "0", 0, 65536,
     "experts per MoE layer; 0: a dense model (every block has the dense MLP)"},
    {"moe", "top_k", T_INT, F(moe, top_k), "1", 1, 64, "experts per token; <= n_experts"},
    {"moe", "capacity_factor", T_FLOAT, F(moe, capacity_factor), "1.25", 0, 1000,
     "per-expert capacity = ceil(capacity_factor * tokens * top_k / n_experts); 0: dropless"},
    {"moe", "shared_d_ff", T_INT, F(moe, shared_d_ff), "0", 0, 1048576,
     "hidden size of the shared (common) expert every token passes through; 0: none"},
    {"moe", "aux_coef", T_FLOAT, F(moe, aux_coef), "0.01", 0, 100, "coefficient of the Switch load-balancing loss"},
    {"moe", "z_coef", T_FLOAT, F(moe, z_coef), "0.001", 0, 100, "coefficient of the router z-loss"},

    {"teacher", "checkpoint", T_STR, F(teacher, checkpoint), "", 0, 0,
     "teacher to distill from: a mome checkpoint file, or a run directory (its latest); empty: no distillation"},
    {"teacher", "placement", T_STR, F(teacher, placement), "coordinator", 0, 0,
     "coordinator (rank 0 runs the teacher for every rank and sends the targets) | each (every rank runs it) | "
     "cache (targets read from the file `mome teacher cache` wrote)"},
    {"teacher", "cache", T_STR, F(teacher, cache), "", 0, 0,
     "teacher target cache (HDF5) for placement=cache; empty: teacher_cache/<run_name>.h5"},

    {"kd", "alpha", T_FLOAT, F(kd, alpha), "0.5", 0, 1, "weight of the CE term (fixed mode); 1 - alpha on T^2 * KL"},
    {"kd", "alpha_mode", T_STR, F(kd, alpha_mode), "fixed", 0, 0,
     "fixed | adaptive (Al-Maamari et al.: from the trends of the last max(20, steps/100) losses)"},
    {"kd", "schedule", T_STR, F(kd, schedule), "combined", 0, 0,
     "combined (alpha * CE + (1 - alpha) * KD on every micro-batch) | alternating (CE-only and KD-only in turn)"},
    {"kd", "temperature", T_FLOAT, F(kd, temperature), "2", 0.01, 100, "distillation temperature T"},
    {"kd", "direction", T_STR, F(kd, direction), "forward", 0, 0,
     "forward: KL(teacher || student) | reverse: KL(student || teacher)"},
    {"kd", "teacher_topk", T_INT, F(kd, teacher_topk), "0", 0, 1048576,
     "send the teacher's top-k log-probs plus the tail mass per position instead of full logits; 0: full"},
    {"kd", "method", T_STR, F(kd, method), "topk", 0, 0,
     "how an MoE teacher routes: topk (as trained) | all (every expert, softmax weights) | ka (knowledge "
     "augmentation: ka_passes passes, experts sampled with probability ka_lambda, KD loss averaged) | sar "
     "(student-aware router: all experts, the teacher's gate trained against the student); not topk: MoE teacher"},
    {"kd", "ka_passes", T_INT, F(kd, ka_passes), "2", 1, 64,
     "method=ka: teacher passes M per micro-batch (M teacher forwards); the KD loss is the mean over the passes"},
    {"kd", "ka_lambda", T_FLOAT, F(kd, ka_lambda), "0.05", 0, 1,
     "method=ka: per token and layer, the probability of drawing ka_n experts from the gate instead of the top ka_n"},
    {"kd", "ka_n", T_INT, F(kd, ka_n), "0", 0, 65536, "method=ka: experts per token; 0: the teacher's n_experts - 1"},
    {"kd", "sar_lr", T_FLOAT, F(kd, sar_lr), "1e-6", 0, 1,
     "method=sar: learning rate of the teacher's gate (its own AdamW, constant, no weight decay)"},
    {"kd", "sar_aux_coef", T_FLOAT, F(kd, sar_aux_coef), "0.01", 0, 100,
     "method=sar: weight of the Switch load-balancing term (f_e from the teacher's top_k) in the router loss"},
    {"kd", "on_policy", T_FLOAT, F(kd, on_policy), "0", 0, 1,
     "share of the KD micro-batches whose continuation the student samples itself and the teacher scores (GKD); "
     "0: off"},
    {"kd", "on_policy_tokens", T_INT, F(kd, on_policy_tokens), "0", 0, 1048576,
     "on_policy: tokens the student samples at the end of each sequence (no CE on them); 0: a quarter of seq_len"},
    {"kd", "on_policy_temperature", T_FLOAT, F(kd, on_policy_temperature), "1", 0, 100,
     "on_policy: the student's sampling temperature; 0: its most likely token"},

    {"parallel", "ep", T_INT, F(parallel, ep), "0", 0, 1048576,
     "ranks in an expert-parallel group (must divide the world size); 0: all ranks"},

    {"monitor", "bind", T_STR, F(monitor, bind), "tcp://127.0.0.1:0", 0, 0,
     "ZeroMQ endpoint of the monitor stream (rank 0; port 0: any free port, see runs/<run>/monitor.json); none: off"},
    {"monitor", "curve_secret_key", T_STR, F(monitor, curve_secret_key), "", 0, 0,
     "file with the server's Z85 CURVE secret key (`mome monitor --keygen`); needed to bind beyond loopback"},
    {"monitor", "insecure", T_INT, F(monitor, insecure), "0", 0, 1,
     "1: allow a non-loopback bind without CURVE encryption"},
    {"monitor", "hwm", T_INT, F(monitor, hwm), "1000", 1, 10000000,
     "messages queued per subscriber; beyond it a slow subscriber loses messages, training never waits"},
    {"monitor", "sndbuf", T_INT, F(monitor, sndbuf), "0", 0, 1 << 30,
     "kernel send buffer per subscriber connection, bytes; 0: the system default"},
    {"monitor", "linger_ms", T_INT, F(monitor, linger_ms), "200", 0, 60000,
     "how long closing the stream waits for queued messages"},
    {"monitor", "meta_every_s", T_FLOAT, F(monitor, meta_every_s), "10", 0.1f, 86400,
     "seconds between repeated mome.meta messages (also sent to every new subscriber)"},
    {"monitor", "sgemm_probe", T_INT, F(monitor, sgemm_probe), "1", 0, 1,
     "1: rank 0 measures the sgemm rate at start (0.3 s) so that mome.train can report MFU"},

    {"modular", "enabled", T_INT, F(modular, enabled), "0", 0, 1,
     "1: train a modular student (shared embedding and head, one expert trunk per domain) instead of the GPT of "
     "[model] and [moe]; [model] gives vocab_size, seq_len, n_head, d_model, d_ff"},
    {"modular", "experts", T_STR, F(modular, experts), "", 0, 0,
     "comma-separated domain names, one expert trunk each, in this order; empty: the domains of the data"},
    {"modular", "trunk_layers", T_INT, F(modular, trunk_layers), "0", 0, 1024,
     "transformer blocks per trunk (expert and common); 0: [model] n_layer"},
    {"modular", "common", T_INT, F(modular, common), "0", 0, 1,
     "1: a common trunk every sequence also passes through; the hidden state is the mean of the two outputs"},
    {"modular", "routing", T_STR, F(modular, routing), "router", 0, 0,
     "router (each sequence to the trunk the router classifier picks from its text) | gold (to its domain's "
     "trunk) | average (through every trunk, outputs averaged)"},
    {"modular", "router", T_STR, F(modular, router), "", 0, 0,
     "router file (`mome route train`) for routing=router; empty: <data.dir>/router.h5"},
};
#undef F

#define N_FIELDS (sizeof schema / sizeof schema[0])

static const char *const sections[] = {"model", "train",    "data",    "checkpoint", "moe",
                                       "teacher", "kd",      "parallel", "monitor",  "modular"};
#define N_SECTIONS (sizeof sections / sizeof sections[0])

static const char *type_name(field_type t) {
    switch (t) {
    case T_INT: return "int";
    case T_LONG: return "long";
    case T_FLOAT: return "float";
    case T_U64: return "u64";
    case T_STR: return "string";
    }
    return "?";
}

static int find_section(const char *name) {
    for (size_t i = 0; i < N_SECTIONS; i++)
        if (strcmp(sections[i], name) == 0) return (int)i;
    return -1;
}

static int find_field(const char *section, const char *key) {
    for (size_t i = 0; i < N_FIELDS; i++)
        if (strcmp(schema[i].section, section) == 0 && strcmp(schema[i].key, key) == 0) return (int)i;
    return -1;
}

/* Levenshtein distance, capped at 8 (names are short). */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 31 || lb > 31) return 8;
    int prev[32], cur[32];
    for (size_t j = 0; j <= lb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb] < 8 ? prev[lb] : 8;
}

/* Appends to a bounded buffer. */
static void append(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...) {
    size_t n = strlen(buf);
    if (n + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

/* "(known: model, train, ...; did you mean 'train'?)" */
static void known_sections(char *buf, size_t cap, const char *got) {
    buf[0] = 0;
    append(buf, cap, "(known: ");
    int best = -1, best_d = 3;
    for (size_t i = 0; i < N_SECTIONS; i++) {
        append(buf, cap, "%s%s", i ? ", " : "", sections[i]);
        int d = edit_distance(got, sections[i]);
        if (d < best_d) best_d = d, best = (int)i;
    }
    if (best >= 0) append(buf, cap, "; did you mean [%s]?", sections[best]);
    append(buf, cap, ")");
}

static void known_keys(char *buf, size_t cap, const char *section, const char *got) {
    buf[0] = 0;
    append(buf, cap, "(known: ");
    int best = -1, best_d = 3, first = 1;
    for (size_t i = 0; i < N_FIELDS; i++) {
        if (strcmp(schema[i].section, section) != 0) continue;
        append(buf, cap, "%s%s", first ? "" : ", ", schema[i].key);
        first = 0;
        int d = edit_distance(got, schema[i].key);
        if (d < best_d) best_d = d, best = (int)i;
    }
    if (best >= 0) append(buf, cap, "; did you mean '%s'?", schema[best].key);
    append(buf, cap, ")");
}

/* ---------------------------------------------------------------------------------------------------------
 * Values: strict parsing into a field. On error, writes what was expected into `why` and returns -1. */

static int parse_long(const char *s, long *out) {
    if (!*s || isspace((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno == ERANGE || *end != 0 || end == s) return -1;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    if (!*s || !isdigit((unsigned char)*s)) return -1; /* no sign, no blanks: strtoull would accept "-1" */
    int base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        if (!isxdigit((unsigned char)*s)) return -1;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno == ERANGE || *end != 0 || end == s) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    if (!*s || isspace((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno == ERANGE || *end != 0 || end == s || !isfinite(v)) return -1;
    if (v != 0 && (fabs(v) > FLT_MAX || fabs(v) < FLT_MIN)) return -1; /* not a normal float */
    *out = strtof(s, NULL); /* the float nearest to the text (no double rounding) */
    return 0;
}

static int string_ok(const char *s, char *why, size_t cap) {
    size_t n = strlen(s);
    if (n >= MOME_CFG_STR) {
        snprintf(why, cap, "expected a string of at most %d bytes, got %zu", MOME_CFG_STR - 1, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            snprintf(why, cap, "expected a string without control characters (byte %zu)", i);
            return -1;
        }
        /* The resolved config (a checkpoint's /config) is INI text read back by inih, for which ';' at the
         * start of a value or after a blank opens a comment: such a value would come back cut short. */
        if (s[i] == ';' && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t')) {
            snprintf(why, cap, "a ';' at byte %zu would start a comment when the configuration is read back", i);
            return -1;
        }
    }
    return 0;
}

static int set_value(mome_config *cfg, const field *f, const char *value, char *why, size_t cap) {
    char *dst = (char *)cfg + f->offset;
    switch (f->type) {
    case T_INT:
    case T_LONG: {
        long v;
        int ok = parse_long(value, &v) == 0;
        if (ok && (v < (long)f->min || v > (long)f->max)) ok = 0;
        if (!ok) {
            snprintf(why, cap, "expected an integer in [%ld, %ld]", (long)f->min, (long)f->max);
            return -1;
        }
        if (f->type == T_INT) {
            int iv = (int)v;
            memcpy(dst, &iv, sizeof iv);
        } else {
            memcpy(dst, &v, sizeof v);
        }
        return 0;
    }
    case T_FLOAT: {
        float v;
        if (parse_float(value, &v) != 0 || (double)v < f->min || (double)v > f->max) {
            snprintf(why, cap, "expected a number in [%g, %g]", f->min, f->max);
            return -1;
        }
        memcpy(dst, &v, sizeof v);
        return 0;
    }
    case T_U64: {
        uint64_t v;
        if (parse_u64(value, &v) != 0) {
            snprintf(why, cap, "expected an unsigned 64-bit integer (decimal, or hex with 0x)");
            return -1;
        }
        memcpy(dst, &v, sizeof v);
        return 0;
    }
    case T_STR:
        if (string_ok(value, why, cap) != 0) return -1;
        snprintf(dst, MOME_CFG_STR, "%s", value);
        return 0;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------------------------
 * Parsing INI text with inih. The reader hands inih one line per call and counts lines itself; it also
 *  - strips leading blanks, so an indented line is an ordinary line (inih would otherwise take it as the
 *    continuation of the previous value);
 *  - checks [section] lines (inih calls the handler only for key = value lines, so an unknown section with no
 *    keys below it would otherwise pass), and tracks the current section;
 *  - parses a line longer than inih's line buffer itself with inih's rules (key, '=' or ':', value, inline
 *    " ;" comment) and hands inih an empty line instead, so long paths work and numbering stays right. */

typedef struct {
    mome_config *cfg;
    const char *origin;  /* file name or description, for messages */
    const char *pos;     /* reader position in the text */
    int line;            /* line number of the last line handed to inih */
    int status;          /* first error (MOME_OK while none) */
    int status_line;     /* its line */
    int seen[N_FIELDS];  /* line where each key was set in this text, 0: not yet */
    char section[64];    /* current section, as inih sees it */
} parse_ctx;

static int fail(parse_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(parse_ctx *c, const char *fmt, ...) {
    if (c->status != MOME_OK) return 0; /* keep the first error */
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->status = mome_error_set(MOME_ECONFIG, "%s:%d: %s", c->origin, c->line, msg);
    c->status_line = c->line;
    return 0;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    parse_ctx *c = user;
    char known[1024], why[256];
    if (section[0] == 0) return fail(c, "key '%s' outside any section (start with a [section] line)", name);
    if (find_section(section) < 0) {
        known_sections(known, sizeof known, section);
        return fail(c, "unknown section [%s] %s", section, known);
    }
    int i = find_field(section, name);
    if (i < 0) {
        known_keys(known, sizeof known, section, name);
        return fail(c, "unknown key '%s' in [%s] %s", name, section, known);
    }
    if (c->seen[i])
        return fail(c, "[%s] %s is set twice (first on line %d); a key may appear once per file", section, name,
                    c->seen[i]);
    c->seen[i] = c->line;
    if (set_value(c->cfg, &schema[i], value, why, sizeof why) != 0)
        return fail(c, "[%s] %s = '%s': %s", section, name, value, why);
    return 1;
}

/* A [section] line (leading blanks already stripped): the name is everything between '[' and the first ']',
 * as inih takes it. A line without ']' is left to inih, which reports a syntax error. */
static void section_line(parse_ctx *c, const char *line, size_t len) {
    if (len == 0 || line[0] != '[') return;
    const char *close = memchr(line + 1, ']', len - 1);
    if (!close) return;
    size_t n = (size_t)(close - line - 1);
    if (n >= sizeof c->section) {
        fail(c, "section name too long (%zu bytes)", n);
        n = sizeof c->section - 1;
    }
    memcpy(c->section, line + 1, n);
    c->section[n] = 0;
    if (find_section(c->section) < 0) {
        char known[512];
        known_sections(known, sizeof known, c->section);
        fail(c, "unknown section [%s] %s", c->section, known);
    }
}

static int is_blank(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\f' || ch == '\v'; }

/* A line too long for inih: same rules, handled here. */
static void long_line(parse_ctx *c, const char *line, size_t len) {
    char *buf = mome_malloc(len + 1);
    memcpy(buf, line, len);
    buf[len] = 0;
    while (len && is_blank(buf[len - 1])) buf[--len] = 0;
    if (len == 0 || buf[0] == ';' || buf[0] == '#') goto done;
    if (buf[0] == '[') {
        if (!memchr(buf, ']', len)) fail(c, "syntax error: '[' without ']'");
        section_line(c, buf, len);
        goto done;
    }
    /* inih: the first '=' or ':' not inside an inline comment (';' after a blank) ends the name. */
    char *sep = NULL;
    for (char *p = buf; *p; p++) {
        if (*p == ';' && p > buf && is_blank(p[-1])) break;
        if (*p == '=' || *p == ':') {
            sep = p;
            break;
        }
    }
    if (!sep) {
        fail(c, "syntax error: expected [section] or key = value");
        goto done;
    }
    *sep = 0;
    char *name = buf, *value = sep + 1;
    size_t ln = strlen(name);
    while (ln && is_blank(name[ln - 1])) name[--ln] = 0;
    while (*value && is_blank(*value)) value++;
    for (char *p = value; *p; p++)
        if (*p == ';' && p > value && is_blank(p[-1])) {
            *p = 0;
            break;
        }
    size_t lv = strlen(value);
    while (lv && is_blank(value[lv - 1])) value[--lv] = 0;
    handler(c, c->section, name, value);
done:
    mome_free(buf);
}

static char *reader(char *str, int num, void *stream) {
    parse_ctx *c = stream;
    if (*c->pos == 0 || num < 3) return NULL;
    const char *nl = strchr(c->pos, '\n');
    size_t len = nl ? (size_t)(nl - c->pos) + 1 : strlen(c->pos);
    const char *line = c->pos;
    c->pos += len;
    c->line++;
    while (len && (*line == ' ' || *line == '\t')) line++, len--;
    if (len + 1 > (size_t)num) {
        long_line(c, line, len);
        memcpy(str, "\n", 2);
        return str;
    }
    section_line(c, line, len);
    memcpy(str, line, len);
    str[len] = 0;
    return str;
}

/* The text of line `n` (1-based) of `text`, for syntax errors, truncated to fit. */
static void line_text(const char *text, int n, char *out, size_t cap) {
    const char *p = text;
    for (int i = 1; i < n && p; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    out[0] = 0;
    if (!p) return;
    p += strspn(p, " \t");
    size_t len = strcspn(p, "\r\n");
    if (len >= cap) len = cap - 1;
    memcpy(out, p, len);
    out[len] = 0;
}

int mome_config_load_string(mome_config *cfg, const char *text, const char *origin) {
    parse_ctx c;
    memset(&c, 0, sizeof c);
    c.cfg = cfg;
    c.origin = origin ? origin : "config";
    c.pos = text;
    c.status = MOME_OK;
    /* Skip a UTF-8 byte-order mark ourselves, so that inih builds without INI_ALLOW_BOM behave the same. */
    if ((unsigned char)c.pos[0] == 0xef && (unsigned char)c.pos[1] == 0xbb && (unsigned char)c.pos[2] == 0xbf)
        c.pos += 3;
    int r = ini_parse_stream(reader, &c, handler, &c);
    /* r > 0: the first line with an error, ours (the handler returned 0) or a syntax error inih found itself
     * (no '=', no closing ']'); report whichever comes first. Stopping on the first error or not (an inih
     * build option) changes nothing here. */
    if (r > 0 && (c.status == MOME_OK || r < c.status_line)) {
        char bad[128];
        line_text(text, r, bad, sizeof bad);
        return mome_error_set(MOME_ECONFIG, "%s:%d: syntax error in '%s': expected [section] or key = value",
                              c.origin, r, bad);
    }
    if (c.status != MOME_OK) return c.status;
    if (r < 0) return mome_error_set(MOME_ECONFIG, "%s: the INI parser failed (error %d)", c.origin, r);
    return MOME_OK;
}

int mome_config_load_file(mome_config *cfg, const char *path) {
    char *text = NULL;
    int rc = mome_read_file(path, &text, NULL);
    if (rc != MOME_OK) return mome_error_wrap(MOME_ECONFIG, "cannot read config file");
    rc = mome_config_load_string(cfg, text, path);
    mome_free(text);
    return rc;
}

void mome_config_defaults(mome_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_FIELDS; i++) {
        char why[256];
        MOME_CHECK(set_value(cfg, &schema[i], schema[i].def, why, sizeof why) == 0,
                   "config schema: default of [%s] %s = '%s' is invalid: %s", schema[i].section, schema[i].key,
                   schema[i].def, why);
    }
}

int mome_config_override(mome_config *cfg, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!eq || !dot || dot > eq)
        return mome_error_set(MOME_ECONFIG, "override '%s': expected section.key=value", assignment);
    char section[64], key[64], value[MOME_CFG_STR + 64];
    size_t ls = (size_t)(dot - assignment), lk = (size_t)(eq - dot - 1);
    /* Trim blanks around the names and the value, as inih does for files. */
    const char *s0 = assignment, *k0 = dot + 1, *v0 = eq + 1;
    while (ls && isspace((unsigned char)*s0)) s0++, ls--;
    while (ls && isspace((unsigned char)s0[ls - 1])) ls--;
    while (lk && isspace((unsigned char)*k0)) k0++, lk--;
    while (lk && isspace((unsigned char)k0[lk - 1])) lk--;
    while (isspace((unsigned char)*v0)) v0++;
    size_t lv = strlen(v0);
    while (lv && isspace((unsigned char)v0[lv - 1])) lv--;
    if (ls == 0 || lk == 0 || ls >= sizeof section || lk >= sizeof key)
        return mome_error_set(MOME_ECONFIG, "override '%s': expected section.key=value", assignment);
    if (lv >= sizeof value)
        return mome_error_set(MOME_ECONFIG, "override '%s': value too long (at most %d bytes)", assignment,
                              MOME_CFG_STR - 1);
    memcpy(section, s0, ls);
    section[ls] = 0;
    memcpy(key, k0, lk);
    key[lk] = 0;
    memcpy(value, v0, lv);
    value[lv] = 0;

    char known[1024], why[256];
    if (find_section(section) < 0) {
        known_sections(known, sizeof known, section);
        return mome_error_set(MOME_ECONFIG, "override '%s': unknown section [%s] %s", assignment, section, known);
    }
    int i = find_field(section, key);
    if (i < 0) {
        known_keys(known, sizeof known, section, key);
        return mome_error_set(MOME_ECONFIG, "override '%s': unknown key '%s' in [%s] %s", assignment, key, section,
                              known);
    }
    if (set_value(cfg, &schema[i], value, why, sizeof why) != 0)
        return mome_error_set(MOME_ECONFIG, "override '%s': [%s] %s = '%s': %s", assignment, section, key, value,
                              why);
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Cross-field checks. */

static int name_ok(const char *s) {
    if (!s[0] || s[0] == '.') return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') return 0;
    return 1;
}

/* "" or comma-separated names of letters, digits, '_', '-', '.' with no empty entry. */
static int name_list_ok(const char *d) {
    if (!d[0]) return 1;
    for (const char *p = d;;) {
        const size_t n = strcspn(p, ",");
        if (n == 0) return 0;
        for (size_t i = 0; i < n; i++)
            if (!(isalnum((unsigned char)p[i]) || p[i] == '_' || p[i] == '-' || p[i] == '.')) return 0;
        if (!p[n]) return 1;
        p += n + 1;
    }
}

int mome_config_validate(const mome_config *cfg) {
    const mome_model_section *m = &cfg->model;
    const mome_train_section *t = &cfg->train;
    /* Ranges again: a struct may have been filled by code rather than parsed. */
    char buf[64], why[256];
    for (size_t i = 0; i < N_FIELDS; i++) {
        const field *f = &schema[i];
        const char *src = (const char *)cfg + f->offset;
        mome_config scratch;
        switch (f->type) {
        case T_INT: snprintf(buf, sizeof buf, "%d", *(const int *)src); break;
        case T_LONG: snprintf(buf, sizeof buf, "%ld", *(const long *)src); break;
        case T_FLOAT: snprintf(buf, sizeof buf, "%.9g", (double)*(const float *)src); break;
        default: continue; /* u64: every value is valid; strings: checked below */
        }
        if (set_value(&scratch, f, buf, why, sizeof why) != 0)
            return mome_error_set(MOME_ECONFIG, "config: [%s] %s = %s: %s", f->section, f->key, buf, why);
    }
    if (m->d_model % m->n_head != 0)
        return mome_error_set(MOME_ECONFIG, "config: [model] n_head = %d does not divide d_model = %d", m->n_head,
                              m->d_model);
    if (t->min_lr > t->lr)
        return mome_error_set(MOME_ECONFIG, "config: [train] min_lr = %.9g is larger than lr = %.9g",
                              (double)t->min_lr, (double)t->lr);
    if (t->warmup_steps > t->steps)
        return mome_error_set(MOME_ECONFIG, "config: [train] warmup_steps = %d is larger than steps = %ld",
                              t->warmup_steps, t->steps);
    if (t->beta1 >= 1.0f || t->beta2 >= 1.0f)
        return mome_error_set(MOME_ECONFIG, "config: [train] beta1 = %.9g, beta2 = %.9g: both must be < 1",
                              (double)t->beta1, (double)t->beta2);
    if (!name_ok(t->run_name))
        return mome_error_set(MOME_ECONFIG,
                              "config: [train] run_name = '%s': expected a non-empty name of letters, digits, '.', "
                              "'_', '-' (not starting with '.')",
                              t->run_name);
    if (strcmp(t->resume, "none") != 0 && strcmp(t->resume, "auto") != 0 && access(t->resume, R_OK) != 0)
        return mome_error_set(MOME_ECONFIG,
                              "config: [train] resume = '%s': expected none, auto or a readable checkpoint file (%s)",
                              t->resume, strerror(errno));
    if (cfg->modular.enabled && cfg->moe.n_experts > 0)
        return mome_error_set(MOME_ECONFIG,
                              "config: [modular] enabled = 1 with [moe] n_experts = %d: a modular student's trunks "
                              "have dense MLPs; set one or the other",
                              cfg->moe.n_experts);
    if (cfg->moe.n_experts > 0 && cfg->moe.top_k > cfg->moe.n_experts)
        return mome_error_set(MOME_ECONFIG, "config: [moe] top_k = %d is larger than n_experts = %d", cfg->moe.top_k,
                              cfg->moe.n_experts);
    {
        const mome_monitor_config mc = {.bind = cfg->monitor.bind, .curve_secret_key = cfg->monitor.curve_secret_key,
                                        .insecure = cfg->monitor.insecure};
        int rc = mome_monitor_config_check(&mc);
        if (rc) return rc;
    }
    {
        const struct {
            const char *section, *key, *value, *allowed;
        } choices[] = {
            {"teacher", "placement", cfg->teacher.placement, "coordinator|each|cache"},
            {"kd", "alpha_mode", cfg->kd.alpha_mode, "fixed|adaptive"},
            {"kd", "schedule", cfg->kd.schedule, "combined|alternating"},
            {"kd", "direction", cfg->kd.direction, "forward|reverse"},
            {"kd", "method", cfg->kd.method, "topk|all|ka|sar"},
            {"data", "order", cfg->data.order, "balanced|sequential"},
            {"train", "nonfinite", cfg->train.nonfinite, "skip|stop"},
            {"modular", "routing", cfg->modular.routing, "router|gold|average"},
        };
        for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++) {
            const char *v = choices[i].value, *a = choices[i].allowed;
            size_t n = strlen(v);
            int ok = 0;
            for (const char *p = a; *p && !ok;) {
                size_t len = strcspn(p, "|");
                ok = len == n && n > 0 && strncmp(p, v, n) == 0;
                p += len + (p[len] == '|');
            }
            if (!ok)
                return mome_error_set(MOME_ECONFIG, "config: [%s] %s = '%s': expected one of %s", choices[i].section,
                                      choices[i].key, v, a);
        }
    }
    if (cfg->kd.on_policy > 0.0f) {
        const char *refusal = !cfg->teacher.checkpoint[0] ? "there is no [teacher] checkpoint"
                              : cfg->modular.enabled     ? "a modular student cannot sample yet"
                              : strcmp(cfg->teacher.placement, "cache") == 0
                                  ? "[teacher] placement = cache holds targets for the corpus's samples only"
                              : cfg->kd.on_policy_tokens >= cfg->model.seq_len ? "on_policy_tokens leaves no prefix"
                                                                               : NULL;
        if (refusal)
            return mome_error_set(MOME_ECONFIG, "config: [kd] on_policy = %g: %s", (double)cfg->kd.on_policy, refusal);
    }
    if (!cfg->data.dir[0]) return mome_error_set(MOME_ECONFIG, "config: [data] dir is empty");
    if (!cfg->checkpoint.dir[0]) return mome_error_set(MOME_ECONFIG, "config: [checkpoint] dir is empty");
    /* domain lists: comma-separated names, no empty entries. */
    const struct {
        const char *section, *key, *value;
    } lists[] = {{"data", "domains", cfg->data.domains}, {"modular", "experts", cfg->modular.experts}};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        if (!name_list_ok(lists[i].value))
            return mome_error_set(MOME_ECONFIG,
                                  "config: [%s] %s = '%s': expected comma-separated domain names (letters, digits, "
                                  "'_', '-', '.'), no spaces or empty entries",
                                  lists[i].section, lists[i].key, lists[i].value);
    return MOME_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Output. */

/* The shortest decimal that parses back to exactly the same float ("0.003", not "0.00300000003"). */
static void format_float(float v, char *buf, size_t cap) {
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, cap, "%.*g", digits, (double)v);
        if (strtof(buf, NULL) == v) return;
    }
}

static void format_value(const mome_config *cfg, const field *f, char *buf, size_t cap) {
    const char *src = (const char *)cfg + f->offset;
    switch (f->type) {
    case T_INT: snprintf(buf, cap, "%d", *(const int *)src); break;
    case T_LONG: snprintf(buf, cap, "%ld", *(const long *)src); break;
    case T_FLOAT: format_float(*(const float *)src, buf, cap); break;
    case T_U64: snprintf(buf, cap, "%llu", (unsigned long long)*(const uint64_t *)src); break;
    case T_STR: snprintf(buf, cap, "%s", src); break;
    }
}

char *mome_config_to_string(const mome_config *cfg) {
    size_t cap = 256 + N_FIELDS * (64 + MOME_CFG_STR), n = 0;
    char *out = mome_malloc(cap);
    out[0] = 0;
    const char *cur = NULL;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const field *f = &schema[i];
        char val[MOME_CFG_STR + 32];
        format_value(cfg, f, val, sizeof val);
        if (!cur || strcmp(cur, f->section) != 0) {
            n += (size_t)snprintf(out + n, cap - n, "%s[%s]\n", cur ? "\n" : "", f->section);
            cur = f->section;
        }
        n += (size_t)snprintf(out + n, cap - n, "%s = %s\n", f->key, val);
        MOME_CHECK(n < cap, "config text buffer too small");
    }
    return out;
}

void mome_config_print_schema(void *file) {
    FILE *out = file ? (FILE *)file : stdout;
    fprintf(out, "Configuration keys (INI sections; override any key with section.key=value):\n");
    const char *cur = NULL;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const field *f = &schema[i];
        if (!cur || strcmp(cur, f->section) != 0) {
            fprintf(out, "\n[%s]\n", f->section);
            cur = f->section;
        }
        char range[96] = "";
        if (f->type == T_INT || f->type == T_LONG)
            snprintf(range, sizeof range, "[%ld, %ld]", (long)f->min, (long)f->max);
        else if (f->type == T_FLOAT)
            snprintf(range, sizeof range, "[%g, %g]", f->min, f->max);
        else if (f->type == T_U64)
            snprintf(range, sizeof range, "[0, 2^64-1]");
        char def[64];
        snprintf(def, sizeof def, "%s", f->type == T_STR ? (f->def[0] ? f->def : "\"\"") : f->def);
        fprintf(out, "  %-13s %-6s default %-13s %-16s %s\n", f->key, type_name(f->type), def, range, f->help);
    }
    fprintf(out,
            "\nRules: unknown sections/keys are errors; a key may appear once per file (overrides then replace "
            "it);\nnumbers are strict (no trailing characters); comments are lines starting with ';' or '#'.\n");
}
