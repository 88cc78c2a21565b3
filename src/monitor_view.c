/* monitor_view.c — `mome monitor` (monitor_view.h): subscribes to a run's ZeroMQ stream and shows it.
 *
 * One validated message feeds three outputs: a terminal view redrawn in place with ANSI escapes (at most five
 * times a second: a run can publish hundreds of steps a second and a terminal is slow), plain one-line records
 * when stdout is not a terminal, and JSON lines (--json) for other programs. Every message is checked against the
 * schema of docs/monitoring.md before anything reads it: the stream may come from another host, so a malformed
 * message is skipped with a warning and never trusted. Strings from messages are printed with control characters
 * replaced, so a publisher cannot send escape sequences to the terminal.
 *
 * Following a run directory: monitor.json is rewritten each time the run starts, with the new session's endpoint
 * (a new port when the run binds port 0). The monitor polls it, re-reads it when it changes and reconnects; a
 * message from a session that monitor.json has replaced is dropped, so a restart is announced once.
 */
#include "mome/monitor_view.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "mome/common.h"
#include "mome/monitor.h"
#include "monitor_view_feed.h"

enum { EXIT_COMPLETED = 0, EXIT_USAGE = 2 };

/* A message above this is skipped with a warning (the largest real one, mome.meta with its config text or a
 * mome.train with expert_load of 64 layers x 256 experts, is ~200 KB). */
#define MAX_MESSAGE_BYTES (1 << 20)
/* libzmq drops the connection of a peer that sends a frame above this, before it is read into memory. */
#define HARD_MESSAGE_BYTES ((int64_t)64 << 20)
#define MAX_DIM 4096          /* layers, experts */
#define MAX_WARNINGS 200      /* then one "no further warnings" line */
#define REDRAW_S 0.2          /* terminal view: at most 5 redraws per second */
#define IDLE_REDRAW_S 1.0     /* ... and at least one per second ("last message N s ago") */
#define INFO_POLL_S 0.2       /* monitor.json */
#define POLL_MS 100
#define MAX_SCREEN_LINES 256
#define LINE_BYTES 4096
#define OLD_SESSIONS 8

static const char *usage_monitor =
    "usage: mome monitor [--json | --plain] [--timeout SECONDS] [--server-key KEY] RUN_DIR | ENDPOINT\n"
    "       mome monitor --keygen PREFIX\n"
    "\n"
    "Shows what a run publishes (docs/monitoring.md): step and progress, the loss and its parts, alpha, learning\n"
    "rate, tokens/s, MFU, ETA, the load of each expert, evaluations, checkpoints and log lines. RUN_DIR\n"
    "(runs/<run_name>) is followed through its monitor.json: the monitor waits for a run that has not started yet\n"
    "and follows the run across restarts. ENDPOINT (tcp://HOST:PORT, ipc://PATH) is a publisher's socket.\n"
    "On a terminal the view is redrawn in place; otherwise each record is one line.\n"
    "Exit codes: 0 the run completed, 1 it failed, 3 --timeout, 130 interrupted. A run that stopped on a signal\n"
    "(it wrote a checkpoint and can resume) is waited for.\n"
    "\n"
    "  --json               one JSON object per line: each message with its topic added as \"topic\"\n"
    "  --plain              one line per record even on a terminal\n"
    "  --timeout SECONDS    give up (exit 3) when no message arrives for that long\n"
    "  --server-key KEY     the publisher's CURVE public key: 40 Z85 characters, or a file holding them\n"
    "                       (PREFIX.pub); with RUN_DIR the default is monitor.json's curve_server_key\n"
    "  --keygen PREFIX      write a CURVE key pair, PREFIX.key (secret, mode 0600: the run's\n"
    "                       monitor.curve_secret_key) and PREFIX.pub (public), then exit\n";

/* ---- small text helpers ---- */

typedef struct {
    char *p;
    size_t cap, len;
} sbuf;

static void sb_init(sbuf *b, char *p, size_t cap) {
    b->p = p;
    b->cap = cap;
    b->len = 0;
    p[0] = '\0';
}

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...) {
    if (b->len + 1 >= b->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    b->len = b->len + (size_t)n < b->cap ? b->len + (size_t)n : b->cap - 1;
}

/* Copies s into out with control characters (C0, DEL, C1) replaced by '?', cut at a character boundary. */
static const char *clean(const char *s, char *out, size_t cap) {
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    for (size_t i = 0; u[i] && o + 1 < cap; i++) {
        unsigned char c = u[i];
        if (c < 0x20 || c == 0x7f) {
            out[o++] = '?';
        } else if (c == 0xc2 && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f) { /* U+0080..U+009F */
            out[o++] = '?';
            i++;
        } else {
            out[o++] = (char)c;
        }
    }
    while (o > 0 && o + 1 >= cap && ((unsigned char)out[o - 1] & 0xc0) == 0x80) o--; /* no split character */
    if (o > 0 && o + 1 >= cap && ((unsigned char)out[o - 1] & 0xc0) == 0xc0) o--;
    out[o] = '\0';
    return out;
}

/* 12.3k, 4.56M: counts and rates. */
static const char *si(char *buf, size_t n, double v, const char *unit) {
    const double a = fabs(v);
    if (a < 1e3) snprintf(buf, n, "%.0f%s", v, unit);
    else if (a < 1e6) snprintf(buf, n, "%.1fk%s", v / 1e3, unit);
    else if (a < 1e9) snprintf(buf, n, "%.2fM%s", v / 1e6, unit);
    else if (a < 1e12) snprintf(buf, n, "%.2fG%s", v / 1e9, unit);
    else snprintf(buf, n, "%.2fT%s", v / 1e12, unit);
    return buf;
}

/* 42s, 5m12s, 3h07m, 2.5d. */
static const char *duration(char *buf, size_t n, double s) {
    if (!(s >= 0)) s = 0;
    /* Days while still a double: a message's eta_s may be any finite number, and converting one beyond a long's
     * range is undefined. */
    if (s >= 100 * 3600) {
        snprintf(buf, n, "%.1fd", s / 86400.0);
        return buf;
    }
    const long t = (long)(s + 0.5);
    if (t < 60) snprintf(buf, n, "%lds", t);
    else if (t < 3600) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else if (t < 100 * 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    else snprintf(buf, n, "%.1fd", s / 86400.0);
    return buf;
}

/* Bytes of s that fit in `cols` terminal columns: escape sequences take none, a UTF-8 character one. */
static size_t fit_columns(const char *s, int cols) {
    int used = 0;
    size_t i = 0;
    while (s[i]) {
        if (s[i] == '\x1b' && s[i + 1] == '[') {
            size_t j = i + 2;
            while (s[j] && !(s[j] >= 0x40 && s[j] <= 0x7e)) j++;
            i = s[j] ? j + 1 : j;
            continue;
        }
        if (used >= cols) break;
        used++;
        i++;
        while (((unsigned char)s[i] & 0xc0) == 0x80) i++;
    }
    return i;
}

/* ---- reading validated messages ---- */

static double num(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static long long integer(const json_t *o, const char *key, long long fallback) {
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : fallback;
}

static const char *str(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- the schema (docs/monitoring.md) ---- */

enum { TOPIC_META, TOPIC_TRAIN, TOPIC_EVAL, TOPIC_CKPT, TOPIC_LOG, TOPIC_END, N_TOPICS };
static const char *const topic_names[N_TOPICS] = {"mome.meta", "mome.train", "mome.eval",
                                                  "mome.ckpt", "mome.log",   "mome.end"};

typedef enum {
    T_INT,     /* integer */
    T_INTN,    /* integer or null */
    T_NUM,     /* number */
    T_NUMN,    /* number or null (non-finite values are sent as null) */
    T_STR,
    T_STRN,
    T_BOOL,
    T_OBJ,
    T_STRLIST, /* array of strings */
    T_NUMMAP,  /* object of numbers or nulls */
    T_LOAD     /* null, or an array of rows of equal length of numbers or nulls */
} ftype;

typedef struct {
    const char *key;
    ftype type;
} fspec;

static const fspec f_common[] = {{"v", T_INT},   {"run_id", T_STR}, {"session", T_STR},
                                 {"seq", T_INT}, {"t", T_NUM},      {"step", T_INT},   {NULL, T_INT}};
static const fspec f_meta[] = {{"config", T_STR},         {"n_params", T_NUM},   {"world", T_INT},
                               {"threads", T_INT},        {"steps", T_INT},      {"start_step", T_INT},
                               {"tokens_per_step", T_NUMN}, {"flop_per_token", T_NUMN}, {"sgemm_gflops", T_NUMN},
                               {"model", T_OBJ},          {"domains", T_STRLIST}, {"teacher", T_STRN},
                               {NULL, T_INT}};
static const fspec f_model[] = {{"n_layer", T_INT},  {"d_model", T_INT},   {"n_head", T_INT}, {"vocab_size", T_INT},
                                {"seq_len", T_INT},  {"n_experts", T_INTN}, {"top_k", T_INTN}, {NULL, T_INT}};
static const fspec f_train[] = {{"loss", T_NUMN},          {"ce", T_NUMN},           {"kd", T_NUMN},
                                {"aux", T_NUMN},           {"z_loss", T_NUMN},       {"alpha", T_NUMN},
                                {"lr", T_NUMN},            {"grad_norm", T_NUMN},    {"tokens_per_s", T_NUMN},
                                {"mfu", T_NUMN},           {"step_ms", T_NUMN},      {"eta_s", T_NUMN},
                                {"tokens_seen", T_NUMN},   {"dropped_frac", T_NUMN}, {"teacher_bytes", T_NUMN},
                                {"expert_load", T_LOAD},   {NULL, T_INT}};
static const fspec f_eval[] = {{"val_loss", T_NUMMAP}, {"val_ppl", T_NUMMAP}, {NULL, T_INT}};
static const fspec f_ckpt[] = {{"path", T_STR}, {"ok", T_BOOL}, {"seconds", T_NUMN}, {"error", T_STRN}, {NULL, T_INT}};
static const fspec f_log[] = {{"level", T_STR}, {"message", T_STR}, {NULL, T_INT}};
static const fspec f_end[] = {{"status", T_STR}, {"exit_code", T_INT}, {"published", T_INT}, {NULL, T_INT}};
static const fspec *const f_topic[N_TOPICS] = {f_meta, f_train, f_eval, f_ckpt, f_log, f_end};

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static int is_num_or_null(const json_t *v) { return json_is_number(v) || json_is_null(v); }

/* NULL when v has type t, else what was expected. */
static const char *type_mismatch(const json_t *v, ftype t) {
    switch (t) {
    case T_INT: return json_is_integer(v) ? NULL : "an integer";
    case T_INTN: return json_is_integer(v) || json_is_null(v) ? NULL : "an integer or null";
    case T_NUM: return json_is_number(v) ? NULL : "a number";
    case T_NUMN: return is_num_or_null(v) ? NULL : "a number or null";
    case T_STR: return json_is_string(v) ? NULL : "a string";
    case T_STRN: return json_is_string(v) || json_is_null(v) ? NULL : "a string or null";
    case T_BOOL: return json_is_boolean(v) ? NULL : "a boolean";
    case T_OBJ: return json_is_object(v) ? NULL : "an object";
    case T_STRLIST: {
        if (!json_is_array(v)) return "an array of strings";
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!json_is_string(json_array_get(v, i))) return "an array of strings";
        return NULL;
    }
    case T_NUMMAP: {
        if (!json_is_object(v)) return "an object of numbers";
        const char *k;
        const json_t *x;
        json_object_foreach((json_t *)v, k, x) if (!is_num_or_null(x)) return "an object of numbers";
        return NULL;
    }
    case T_LOAD: {
        if (json_is_null(v)) return NULL;
        const char *want = "null or a list (one per layer, at most 4096) of equal-length lists of numbers";
        if (!json_is_array(v) || json_array_size(v) > MAX_DIM) return want;
        size_t E = 0;
        for (size_t l = 0; l < json_array_size(v); l++) {
            const json_t *row = json_array_get(v, l);
            if (!json_is_array(row) || json_array_size(row) > MAX_DIM) return want;
            if (l == 0) E = json_array_size(row);
            if (json_array_size(row) != E) return want;
            for (size_t e = 0; e < E; e++)
                if (!is_num_or_null(json_array_get(row, e))) return want;
        }
        return NULL;
    }
    }
    return "?";
}

static int check_fields(const json_t *o, const fspec *f, const char *prefix, char *why, size_t n) {
    for (; f->key; f++) {
        const json_t *v = json_object_get(o, f->key);
        if (!v) {
            snprintf(why, n, "field '%s%s' is missing", prefix, f->key);
            return -1;
        }
        const char *want = type_mismatch(v, f->type);
        if (want) {
            snprintf(why, n, "field '%s%s' is %s, expected %s", prefix, f->key, json_kind(v), want);
            return -1;
        }
    }
    return 0;
}

static int is_session_id(const char *s) {
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f') || (s[n] >= 'A' && s[n] <= 'F')))
            return 0;
    return n == 16;
}

/* 0 when o is a well-formed message of `topic`; else -1 with the reason in why. */
static int validate(int topic, const json_t *o, char *why, size_t n) {
    if (!json_is_object(o)) {
        snprintf(why, n, "the body is %s, not a JSON object", json_kind(o));
        return -1;
    }
    if (check_fields(o, f_common, "", why, n)) return -1;
    if (integer(o, "v", 0) != 1) {
        snprintf(why, n, "schema version %lld (this monitor reads version 1)", integer(o, "v", 0));
        return -1;
    }
    if (!is_session_id(str(o, "session"))) {
        snprintf(why, n, "field 'session' is not 16 hex digits");
        return -1;
    }
    if (strlen(str(o, "run_id")) > 255) {
        snprintf(why, n, "field 'run_id' is longer than 255 bytes");
        return -1;
    }
    if (integer(o, "seq", -1) < 0 || integer(o, "step", -1) < 0) {
        snprintf(why, n, "negative 'seq' or 'step'");
        return -1;
    }
    if (check_fields(o, f_topic[topic], "", why, n)) return -1;
    if (topic == TOPIC_META) {
        if (check_fields(json_object_get(o, "model"), f_model, "model.", why, n)) return -1;
        if (integer(o, "steps", -1) < 0) {
            snprintf(why, n, "negative 'steps'");
            return -1;
        }
    }
    if (topic == TOPIC_END) {
        const char *s = str(o, "status");
        if (strcmp(s, "completed") != 0 && strcmp(s, "stopped") != 0 && strcmp(s, "failed") != 0) {
            char c[64];
            snprintf(why, n, "unknown status '%s' (expected completed, stopped or failed)", clean(s, c, sizeof c));
            return -1;
        }
    }
    return 0;
}

/* ---- the monitor ---- */

enum { OUT_VIEW, OUT_PLAIN, OUT_JSON };
enum { CONN_NONE, CONN_CONNECTING, CONN_HANDSHAKE, CONN_CONNECTED };
enum { RUN_WAITING, RUN_LIVE, RUN_STOPPED };

typedef struct {
    /* options */
    const char *target;
    int from_dir;           /* target is a run directory (or its monitor.json), else an endpoint */
    int out;                /* OUT_* */
    double timeout_s;       /* 0: wait forever */
    char pinned_key[41];    /* --server-key, "" when not given */
    /* the connection */
    void *ctx, *sub, *events; /* SUB socket, and the PAIR socket that receives its socket events */
    int n_connections;
    char endpoint[512];
    char server_key[41];    /* "" without CURVE */
    char client_public[41], client_secret[41];
    int conn;               /* CONN_* */
    int handshake_failures; /* since the last handshake that succeeded (see handshake_failed) */
    /* monitor.json */
    char *info_path;
    struct stat info_st;
    int info_present, waiting_noted, key_differs_noted;
    double next_info_check;
    /* the stream */
    char run_id[256];
    char session[17];       /* the current session (from monitor.json or the messages) */
    char announced[17];     /* the session whose first message was reported */
    char old_sessions[OLD_SESSIONS][17];
    int n_old;
    int run_state;          /* RUN_* */
    long long last_seq;     /* -1: none yet in this session */
    long long received, lost, skipped, stale;
    double last_rx;         /* mome_now() of the last message of any kind */
    json_t *meta, *train, *eval, *ckpt; /* the last valid one of each (owned) */
    int warnings;
    /* terminal view */
    int utf8;
    int drawn;              /* lines of the live block on screen now */
    int cols, rows;         /* the terminal's size at the last redraw */
    int dirty;
    double last_draw;
    char *screen;           /* MAX_SCREEN_LINES x LINE_BYTES */
    int fixed_cols, fixed_rows; /* the terminal size to assume (monitor_view_feed.h); 0: ask the terminal */
} monitor;

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

static void view_erase(monitor *m) {
    if (m->out != OUT_VIEW || m->drawn == 0) return;
    printf("\x1b[%dA\r\x1b[J", m->drawn);
    m->drawn = 0;
    m->dirty = 1;
}

/* A line about the run (a restart, an event, an eval...): stdout in plain mode and above the live block in the
 * terminal view; stderr with --json, whose stdout holds only messages. */
static void record(monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record(monitor *m, const char *fmt, ...) {
    char line[LINE_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    view_erase(m);
    FILE *f = m->out == OUT_JSON ? stderr : stdout;
    fprintf(f, "%s%s\n", m->out == OUT_JSON ? "mome monitor: " : "", line);
    fflush(f);
}

/* What the monitor itself does (waiting, connecting): stderr, or above the live block. */
static void note(monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(monitor *m, const char *fmt, ...) {
    char line[LINE_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    view_erase(m);
    FILE *f = m->out == OUT_VIEW ? stdout : stderr;
    fprintf(f, "mome monitor: %s\n", line);
    fflush(f);
}

static void warn(monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(monitor *m, const char *fmt, ...) {
    if (m->warnings > MAX_WARNINGS) return;
    char line[LINE_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    view_erase(m);
    fflush(stdout);
    if (m->warnings++ == MAX_WARNINGS) mome_warn("monitor: %d warnings: no further warnings are printed", MAX_WARNINGS);
    else mome_warn("monitor: %s", line);
}

static void skip(monitor *m, const char *topic, const char *why) {
    m->skipped++;
    char t[80];
    warn(m, "skipped a message%s%s%s: %s", topic ? " (" : "", topic ? clean(topic, t, sizeof t) : "", topic ? ")" : "",
         why);
}

/* ---- one-line records ---- */

static void add_num(sbuf *b, const json_t *o, const char *key, const char *fmt) {
    const double v = num(o, key);
    if (isfinite(v)) sb_add(b, fmt, v);
}

/* Mean over layers of each expert's load, into mean[E]; returns E (0: no expert_load). *layers gets L. */
static int mean_load(const json_t *train, double *mean, int *layers) {
    const json_t *load = json_object_get(train, "expert_load");
    *layers = 0;
    if (!json_is_array(load) || json_array_size(load) == 0) return 0;
    const int L = (int)json_array_size(load);
    const int E = (int)json_array_size(json_array_get(load, 0));
    for (int e = 0; e < E; e++) {
        double s = 0;
        int cnt = 0;
        for (int l = 0; l < L; l++) {
            const json_t *x = json_array_get(json_array_get(load, (size_t)l), (size_t)e);
            if (json_is_number(x)) {
                s += json_number_value(x);
                cnt++;
            }
        }
        mean[e] = cnt ? s / cnt : NAN;
    }
    *layers = L;
    return E;
}

static void train_line(monitor *m, const json_t *o, sbuf *b) {
    sb_add(b, "step %lld", integer(o, "step", 0));
    if (m->meta) sb_add(b, "/%lld", integer(m->meta, "steps", 0));
    add_num(b, o, "loss", " loss %.4f");
    add_num(b, o, "ce", " ce %.4f");
    add_num(b, o, "kd", " kd %.4f");
    add_num(b, o, "aux", " aux %.4g");
    add_num(b, o, "z_loss", " z %.4g");
    add_num(b, o, "alpha", " alpha %.3f");
    add_num(b, o, "lr", " lr %.3e");
    add_num(b, o, "grad_norm", " gnorm %.4g");
    char t[32];
    double v = num(o, "tokens_per_s");
    if (isfinite(v)) sb_add(b, " tok/s %s", si(t, sizeof t, v, ""));
    add_num(b, o, "mfu", " mfu %.3f");
    add_num(b, o, "step_ms", " step_ms %.1f");
    v = num(o, "eta_s");
    if (isfinite(v)) sb_add(b, " eta %s", duration(t, sizeof t, v));
    v = num(o, "tokens_seen");
    if (isfinite(v)) sb_add(b, " tokens %s", si(t, sizeof t, v, ""));
    add_num(b, o, "dropped_frac", " dropped %.4f");
    v = num(o, "teacher_bytes");
    if (isfinite(v)) sb_add(b, " teacher %s", si(t, sizeof t, v, "B"));
    double mean[MAX_DIM];
    int L;
    const int E = mean_load(o, mean, &L);
    if (E > 0) {
        sb_add(b, " load[%dL]", L);
        for (int e = 0; e < E && e < 64; e++) sb_add(b, isfinite(mean[e]) ? " %.3f" : " -", mean[e]);
        if (E > 64) sb_add(b, " ...(%d experts)", E);
    }
}

static void meta_line(const json_t *o, sbuf *b) {
    const json_t *model = json_object_get(o, "model");
    char t[32], c[512];
    sb_add(b, "meta run %s steps %lld start %lld params %s world %lld threads %lld",
           clean(str(o, "run_id"), c, sizeof c), integer(o, "steps", 0), integer(o, "start_step", 0),
           si(t, sizeof t, num(o, "n_params"), ""), integer(o, "world", 0), integer(o, "threads", 0));
    sb_add(b, " layers %lld d_model %lld heads %lld vocab %lld seq %lld", integer(model, "n_layer", 0),
           integer(model, "d_model", 0), integer(model, "n_head", 0), integer(model, "vocab_size", 0),
           integer(model, "seq_len", 0));
    const long long E = integer(model, "n_experts", 0);
    if (E > 0) sb_add(b, " experts %lld top-%lld", E, integer(model, "top_k", 0));
    else sb_add(b, " dense");
    const json_t *d = json_object_get(o, "domains");
    sb_add(b, " domains ");
    for (size_t i = 0; i < json_array_size(d); i++)
        sb_add(b, "%s%s", i ? "," : "", clean(json_string_value(json_array_get(d, i)), c, 64));
    if (json_array_size(d) == 0) sb_add(b, "-");
    sb_add(b, " teacher %s", str(o, "teacher") ? clean(str(o, "teacher"), c, sizeof c) : "none");
}

static void eval_line(const json_t *o, sbuf *b, int with_step) {
    const json_t *loss = json_object_get(o, "val_loss"), *ppl = json_object_get(o, "val_ppl");
    if (with_step) sb_add(b, "eval step %lld", integer(o, "step", 0));
    const char *k;
    const json_t *x;
    char c[64];
    json_object_foreach((json_t *)loss, k, x) {
        sb_add(b, " %s", clean(k, c, sizeof c));
        if (json_is_number(x)) sb_add(b, " %.4f", json_number_value(x));
        else sb_add(b, " -");
        const double p = num(ppl, k);
        if (isfinite(p)) sb_add(b, " (ppl %.2f)", p);
    }
}

static void ckpt_line(const json_t *o, sbuf *b, int with_step) {
    char c[1024], e[1024];
    if (with_step) sb_add(b, "ckpt step %lld ", integer(o, "step", 0));
    sb_add(b, "%s", json_is_true(json_object_get(o, "ok")) ? "ok" : "FAILED");
    const double s = num(o, "seconds");
    if (isfinite(s)) sb_add(b, " %.2fs", s);
    if (str(o, "path")[0]) sb_add(b, " %s", clean(str(o, "path"), c, sizeof c));
    if (str(o, "error")) sb_add(b, ": %s", clean(str(o, "error"), e, sizeof e));
}

/* ---- the terminal view ---- */

static void add_bar(sbuf *b, double frac, int width, int utf8) {
    static const char *const eighths[8] = {"", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b", "\u258a", "\u2589"};
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    const long filled = lround(frac * width * 8);
    sb_add(b, "[");
    for (int i = 0; i < width; i++) {
        const long e = filled - 8L * i;
        if (e >= 8) sb_add(b, "%s", utf8 ? "\u2588" : "#");
        else if (e <= 0) sb_add(b, "%s", utf8 ? "\u00b7" : ".");
        else sb_add(b, "%s", utf8 ? eighths[e] : e >= 4 ? "#" : ".");
    }
    sb_add(b, "]");
}

/* The lines of the expert-load section into lines[0..max): per layer when every layer gets a line and each
 * expert a bar of at least 4 columns, else the mean over layers, experts in columns. Returns the line count. */
static int expert_lines(monitor *m, char (*lines)[LINE_BYTES], int max, int W) {
    const json_t *load = m->train ? json_object_get(m->train, "expert_load") : NULL;
    if (max < 2 || !json_is_array(load) || json_array_size(load) == 0) return 0;
    const int L = (int)json_array_size(load);
    const int E = (int)json_array_size(json_array_get(load, 0));
    if (E == 0) return 0;
    double mean[MAX_DIM];
    int layers;
    mean_load(m->train, mean, &layers);
    double top = 0;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            const double x = json_number_value(json_array_get(json_array_get(load, (size_t)l), (size_t)e));
            if (x > top) top = x;
        }
    /* Full bar: twice the uniform share, or the largest load when above it, so balance reads as half bars. */
    const double full = top > 2.0 / E ? top : 2.0 / E;
    const long long k = m->meta ? integer(json_object_get(m->meta, "model"), "top_k", 0) : 0;
    char topk[32] = "";
    if (k > 0) snprintf(topk, sizeof topk, " top-%lld", k);
    sbuf b;
    int n = 0;
    const int bw_layer = (W - 5) / E - 9; /* cell: "[bar] 0.25  " */
    if (L + 1 <= max && bw_layer >= 4) {
        sb_init(&b, lines[n++], LINE_BYTES);
        sb_add(&b, "experts: %d%s, load per layer (uniform %.3f, full bar %.3f, max %.2fx uniform)", E, topk, 1.0 / E,
               full, top * E);
        const int bw = bw_layer > 24 ? 24 : bw_layer;
        for (int l = 0; l < L; l++) {
            sb_init(&b, lines[n++], LINE_BYTES);
            sb_add(&b, "L%-3d ", l);
            const json_t *row = json_array_get(load, (size_t)l);
            for (int e = 0; e < E; e++) {
                const json_t *x = json_array_get(row, (size_t)e);
                add_bar(&b, json_is_number(x) ? json_number_value(x) / full : 0, bw, m->utf8);
                if (json_is_number(x)) sb_add(&b, " %.2f  ", json_number_value(x));
                else sb_add(&b, "    -  ");
            }
        }
        return n;
    }
    sb_init(&b, lines[n++], LINE_BYTES);
    sb_add(&b, "experts: %d%s, load as the mean over %d layer%s (uniform %.3f, full bar %.3f, max %.2fx uniform)", E,
           topk, layers, layers == 1 ? "" : "s", 1.0 / E, full, top * E);
    /* cell: "e12  [bar] 0.250  " */
    int bw = 20, ncols = 1;
    for (; bw >= 4; bw -= 2) {
        ncols = W / (bw + 15) > 0 ? W / (bw + 15) : 1;
        if ((E + ncols - 1) / ncols <= max - 1) break;
    }
    if (bw < 4) bw = 4;
    int rows = (E + ncols - 1) / ncols, shown = E;
    if (rows > max - 1) { /* not all fit: the first ones, and a summary line */
        rows = max - 2;
        shown = rows * ncols;
    }
    for (int r = 0; r < rows; r++) {
        sb_init(&b, lines[n++], LINE_BYTES);
        for (int c = 0; c < ncols; c++) {
            const int e = c * rows + r; /* column-major: experts read down the columns */
            if (e >= shown) break;
            sb_add(&b, "e%-3d ", e);
            add_bar(&b, mean[e] / full, bw, m->utf8);
            if (isfinite(mean[e])) sb_add(&b, " %.3f  ", mean[e]);
            else sb_add(&b, "     -  ");
        }
    }
    if (shown < E && n < max) {
        double lo = INFINITY, hi = -INFINITY;
        for (int e = shown; e < E; e++)
            if (isfinite(mean[e])) {
                lo = fmin(lo, mean[e]);
                hi = fmax(hi, mean[e]);
            }
        sb_init(&b, lines[n++], LINE_BYTES);
        sb_add(&b, "... %d more experts (load %.3f to %.3f)", E - shown, lo, hi);
    }
    return n;
}

static void view_draw(monitor *m) {
    struct winsize ws;
    int cols = 80, rows = 24;
    if (m->fixed_cols > 0 && m->fixed_rows > 0) {
        cols = m->fixed_cols;
        rows = m->fixed_rows;
    } else if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
        cols = ws.ws_col;
        rows = ws.ws_row;
    }
    if (cols < 20) cols = 20;
    if (rows < 6) rows = 6;
    const int W = cols - 1 < LINE_BYTES / 8 ? cols - 1 : LINE_BYTES / 8; /* no line wraps: the count stays right */
    int max = rows - 1 < MAX_SCREEN_LINES ? rows - 1 : MAX_SCREEN_LINES;
    char (*lines)[LINE_BYTES] = (char (*)[LINE_BYTES])m->screen;
    int n = 0;
    sbuf b;
    char c1[256], c2[600], t1[32], t2[32];
    const double now = mome_now();

    sb_init(&b, lines[n++], LINE_BYTES);
    static const char *const conn_names[] = {"not connected", "connecting", "handshake", "connected"};
    sb_add(&b, "\x1b[1mmome monitor\x1b[0m  run %s  session %s  %s (%s)",
           m->run_id[0] ? clean(m->run_id, c1, sizeof c1) : "?", m->session[0] ? m->session : "-",
           m->endpoint[0] ? clean(m->endpoint, c2, sizeof c2) : "-", conn_names[m->conn]);

    const json_t *tr = m->train;
    const long long steps = m->meta ? integer(m->meta, "steps", 0) : 0;
    sb_init(&b, lines[n++], LINE_BYTES);
    if (m->run_state == RUN_STOPPED) {
        sb_add(&b, "\x1b[1mrun stopped at step %lld: waiting for it to resume\x1b[0m", tr ? integer(tr, "step", 0) : 0);
    } else if (!tr) {
        if (m->from_dir && !m->info_present)
            sb_add(&b, "waiting for %s (the run has not started)", clean(m->info_path, c2, sizeof c2));
        else
            sb_add(&b, "waiting for the first step");
    } else {
        const long long step = integer(tr, "step", 0);
        const double eta = num(tr, "eta_s");
        char suffix[64] = "";
        if (isfinite(eta)) snprintf(suffix, sizeof suffix, "  eta %s", duration(t1, sizeof t1, eta));
        if (steps > 0) {
            char prefix[64];
            snprintf(prefix, sizeof prefix, "step %lld/%lld ", step, steps);
            const double frac = (double)step / (double)steps;
            const int bw = W - (int)strlen(prefix) - (int)strlen(suffix) - 9;
            sb_add(&b, "\x1b[1m%s\x1b[0m", prefix);
            if (bw >= 10) add_bar(&b, frac, bw > 60 ? 60 : bw, m->utf8);
            sb_add(&b, " %5.1f%%%s", 100.0 * frac, suffix);
        } else {
            sb_add(&b, "\x1b[1mstep %lld\x1b[0m%s", step, suffix);
        }
    }
    if (tr) {
        sb_init(&b, lines[n++], LINE_BYTES);
        add_num(&b, tr, "loss", "loss %.4f");
        add_num(&b, tr, "ce", "   ce %.4f");
        add_num(&b, tr, "kd", "   kd %.4f");
        add_num(&b, tr, "aux", "   aux %.4g");
        add_num(&b, tr, "z_loss", "   z %.4g");
        add_num(&b, tr, "alpha", "   alpha %.3f");
        add_num(&b, tr, "grad_norm", "   |g| %.4g");
        sb_init(&b, lines[n++], LINE_BYTES);
        add_num(&b, tr, "lr", "lr %.3e");
        double v = num(tr, "tokens_per_s");
        if (isfinite(v)) sb_add(&b, "   tok/s %s", si(t1, sizeof t1, v, ""));
        add_num(&b, tr, "mfu", "   MFU %.3f");
        add_num(&b, tr, "step_ms", "   step %.0f ms");
        v = num(tr, "tokens_seen");
        if (isfinite(v)) sb_add(&b, "   tokens %s", si(t1, sizeof t1, v, ""));
        v = num(tr, "dropped_frac");
        if (isfinite(v)) sb_add(&b, "   dropped %.2f%%", 100.0 * v);
        v = num(tr, "teacher_bytes");
        if (isfinite(v)) sb_add(&b, "   teacher %s", si(t2, sizeof t2, v, "B"));
    }
    const int tail = (m->eval ? 1 : 0) + (m->ckpt ? 1 : 0) + 1;
    n += expert_lines(m, lines + n, max - n - tail, W);
    if (m->eval && n < max) {
        sb_init(&b, lines[n++], LINE_BYTES);
        sb_add(&b, "eval @%lld:", integer(m->eval, "step", 0));
        eval_line(m->eval, &b, 0);
    }
    if (m->ckpt && n < max) {
        sb_init(&b, lines[n++], LINE_BYTES);
        sb_add(&b, "ckpt @%lld: ", integer(m->ckpt, "step", 0));
        ckpt_line(m->ckpt, &b, 0);
    }
    if (n < max) {
        sb_init(&b, lines[n++], LINE_BYTES);
        sb_add(&b, "messages %lld   lost %lld   skipped %lld", m->received, m->lost, m->skipped);
        if (m->stale) sb_add(&b, "   from an old session %lld", m->stale);
        if (m->received) sb_add(&b, "   last %s ago", duration(t1, sizeof t1, now - m->last_rx));
        sb_add(&b, "   (Ctrl-C quits)");
    }

    /* Overwrite the previous block in place (no flicker), then clear what is left of it. */
    char *out = mome_malloc((size_t)n * (LINE_BYTES + 16) + 64);
    sbuf o;
    sb_init(&o, out, (size_t)n * (LINE_BYTES + 16) + 64);
    sb_add(&o, "\x1b[?25l");
    /* After a resize the old block may have been rewrapped by the terminal: moving up would miss it. */
    if (m->drawn > 0 && (cols != m->cols || rows != m->rows)) sb_add(&o, "\x1b[2J\x1b[H");
    else if (m->drawn > 0) sb_add(&o, "\x1b[%dA\r", m->drawn);
    for (int i = 0; i < n; i++) {
        const size_t keep = fit_columns(lines[i], W);
        lines[i][keep] = '\0';
        sb_add(&o, "%s\x1b[0m\x1b[K\n", lines[i]);
    }
    sb_add(&o, "\x1b[J");
    fwrite(out, 1, o.len, stdout);
    fflush(stdout);
    mome_free(out);
    m->drawn = n;
    m->cols = cols;
    m->rows = rows;
    m->dirty = 0;
    m->last_draw = now;
}

static void view_maybe_draw(monitor *m) {
    if (m->out != OUT_VIEW) return;
    const double since = mome_now() - m->last_draw;
    if ((m->dirty && since >= REDRAW_S) || since >= IDLE_REDRAW_S) view_draw(m);
}

/* ---- handling a message ---- */

static int session_is_old(const monitor *m, const char *s) {
    for (int i = 0; i < m->n_old && i < OLD_SESSIONS; i++)
        if (strcmp(m->old_sessions[i], s) == 0) return 1;
    return 0;
}

/* Makes s the current session; the one it replaces is remembered, so its late messages are dropped. */
static void switch_session(monitor *m, const char *s) {
    if (strcmp(m->session, s) == 0) return;
    if (m->session[0]) {
        snprintf(m->old_sessions[m->n_old % OLD_SESSIONS], sizeof m->old_sessions[0], "%s", m->session);
        m->n_old++;
    }
    snprintf(m->session, sizeof m->session, "%s", s);
    m->last_seq = -1;
    json_decref(m->meta);
    m->meta = NULL; /* the new session sends its own (its steps may differ) */
    m->dirty = 1;
}

static void print_json(const char *topic, const json_t *o, const char *raw, size_t len) {
    /* The publisher's own text with ,"topic":... spliced in before the closing brace, so numbers keep the
     * digits they were sent with; re-encoded only when the text spans lines or already has a "topic". */
    size_t end = len;
    while (end > 0 && (raw[end - 1] == ' ' || raw[end - 1] == '\t' || raw[end - 1] == '\n' || raw[end - 1] == '\r'))
        end--;
    if (end > 0 && raw[end - 1] == '}' && !memchr(raw, '\n', end) && !memchr(raw, '\r', end) &&
        !json_object_get(o, "topic")) {
        fwrite(raw, 1, end - 1, stdout);
        printf(",\"topic\":\"%s\"}\n", topic);
    } else {
        json_t *copy = json_copy((json_t *)o);
        json_object_set_new(copy, "topic", json_string(topic));
        char *text = json_dumps(copy, JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (text) printf("%s\n", text);
        free(text);
        json_decref(copy);
    }
    fflush(stdout);
}

static void keep(json_t **slot, json_t *o) {
    json_incref(o);
    json_decref(*slot);
    *slot = o;
}

/* Returns -1 to go on, or the exit code when the run ended. */
static int handle(monitor *m, int topic, json_t *o, const char *raw, size_t raw_len) {
    const char *session = str(o, "session");
    const long long step = integer(o, "step", 0), seq = integer(o, "seq", 0);
    char c[600];
    if (strcmp(session, m->session) != 0) {
        if (session_is_old(m, session)) {
            m->stale++;
            return -1;
        }
        switch_session(m, session);
    }
    if (strcmp(m->announced, session) != 0) {
        snprintf(m->run_id, sizeof m->run_id, "%s", str(o, "run_id"));
        if (m->announced[0])
            record(m, "restart run %s session %s at step %lld (was %s)", clean(m->run_id, c, sizeof c), session,
                   step, m->announced);
        else
            record(m, "run %s session %s at step %lld", clean(m->run_id, c, sizeof c), session, step);
        snprintf(m->announced, sizeof m->announced, "%s", session);
    }
    /* seq and last_seq are >= 0 (validated), so the difference cannot overflow; last_seq + 1 could. */
    if (m->last_seq >= 0 && seq - m->last_seq > 1) {
        const long long gap = seq - m->last_seq - 1;
        m->lost = m->lost > LLONG_MAX - gap ? LLONG_MAX : m->lost + gap;
        warn(m, "lost %lld messages (seq %lld to %lld): the monitor read too slowly or the network dropped them",
             seq - m->last_seq - 1, m->last_seq + 1, seq - 1);
    }
    if (seq > m->last_seq) m->last_seq = seq;
    m->run_state = RUN_LIVE;
    m->dirty = 1;

    if (m->out == OUT_JSON) print_json(topic_names[topic], o, raw, raw_len);
    char line[LINE_BYTES];
    sbuf b;
    sb_init(&b, line, sizeof line);
    switch (topic) {
    case TOPIC_META: {
        const int first = m->meta == NULL;
        keep(&m->meta, o);
        if (first && m->out != OUT_JSON) {
            meta_line(o, &b);
            record(m, "%s", line);
        }
        break;
    }
    case TOPIC_TRAIN:
        keep(&m->train, o);
        if (m->out == OUT_PLAIN) {
            train_line(m, o, &b);
            record(m, "%s", line);
        }
        break;
    case TOPIC_EVAL:
        keep(&m->eval, o);
        if (m->out != OUT_JSON) {
            eval_line(o, &b, 1);
            record(m, "%s", line);
        }
        break;
    case TOPIC_CKPT:
        keep(&m->ckpt, o);
        if (m->out != OUT_JSON) {
            ckpt_line(o, &b, 1);
            record(m, "%s", line);
        }
        break;
    case TOPIC_LOG:
        if (m->out != OUT_JSON) {
            char lv[16];
            record(m, "log %s: %s", clean(str(o, "level"), lv, sizeof lv), clean(str(o, "message"), c, sizeof c));
        }
        break;
    case TOPIC_END: {
        const char *status = str(o, "status") ? str(o, "status") : "?"; /* validated: never "?" */
        if (m->out != OUT_JSON)
            record(m, "end %s step %lld exit %lld published %lld", status, step, integer(o, "exit_code", 0),
                   integer(o, "published", 0));
        if (strcmp(status, "stopped") == 0) {
            m->run_state = RUN_STOPPED;
            note(m, "run %s stopped at step %lld (a checkpoint was written): waiting for it to resume",
                 clean(m->run_id, c, sizeof c), step);
            return -1;
        }
        note(m, "run %s %s at step %lld", clean(m->run_id, c, sizeof c), status, step);
        return strcmp(status, "completed") == 0 ? EXIT_COMPLETED : MOME_MONITOR_EXIT_FAILED;
    }
    }
    return -1;
}

/* The topic frame as text for messages (non-printable bytes as '?', cut to fit); 1 when it is printable ASCII
 * that fits, else 0. */
static int topic_text(const unsigned char *d, size_t n, char topic[64]) {
    int ok = n > 0 && n < 64;
    topic[0] = '\0';
    for (size_t i = 0; i < n && i + 1 < 64; i++) {
        if (d[i] < 0x21 || d[i] > 0x7e) ok = 0;
        topic[i] = ok ? (char)d[i] : '?';
        topic[i + 1] = '\0';
    }
    return ok;
}

/* One received message: `frames` frames of `total` bytes in all, the first (the topic) and the second (the JSON
 * body, NULL when there is none). Validates it, then handles or skips it. Returns the exit code when the run
 * ended, else -1. */
static int process_message(monitor *m, int frames, const unsigned char *topic_data, size_t topic_len,
                           const char *raw, size_t len, size_t total) {
    m->received++;
    m->last_rx = mome_now();
    m->dirty = 1;

    char topic[64] = "", why[512];
    const int topic_ok = frames >= 1 ? topic_text(topic_data, topic_len, topic) : 1;
    int t = -1, code = -1;
    for (int i = 0; i < N_TOPICS && topic_ok; i++)
        if (strcmp(topic, topic_names[i]) == 0) t = i;
    const char *shown = frames >= 1 && topic[0] ? topic : NULL;
    if (frames != 2) {
        snprintf(why, sizeof why, "%d frame%s, expected 2 (topic, JSON)", frames, frames == 1 ? "" : "s");
        skip(m, shown, why);
    } else if (total > MAX_MESSAGE_BYTES) {
        snprintf(why, sizeof why, "%zu bytes, above the limit of %d", total, MAX_MESSAGE_BYTES);
        skip(m, shown, why);
    } else if (t < 0) {
        skip(m, shown, topic_ok ? "unknown topic" : "the topic is not printable ASCII");
    } else {
        json_error_t err;
        json_t *o = json_loadb(raw, len, JSON_REJECT_DUPLICATES, &err);
        if (!o) {
            char e[200];
            snprintf(why, sizeof why, "invalid JSON at byte %d: %s", err.position, clean(err.text, e, sizeof e));
            skip(m, shown, why);
        } else if (validate(t, o, why, sizeof why) != 0) {
            skip(m, shown, why);
        } else {
            code = handle(m, t, o, raw, len);
        }
        json_decref(o);
    }
    return code;
}

/* Reads one message if one is waiting. Returns 0 when none was, 1 after one (handled or skipped); *code gets the
 * exit code when the run ended, else stays -1. */
static int receive_one(monitor *m, int *code) {
    zmq_msg_t part, head, body;
    zmq_msg_init(&head);
    zmq_msg_init(&body);
    int frames = 0, more = 0;
    size_t total = 0;
    do {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, m->sub, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            if (frames == 0) {
                zmq_msg_close(&head);
                zmq_msg_close(&body);
                return 0;
            }
            break; /* cannot happen: the frames of a message arrive together */
        }
        frames++;
        total += zmq_msg_size(&part);
        more = zmq_msg_more(&part);
        if (frames == 1) zmq_msg_move(&head, &part);
        if (frames == 2) zmq_msg_move(&body, &part);
        zmq_msg_close(&part);
    } while (more);
    *code = process_message(m, frames, zmq_msg_data(&head), zmq_msg_size(&head), zmq_msg_data(&body),
                            zmq_msg_size(&body), total);
    zmq_msg_close(&head);
    zmq_msg_close(&body);
    return 1;
}

/* ---- without a connection (monitor_view_feed.h) ---- */

struct mome_monitor_feed {
    monitor m;
};

mome_monitor_feed *mome_monitor_feed_new(int out, int utf8, int cols, int rows) {
    mome_monitor_feed *f = mome_calloc(1, sizeof *f);
    monitor *m = &f->m;
    m->out = out == 2 ? OUT_JSON : out == 1 ? OUT_PLAIN : OUT_VIEW;
    m->utf8 = utf8 != 0;
    m->last_seq = -1;
    m->fixed_cols = cols > 0 ? cols : 80;
    m->fixed_rows = rows > 0 ? rows : 24;
    m->target = "feed";
    if (m->out == OUT_VIEW) m->screen = mome_malloc((size_t)MAX_SCREEN_LINES * LINE_BYTES);
    return f;
}

int mome_monitor_feed_message(mome_monitor_feed *f, int frames, const void *const *frame, const size_t *len) {
    size_t total = 0;
    for (int i = 0; i < frames; i++) total += len[i];
    return process_message(&f->m, frames, frames >= 1 ? frame[0] : NULL, frames >= 1 ? len[0] : 0,
                           frames >= 2 ? frame[1] : NULL, frames >= 2 ? len[1] : 0, total);
}

void mome_monitor_feed_draw(mome_monitor_feed *f) {
    if (f->m.out == OUT_VIEW) view_draw(&f->m);
}

void mome_monitor_feed_free(mome_monitor_feed *f) {
    if (!f) return;
    json_decref(f->m.meta);
    json_decref(f->m.train);
    json_decref(f->m.eval);
    json_decref(f->m.ckpt);
    mome_free(f->m.screen);
    mome_free(f);
}

/* ---- keys ---- */

static int is_z85_key(const char *s) {
    uint8_t bin[32];
    return s && strlen(s) == 40 && zmq_z85_decode(bin, s) != NULL;
}

/* KEY is 40 Z85 characters, or a file whose first word is. */
static int parse_server_key(const char *arg, char key[41]) {
    if (is_z85_key(arg)) {
        memcpy(key, arg, 41);
        return MOME_OK;
    }
    char *text = NULL;
    if (mome_read_file(arg, &text, NULL) != MOME_OK)
        return mome_error_set(MOME_EINVAL, "--server-key '%s' is neither a 40-character Z85 key nor a readable file",
                              arg);
    const char *p = text + strspn(text, " \t\r\n");
    const size_t n = strcspn(p, " \t\r\n");
    int ok = 0;
    if (n == 40) {
        memcpy(key, p, 40);
        key[40] = '\0';
        ok = is_z85_key(key);
    }
    mome_free(text);
    return ok ? MOME_OK : mome_error_set(MOME_EINVAL, "%s: does not hold a 40-character Z85 CURVE key", arg);
}

static int write_key_file(const char *path, const char *key, mode_t mode) {
    const int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0)
        return mome_error_set(MOME_EIO, "%s: %s%s", path, strerror(errno),
                              errno == EEXIST ? " (not overwriting a key: remove it first)" : "");
    char line[42];
    snprintf(line, sizeof line, "%s\n", key);
    /* The umask may only remove bits; fchmod makes the mode exact in case the file system ignores it. */
    const int bad = fchmod(fd, mode) != 0 || write(fd, line, 41) != 41 || fsync(fd) != 0;
    const int err = errno;
    if (close(fd) != 0 || bad) {
        unlink(path);
        return mome_error_set(MOME_EIO, "%s: cannot write: %s", path, strerror(err));
    }
    return MOME_OK;
}

static int keygen(const char *prefix) {
    if (!zmq_has("curve")) {
        mome_log(MOME_LOG_ERROR, "monitor: this libzmq was built without CURVE support");
        return MOME_MONITOR_EXIT_FAILED;
    }
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) {
        mome_log(MOME_LOG_ERROR, "monitor: zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
        return MOME_MONITOR_EXIT_FAILED;
    }
    const size_t n = strlen(prefix) + 8;
    char *key_path = mome_malloc(n), *pub_path = mome_malloc(n);
    snprintf(key_path, n, "%s.key", prefix);
    snprintf(pub_path, n, "%s.pub", prefix);
    int rc = write_key_file(key_path, sec, 0600);
    if (rc == MOME_OK) {
        rc = write_key_file(pub_path, pub, 0644);
        if (rc != MOME_OK) unlink(key_path);
    }
    memset(sec, 0, sizeof sec);
    if (rc == MOME_OK)
        printf("wrote %s (secret key, mode 0600: set monitor.curve_secret_key = %s) and %s (public key %s: "
               "mome monitor --server-key %s)\n",
               key_path, key_path, pub_path, pub, pub_path);
    else
        mome_log(MOME_LOG_ERROR, "monitor: --keygen: %s", mome_error_message());
    mome_free(key_path);
    mome_free(pub_path);
    return rc == MOME_OK ? 0 : MOME_MONITOR_EXIT_FAILED;
}

/* ---- the connection ---- */

static void disconnect(monitor *m) {
    if (m->sub) {
        zmq_socket_monitor(m->sub, NULL, 0);
        zmq_close(m->sub);
        m->sub = NULL;
    }
    if (m->events) {
        zmq_close(m->events);
        m->events = NULL;
    }
    m->conn = CONN_NONE;
    m->endpoint[0] = '\0';
}

static int connect_endpoint(monitor *m, const char *endpoint, const char *server_key) {
    disconnect(m);
    m->sub = zmq_socket(m->ctx, ZMQ_SUB);
    if (!m->sub) return mome_error_set(MOME_EIO, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    const int linger = 0, hwm = 100000, ivl_max = 1000;
    const int64_t maxmsg = HARD_MESSAGE_BYTES;
    zmq_setsockopt(m->sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(m->sub, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(m->sub, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    zmq_setsockopt(m->sub, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (server_key[0]) {
        if (!zmq_has("curve")) return mome_error_set(MOME_ENOPKG, "this libzmq was built without CURVE support");
        if (!m->client_public[0] && zmq_curve_keypair(m->client_public, m->client_secret) != 0)
            return mome_error_set(MOME_EIO, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
        if (zmq_setsockopt(m->sub, ZMQ_CURVE_SERVERKEY, server_key, 40) ||
            zmq_setsockopt(m->sub, ZMQ_CURVE_PUBLICKEY, m->client_public, 40) ||
            zmq_setsockopt(m->sub, ZMQ_CURVE_SECRETKEY, m->client_secret, 40))
            return mome_error_set(MOME_EIO, "setting the CURVE keys: %s", zmq_strerror(zmq_errno()));
    }
    /* Socket events tell a connection refused at the handshake (wrong key, CURVE on one side only) apart from a
     * publisher that is not there. Without them the monitor still works, it only explains less. */
    char addr[64];
    snprintf(addr, sizeof addr, "inproc://mome-monitor-events-%d", ++m->n_connections);
    if (zmq_socket_monitor(m->sub, addr,
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) == 0) {
        m->events = zmq_socket(m->ctx, ZMQ_PAIR);
        if (m->events && zmq_connect(m->events, addr) != 0) {
            zmq_close(m->events);
            m->events = NULL;
        }
    }
    zmq_setsockopt(m->sub, ZMQ_SUBSCRIBE, "mome.", 5);
    if (zmq_connect(m->sub, endpoint) != 0) {
        const int err = zmq_errno();
        disconnect(m);
        return mome_error_set(MOME_EINVAL, "cannot connect to '%s': %s", endpoint, zmq_strerror(err));
    }
    snprintf(m->endpoint, sizeof m->endpoint, "%s", endpoint);
    snprintf(m->server_key, sizeof m->server_key, "%s", server_key);
    m->conn = CONN_CONNECTING;
    m->handshake_failures = 0;
    m->dirty = 1;
    return MOME_OK;
}

/* A protocol or authentication failure is a mismatch for sure; a connection closed during the handshake can also
 * be a publisher going away, so that one is reported when it happens twice in a row. */
static void handshake_failed(monitor *m, const char *detail, int certain) {
    m->conn = CONN_CONNECTING;
    m->handshake_failures += certain ? 2 : 1;
    if (m->handshake_failures < 2 || m->handshake_failures > 3) return;
    m->handshake_failures = 4; /* reported once, until a handshake succeeds */
    char e[600];
    warn(m, "%s: the connection fails during the handshake (%s): %s", clean(m->endpoint, e, sizeof e), detail,
         m->server_key[0] ? "is the server key right, and does the run use monitor.curve_secret_key?"
                          : "the run may require CURVE: pass its public key with --server-key");
}

static void read_socket_events(monitor *m) {
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, m->events, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            return;
        }
        uint16_t ev = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&f) >= 6) {
            memcpy(&ev, zmq_msg_data(&f), sizeof ev);
            memcpy(&value, (const char *)zmq_msg_data(&f) + 2, sizeof value);
        }
        int more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, m->events, ZMQ_DONTWAIT) < 0) more = 0;
            else more = zmq_msg_more(&f);
            zmq_msg_close(&f);
        }
        switch (ev) {
        case ZMQ_EVENT_CONNECTED: m->conn = CONN_HANDSHAKE; break;
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            m->conn = CONN_CONNECTED;
            m->handshake_failures = 0;
            break;
        case ZMQ_EVENT_DISCONNECTED:
            if (m->conn == CONN_HANDSHAKE) handshake_failed(m, "closed by the publisher", 0);
            m->conn = CONN_CONNECTING;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: handshake_failed(m, zmq_strerror((int)value), 0); break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: handshake_failed(m, "protocol error", 1); break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: handshake_failed(m, "authentication refused", 1); break;
        default: break;
        }
        m->dirty = 1;
    }
}

/* ---- monitor.json ---- */

typedef struct {
    char run_id[256], session[17], endpoint[512], key[41], host[256];
    long long pid;
} run_info;

static int read_run_info(const char *path, run_info *ri) {
    memset(ri, 0, sizeof *ri);
    json_error_t err;
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!o) return mome_error_set(MOME_EFORMAT, "%s:%d: %s", path, err.line, err.text);
    const char *why = NULL;
    const json_t *key = json_object_get(o, "curve_server_key");
    if (!json_is_object(o)) why = "not a JSON object";
    else if (integer(o, "v", 0) != 1) why = "'v' is not 1";
    else if (!str(o, "run_id") || strlen(str(o, "run_id")) >= sizeof ri->run_id) why = "bad or missing 'run_id'";
    else if (!str(o, "session") || !is_session_id(str(o, "session"))) why = "'session' is not 16 hex digits";
    else if (!str(o, "endpoint") || strlen(str(o, "endpoint")) >= sizeof ri->endpoint - 64 || !str(o, "endpoint")[0])
        why = "bad or missing 'endpoint'";
    else if (!json_is_null(key) && !(json_is_string(key) && is_z85_key(json_string_value(key))))
        why = "'curve_server_key' is neither null nor a 40-character Z85 key";
    if (why) {
        json_decref(o);
        return mome_error_set(MOME_EFORMAT, "%s: %s", path, why);
    }
    snprintf(ri->run_id, sizeof ri->run_id, "%s", str(o, "run_id"));
    snprintf(ri->session, sizeof ri->session, "%s", str(o, "session"));
    snprintf(ri->endpoint, sizeof ri->endpoint, "%s", str(o, "endpoint"));
    if (json_is_string(key)) snprintf(ri->key, sizeof ri->key, "%s", json_string_value(key));
    if (str(o, "host")) snprintf(ri->host, sizeof ri->host, "%s", str(o, "host"));
    ri->pid = integer(o, "pid", 0);
    json_decref(o);
    return MOME_OK;
}

/* A run bound to every interface publishes tcp://0.0.0.0:PORT: connect to its host instead (this host: loopback). */
static void resolve_endpoint(const run_info *ri, const char *this_host, char *out, size_t n) {
    static const char *const wild[] = {"tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"};
    for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
        const size_t w = strlen(wild[i]);
        if (strncmp(ri->endpoint, wild[i], w) == 0) {
            const char *host = ri->host[0] && strcmp(ri->host, this_host) != 0 ? ri->host : "127.0.0.1";
            snprintf(out, n, "tcp://%s:%s", host, ri->endpoint + w);
            return;
        }
    }
    snprintf(out, n, "%s", ri->endpoint);
}

static void check_run_info(monitor *m) {
    struct stat st;
    if (stat(m->info_path, &st) != 0) {
        if (!m->waiting_noted) note(m, "waiting for %s (the run has not started)", m->info_path);
        m->waiting_noted = 1;
        return;
    }
    if (m->info_present && st.st_ino == m->info_st.st_ino && st.st_dev == m->info_st.st_dev &&
        st.st_size == m->info_st.st_size && st.st_mtim.tv_sec == m->info_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == m->info_st.st_mtim.tv_nsec)
        return;
    m->info_st = st;
    m->info_present = 1;
    m->dirty = 1;
    run_info ri;
    if (read_run_info(m->info_path, &ri) != MOME_OK) {
        warn(m, "%s; waiting for the run to rewrite it", mome_error_message());
        return;
    }
    struct utsname u;
    const char *this_host = uname(&u) == 0 ? u.nodename : "";
    char endpoint[600], c1[300], c2[600];
    resolve_endpoint(&ri, this_host, endpoint, sizeof endpoint);
    const char *key = m->pinned_key[0] ? m->pinned_key : ri.key;
    if (m->pinned_key[0] && ri.key[0] && strcmp(ri.key, m->pinned_key) != 0 && !m->key_differs_noted) {
        warn(m, "%s names curve_server_key %s, not the --server-key given: using --server-key", m->info_path, ri.key);
        m->key_differs_noted = 1;
    }
    if (strcmp(ri.session, m->session) != 0) {
        switch_session(m, ri.session);
        snprintf(m->run_id, sizeof m->run_id, "%s", ri.run_id);
    }
    if (!m->sub || strcmp(endpoint, m->endpoint) != 0 || strcmp(key, m->server_key) != 0) {
        if (connect_endpoint(m, endpoint, key) != MOME_OK)
            warn(m, "%s: %s; waiting for the run to rewrite it", m->info_path, mome_error_message());
        else
            note(m, "run %s session %s: connecting to %s%s", clean(ri.run_id, c1, sizeof c1), ri.session,
                 clean(endpoint, c2, sizeof c2), key[0] ? " (CURVE)" : "");
    }
    if (ri.host[0] && strcmp(ri.host, this_host) != 0 && mome_monitor_endpoint_is_local(endpoint))
        warn(m, "the run publishes on %s of host %s, which only accepts local connections: run the monitor there",
             clean(endpoint, c2, sizeof c2), clean(ri.host, c1, sizeof c1));
    else if (ri.host[0] && strcmp(ri.host, this_host) == 0 && ri.pid > 0 && kill((pid_t)ri.pid, 0) != 0 &&
             errno == ESRCH)
        note(m, "the run's process (pid %lld) is not running: waiting for the run to start again", ri.pid);
}

/* ---- the loop ---- */

static int run(monitor *m) {
    m->last_rx = mome_now();
    for (;;) {
        if (stop_signal) return MOME_MONITOR_EXIT_SIGNAL;
        const double now = mome_now();
        if (m->from_dir && now >= m->next_info_check) {
            check_run_info(m);
            m->next_info_check = now + INFO_POLL_S;
        }
        if (m->timeout_s > 0 && now - m->last_rx >= m->timeout_s) {
            char t[32];
            view_erase(m);
            mome_log(MOME_LOG_ERROR, "monitor: no message for %s (--timeout): giving up",
                     duration(t, sizeof t, m->timeout_s));
            return MOME_MONITOR_EXIT_TIMEOUT;
        }
        zmq_pollitem_t items[2];
        int n = 0;
        if (m->sub) items[n++] = (zmq_pollitem_t){m->sub, 0, ZMQ_POLLIN, 0};
        if (m->events) items[n++] = (zmq_pollitem_t){m->events, 0, ZMQ_POLLIN, 0};
        if (n > 0) {
            if (zmq_poll(items, n, POLL_MS) < 0 && zmq_errno() != EINTR) {
                mome_log(MOME_LOG_ERROR, "monitor: zmq_poll: %s", zmq_strerror(zmq_errno()));
                return MOME_MONITOR_EXIT_FAILED;
            }
        } else {
            const struct timespec ts = {0, POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (m->events) read_socket_events(m);
        /* Bounded, so that a fast run still lets the view redraw and monitor.json be checked. */
        for (int k = 0; m->sub && k < 10000 && !stop_signal; k++) {
            int code = -1;
            if (!receive_one(m, &code)) break;
            if (code >= 0) return code;
        }
        view_maybe_draw(m);
    }
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "mome monitor: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage_monitor);
    return EXIT_USAGE;
}

static int locale_is_utf8(void) {
    const char *vars[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && v[0]) return strstr(v, "UTF-8") || strstr(v, "utf-8") || strstr(v, "utf8") || strstr(v, "UTF8");
    }
    return 0;
}

int mome_monitor_main(int argc, char **argv) {
    monitor m;
    memset(&m, 0, sizeof m);
    m.last_seq = -1;
    const char *keygen_prefix = NULL;
    int json = 0, plain = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_monitor, stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--plain") == 0) {
            plain = 1;
        } else if (strcmp(a, "--timeout") == 0 || strcmp(a, "--server-key") == 0 || strcmp(a, "--keygen") == 0) {
            if (!v) return usage_error("%s needs a value", a);
            i++;
            if (a[2] == 't') {
                char *end;
                m.timeout_s = strtod(v, &end);
                if (!*v || *end || !(m.timeout_s > 0) || !isfinite(m.timeout_s))
                    return usage_error("--timeout %s: expected a positive number of seconds", v);
            } else if (a[2] == 's') {
                if (parse_server_key(v, m.pinned_key) != MOME_OK) return usage_error("%s", mome_error_message());
            } else {
                if (!v[0]) return usage_error("--keygen needs a file prefix%s", "");
                keygen_prefix = v;
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s'", a);
        } else if (m.target) {
            return usage_error("more than one RUN_DIR or ENDPOINT ('%s')", a);
        } else {
            m.target = a;
        }
    }
    if (json && plain) return usage_error("--json and --plain exclude each other%s", "");
    if (keygen_prefix) {
        if (m.target) return usage_error("--keygen takes no RUN_DIR or ENDPOINT ('%s')", m.target);
        return keygen(keygen_prefix);
    }
    if (!m.target) return usage_error("which run? (RUN_DIR or ENDPOINT)%s", "");
    m.from_dir = strstr(m.target, "://") == NULL;
    m.out = json ? OUT_JSON : plain || !isatty(STDOUT_FILENO) ? OUT_PLAIN : OUT_VIEW;
    m.utf8 = locale_is_utf8();

    m.ctx = zmq_ctx_new();
    if (!m.ctx) {
        mome_log(MOME_LOG_ERROR, "monitor: zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        return MOME_MONITOR_EXIT_FAILED;
    }
    int code = -1;
    if (m.from_dir) {
        struct stat st;
        const size_t n = strlen(m.target) + 16;
        m.info_path = mome_malloc(n);
        if (stat(m.target, &st) == 0 && S_ISREG(st.st_mode)) snprintf(m.info_path, n, "%s", m.target);
        else snprintf(m.info_path, n, "%s/monitor.json", m.target);
    } else if (connect_endpoint(&m, m.target, m.pinned_key) != MOME_OK) {
        code = usage_error("%s", mome_error_message());
    } else if (m.out != OUT_VIEW) {
        note(&m, "connecting to %s%s", m.target, m.pinned_key[0] ? " (CURVE)" : "");
    }
    if (code < 0) {
        if (m.out == OUT_VIEW) m.screen = mome_malloc((size_t)MAX_SCREEN_LINES * LINE_BYTES);
        struct sigaction sa, old_int, old_term;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        code = run(&m);
        if (code == MOME_MONITOR_EXIT_SIGNAL && m.out != OUT_JSON) note(&m, "interrupted");
        if (m.out == OUT_VIEW) {
            view_draw(&m); /* the final state stays on the screen, the cursor below it */
            m.drawn = 0;
            printf("\x1b[?25h");
            fflush(stdout);
        }
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    disconnect(&m);
    zmq_ctx_term(m.ctx);
    json_decref(m.meta);
    json_decref(m.train);
    json_decref(m.eval);
    json_decref(m.ckpt);
    mome_free(m.info_path);
    mome_free(m.screen);
    memset(m.client_secret, 0, sizeof m.client_secret);
    return code;
}
