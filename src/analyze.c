/* analyze.c — `mome analyze gates` (see analyze.h): the gate probability of an MoE model over the validation
 * windows, sorted per token, on the activated vs the other experts, per expert; as a table, JSON and an SVG.
 *
 * The model is only read: after each mome_gpt_forward every MoE layer still holds the softmax of its last call
 * (mome_moe.probs, N x E) and its routing (mome_moe.plan.expert, N x top_k), which mome_gpt_moe_layer exposes.
 * Sums are doubles, accumulated token by token in a fixed order, so the result does not depend on the thread
 * count; the windows are dealt to ranks as mome_evaluate deals them and the sums are reduced at the end.
 * The figure is written by hand (SVG is text), so the command needs no Python at run time.
 * Left to others: loading the checkpoint and corpus (cli/main.c), the forward pass (model.c, moe.c).
 */
#include "mome/analyze.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mome/checkpoint.h"
#include "mome/common.h"
#include "mome/config.h"

/* ------------------------------------------------------------------------------------------- the checkpoint */

int mome_gate_checkpoint(const char *spec, char *path, size_t cap) {
    struct stat st;
    if (stat(spec, &st) != 0)
        return mome_error_set(MOME_ENOENT, "%s: no such checkpoint file or run directory (%s)", spec, strerror(errno));
    int rc = MOME_OK;
    if (S_ISDIR(st.st_mode)) {
        rc = mome_ckpt_latest(spec, path, cap); /* a run directory: its latest checkpoint */
        if (rc) return rc;
    } else if ((size_t)snprintf(path, cap, "%s", spec) >= cap) {
        return mome_error_set(MOME_EINVAL, "%s: path longer than %zu bytes", spec, cap);
    }
    mome_ckpt_info info;
    rc = mome_ckpt_read_info(path, &info);
    if (rc) return rc;
    if (strcmp(info.model_kind, "gpt") != 0) {
        rc = mome_error_set(MOME_EINVAL, "%s holds a '%s' model%s: gate analysis needs a GPT whose MLPs are MoE "
                            "layers ([moe] n_experts > 1)", path, info.model_kind,
                            strcmp(info.model_kind, "modular") == 0 ? " (a modular student, routed per sequence)"
                                                                    : "");
        mome_ckpt_info_free(&info);
        return rc;
    }
    mome_config cfg;
    mome_config_defaults(&cfg);
    char origin[1100];
    snprintf(origin, sizeof origin, "%s:/config", path);
    rc = mome_config_load_string(&cfg, info.config_text, origin);
    mome_ckpt_info_free(&info);
    if (rc) return rc;
    if (cfg.moe.n_experts == 0)
        return mome_error_set(MOME_EINVAL, "%s holds a dense GPT ([moe] n_experts = 0): it has no gate to analyse; "
                              "gate analysis needs a GPT whose MLPs are MoE layers ([moe] n_experts > 1)", path);
    if (cfg.moe.n_experts == 1)
        return mome_error_set(MOME_EINVAL, "%s has a single expert ([moe] n_experts = 1): its gate puts all the "
                              "mass on it; gate analysis needs [moe] n_experts > 1", path);
    return MOME_OK;
}

/* ------------------------------------------------------------------------------------------- accumulation */

int mome_gate_stats_init(mome_gate_stats *s, const mome_gpt *m, const mome_dataset *ds) {
    memset(s, 0, sizeof *s);
    if (m->cfg.n_experts < 2)
        return mome_error_set(MOME_EINVAL, "gate analysis: the model has %d experts, need an MoE model with > 1",
                              m->cfg.n_experts);
    s->n_layer = m->cfg.n_layer;
    s->n_experts = m->cfg.n_experts;
    s->top_k = m->cfg.top_k;
    s->capacity_factor = m->cfg.capacity_factor;
    s->seq_len = m->cfg.seq_len;
    s->n_domains = ds->n_domains;
    for (int d = 0; d < ds->n_domains; d++) snprintf(s->domain[d], sizeof s->domain[d], "%s", ds->domains[d].name);
    const size_t PL = (size_t)(s->n_domains + 1) * (size_t)s->n_layer, PLE = PL * (size_t)s->n_experts;
    s->sorted = mome_calloc(PLE, sizeof *s->sorted);
    s->prob = mome_calloc(PLE, sizeof *s->prob);
    s->routed = mome_calloc(PLE, sizeof *s->routed);
    s->activated = mome_calloc(PL, sizeof *s->activated);
    s->dropped = mome_calloc(PL, sizeof *s->dropped);
    return MOME_OK;
}

void mome_gate_stats_free(mome_gate_stats *s) {
    if (!s) return;
    mome_free(s->sorted);
    mome_free(s->prob);
    mome_free(s->routed);
    mome_free(s->activated);
    mome_free(s->dropped);
    memset(s, 0, sizeof *s);
}

static int desc_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* row (E) sorted in place, largest first. */
static void sort_desc(float *row, int E) {
    if (E > 32) {
        qsort(row, (size_t)E, sizeof *row, desc_float);
        return;
    }
    for (int i = 1; i < E; i++) { /* insertion sort: E is a handful of experts */
        const float v = row[i];
        int j = i;
        for (; j > 0 && row[j - 1] < v; j--) row[j] = row[j - 1];
        row[j] = v;
    }
}

void mome_gate_stats_add(mome_gate_stats *s, const mome_gpt *m, int domain) {
    MOME_CHECK(!s->finished, "gate stats: add after finish");
    MOME_CHECK(domain >= 0 && domain < s->n_domains, "gate stats: domain %d not in [0, %d)", domain, s->n_domains);
    const int E = s->n_experts;
    float *row = mome_malloc((size_t)E * sizeof *row);
    size_t N = 0;
    for (int l = 0; l < s->n_layer; l++) {
        const mome_moe *moe = mome_gpt_moe_layer(m, l);
        MOME_CHECK(moe && moe->cfg.n_experts == E, "gate stats: layer %d is not an MoE layer of %d experts", l, E);
        const mome_moe_plan *pl = &moe->plan;
        MOME_CHECK(l == 0 || pl->N == N, "gate stats: layer %d saw %zu tokens, layer 0 %zu", l, pl->N, N);
        N = pl->N;
        const int k = pl->k;
        double *sorted = s->sorted + mome_gate_ple(s, domain, l, 0), *prob = s->prob + mome_gate_ple(s, domain, l, 0);
        double *routed = s->routed + mome_gate_ple(s, domain, l, 0);
        double act = 0.0;
        for (size_t t = 0; t < N; t++) {
            const float *p = moe->probs + t * (size_t)E; /* (E) softmax of token t */
            const int32_t *chosen = pl->expert + t * (size_t)k;   /* (k) experts token t was routed to */
            for (int e = 0; e < E; e++) prob[e] += (double)p[e];
            for (int j = 0; j < k; j++) {
                act += (double)p[chosen[j]];
                routed[chosen[j]] += 1.0;
            }
            memcpy(row, p, (size_t)E * sizeof *row);
            sort_desc(row, E);
            for (int r = 0; r < E; r++) sorted[r] += (double)row[r];
        }
        s->activated[mome_gate_pl(s, domain, l)] += act;
        s->dropped[mome_gate_pl(s, domain, l)] += (double)pl->n_dropped;
    }
    s->tokens[domain] += (double)N;
    mome_free(row);
}

void mome_gate_stats_finish(mome_gate_stats *s, MPI_Comm comm) {
    MOME_CHECK(!s->finished, "gate stats: finished twice");
    const int D = s->n_domains, L = s->n_layer, E = s->n_experts;
    const size_t dl = (size_t)D * (size_t)L, dle = dl * (size_t)E; /* the domain parts; the overall one follows */
    if (comm != MPI_COMM_NULL) {
        MPI_Allreduce(MPI_IN_PLACE, s->tokens, D, MPI_DOUBLE, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, s->sorted, (int)dle, MPI_DOUBLE, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, s->prob, (int)dle, MPI_DOUBLE, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, s->routed, (int)dle, MPI_DOUBLE, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, s->activated, (int)dl, MPI_DOUBLE, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, s->dropped, (int)dl, MPI_DOUBLE, MPI_SUM, comm);
    }
    /* the overall part: the sums of the domains */
    s->tokens[D] = 0.0;
    for (int d = 0; d < D; d++) s->tokens[D] += s->tokens[d];
    const size_t le = (size_t)L * (size_t)E;
    for (size_t i = 0; i < dl; i++) { /* i = d * L + l */
        s->activated[dl + i % (size_t)L] += s->activated[i];
        s->dropped[dl + i % (size_t)L] += s->dropped[i];
    }
    for (size_t i = 0; i < dle; i++) { /* i = (d * L + l) * E + e */
        s->sorted[dle + i % le] += s->sorted[i];
        s->prob[dle + i % le] += s->prob[i];
        s->routed[dle + i % le] += s->routed[i];
    }
    /* means per token (NaN for a part without tokens), shares per assignment */
    for (int p = 0; p <= D; p++) {
        const double n = s->tokens[p], inv = n > 0 ? 1.0 / n : NAN, inv_k = n > 0 ? 1.0 / (n * s->top_k) : NAN;
        for (int l = 0; l < L; l++) {
            s->activated[mome_gate_pl(s, p, l)] *= inv;
            s->dropped[mome_gate_pl(s, p, l)] *= inv_k;
            for (int e = 0; e < E; e++) {
                const size_t i = mome_gate_ple(s, p, l, e);
                s->sorted[i] *= inv;
                s->prob[i] *= inv;
                s->routed[i] *= inv_k;
            }
        }
    }
    s->finished = 1;
}

int mome_gate_analyze(mome_gpt *m, const mome_dataset *ds, int B, long max_windows, MPI_Comm comm,
                      mome_gate_stats *s) {
    memset(s, 0, sizeof *s);
    if (m->cfg.n_experts < 2)
        return mome_error_set(MOME_EINVAL, "gate analysis: the model has %d experts, need an MoE model with > 1",
                              m->cfg.n_experts);
    if (m->ep || m->expert_count != m->cfg.n_experts)
        return mome_error_set(MOME_EINVAL, "gate analysis: the model must hold all %d experts on this process "
                              "(it holds %d)", m->cfg.n_experts, m->expert_count);
    if (m->gate_mode.kind != MOME_GATE_TOPK) { /* the gate as trained, not a distillation teacher's mode */
        const mome_moe_gate_mode topk = {.kind = MOME_GATE_TOPK};
        int rc = mome_gpt_set_gate_mode(m, &topk);
        if (rc) return rc;
    }
    const int T = m->cfg.seq_len;
    int rc = mome_gpt_reserve(m, B, T);
    if (rc == MOME_OK) rc = mome_gate_stats_init(s, m, ds);
    if (rc) return rc;
    s->batch = B;
    s->windows = max_windows;
    int rank = 0, world = 1;
    if (comm != MPI_COMM_NULL) {
        MPI_Comm_rank(comm, &rank);
        MPI_Comm_size(comm, &world);
    }
    int32_t *buf = mome_malloc((size_t)(T + 1) * sizeof *buf);
    int32_t *inp = mome_malloc((size_t)B * (size_t)T * sizeof *inp); /* (B, T) */
    for (int d = 0; d < ds->n_domains; d++) {
        size_t W = mome_dataset_val_windows(ds, d, T);
        if (max_windows > 0 && W > (size_t)max_windows) W = (size_t)max_windows;
        /* windows rank, rank + world, ... in batches of B, as mome_evaluate deals them; the model is local, so
         * a rank whose windows ran out needs no padding forward */
        for (size_t w = (size_t)rank; w < W;) {
            int b = 0;
            for (; b < B && w < W; b++, w += (size_t)world) {
                mome_dataset_val_window(ds, d, w, T, buf);
                memcpy(inp + (size_t)b * (size_t)T, buf, (size_t)T * sizeof *inp);
            }
            mome_gpt_forward(m, inp, b, T);
            mome_gate_stats_add(s, m, d);
        }
    }
    mome_free(buf);
    mome_free(inp);
    mome_gate_stats_finish(s, comm);
    return MOME_OK;
}

/* --------------------------------------------------------------------------------------------- the table */

/* A probability in 9 columns: 4 decimals, or 3 significant digits when that would print 0.0000. */
static void put_p(FILE *out, double x) {
    if (isnan(x)) fprintf(out, " %8s", "-");
    else if (x == 0.0 || x >= 1e-3) fprintf(out, " %8.4f", x);
    else fprintf(out, " %8.2e", x);
}

void mome_gate_stats_print(FILE *out, const mome_gate_stats *s, const char *checkpoint) {
    const int D = s->n_domains, L = s->n_layer, E = s->n_experts;
    fprintf(out, "gates of %s: %d layers, E = %d experts, top_k = %d, capacity_factor %g%s\n", checkpoint, L, E,
            s->top_k, (double)s->capacity_factor, s->capacity_factor > 0 ? "" : " (dropless)");
    fprintf(out, "%.0f tokens (", s->tokens[D]);
    for (int d = 0; d < D; d++) fprintf(out, "%s%s %.0f", d ? ", " : "", s->domain[d], s->tokens[d]);
    if (s->windows > 0)
        fprintf(out, "): up to %ld validation windows of %d tokens per domain\n", s->windows, s->seq_len);
    else
        fprintf(out, "): every validation window of %d tokens\n", s->seq_len);

    fprintf(out, "\nmean gate probability at each rank (sorted per token), all domains; activated = the top_k routed "
                 "experts\n%-6s", "layer");
    for (int r = 0; r < E; r++) {
        char h[24];
        snprintf(h, sizeof h, "rank%d", r + 1);
        fprintf(out, " %8s", h);
    }
    fprintf(out, " %10s %14s\n", "activated", "non-activated");
    for (int l = 0; l < L; l++) {
        fprintf(out, "%-6d", l);
        for (int r = 0; r < E; r++) put_p(out, s->sorted[mome_gate_ple(s, D, l, r)]);
        const double a = s->activated[mome_gate_pl(s, D, l)];
        fprintf(out, " %10.4f %14.4f\n", a, 1.0 - a);
    }
    fprintf(out, "(uniform gate: every rank %.4f; activated never below top_k/E = %.4f)\n", 1.0 / E,
            (double)s->top_k / E);

    fprintf(out, "\nactivated mass per domain (non-activated = 1 - activated)\n%-6s", "layer");
    int w = 9;
    for (int d = 0; d < D; d++) w = (int)strlen(s->domain[d]) + 1 > w ? (int)strlen(s->domain[d]) + 1 : w;
    for (int d = 0; d < D; d++) fprintf(out, " %*s", w - 1, s->domain[d]);
    fprintf(out, " %*s\n", w - 1, "all");
    for (int l = 0; l < L; l++) {
        fprintf(out, "%-6d", l);
        for (int p = 0; p <= D; p++) {
            const double a = s->activated[mome_gate_pl(s, p, l)];
            if (isnan(a)) fprintf(out, " %*s", w - 1, "-");
            else fprintf(out, " %*.4f", w - 1, a);
        }
        fputc('\n', out);
    }

    fprintf(out, "\nper expert, all domains: mean gate probability (soft load) / share of routed assignments "
                 "(hard load)\n%-6s", "layer");
    for (int e = 0; e < E; e++) {
        char h[24];
        snprintf(h, sizeof h, "expert%d", e);
        fprintf(out, " %13s", h);
    }
    if (s->capacity_factor > 0) fprintf(out, " %8s", "dropped");
    fputc('\n', out);
    for (int l = 0; l < L; l++) {
        fprintf(out, "%-6d", l);
        for (int e = 0; e < E; e++)
            fprintf(out, "  %6.4f/%5.3f", s->prob[mome_gate_ple(s, D, l, e)], s->routed[mome_gate_ple(s, D, l, e)]);
        if (s->capacity_factor > 0) fprintf(out, " %8.4f", s->dropped[mome_gate_pl(s, D, l)]);
        fputc('\n', out);
    }
}

/* ----------------------------------------------------------------------------------------------- JSON */

static json_t *jnum(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static json_t *jarray(const double *x, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, jnum(x[i]));
    return a;
}

/* {"tokens": n, "layers": [{"layer", "sorted_mean", "activated", "non_activated", "expert_prob", "expert_routed",
 * "dropped"}, ...]} of part p. */
static json_t *json_part(const mome_gate_stats *s, int p) {
    json_t *o = json_object(), *layers = json_array();
    json_object_set_new(o, "tokens", json_integer((json_int_t)s->tokens[p]));
    for (int l = 0; l < s->n_layer; l++) {
        json_t *y = json_object();
        const double a = s->activated[mome_gate_pl(s, p, l)];
        json_object_set_new(y, "layer", json_integer(l));
        json_object_set_new(y, "sorted_mean", jarray(s->sorted + mome_gate_ple(s, p, l, 0), s->n_experts));
        json_object_set_new(y, "activated", jnum(a));
        json_object_set_new(y, "non_activated", jnum(1.0 - a));
        json_object_set_new(y, "expert_prob", jarray(s->prob + mome_gate_ple(s, p, l, 0), s->n_experts));
        json_object_set_new(y, "expert_routed", jarray(s->routed + mome_gate_ple(s, p, l, 0), s->n_experts));
        json_object_set_new(y, "dropped", jnum(s->dropped[mome_gate_pl(s, p, l)]));
        json_array_append_new(layers, y);
    }
    json_object_set_new(o, "layers", layers);
    return o;
}

int mome_gate_stats_write_json(const mome_gate_stats *s, const char *checkpoint, const char *path) {
    json_t *o = json_object(), *names = json_array(), *per = json_object();
    json_object_set_new(o, "checkpoint", json_string(checkpoint));
    json_object_set_new(o, "n_layer", json_integer(s->n_layer));
    json_object_set_new(o, "n_experts", json_integer(s->n_experts));
    json_object_set_new(o, "top_k", json_integer(s->top_k));
    json_object_set_new(o, "capacity_factor", json_real(s->capacity_factor));
    json_object_set_new(o, "seq_len", json_integer(s->seq_len));
    json_object_set_new(o, "batch", json_integer(s->batch));
    json_object_set_new(o, "windows", json_integer(s->windows));
    json_object_set_new(o, "tokens", json_integer((json_int_t)s->tokens[s->n_domains]));
    for (int d = 0; d < s->n_domains; d++) {
        json_array_append_new(names, json_string(s->domain[d]));
        json_object_set_new(per, s->domain[d], json_part(s, d));
    }
    json_object_set_new(o, "domains", names);
    json_object_set_new(o, "overall", json_part(s, s->n_domains));
    json_object_set_new(o, "per_domain", per);
    char *text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    MOME_CHECK(text, "json_dumps failed for the gate statistics");
    const size_t n = strlen(text);
    char *file = mome_malloc(n + 1); /* the text and a final newline */
    memcpy(file, text, n);
    file[n] = '\n';
    free(text);
    int rc = mome_write_file_atomic(path, file, n + 1);
    mome_free(file);
    return rc ? mome_error_wrap(rc, "--json %s", path) : MOME_OK;
}

/* ------------------------------------------------------------------------------------------------ SVG */

/* Distinct colours for the layers (Tableau 10), cycled beyond ten. */
static const char *const palette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                      "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
#define N_PALETTE (int)(sizeof palette / sizeof palette[0])

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

int mome_gate_stats_write_svg(const mome_gate_stats *s, const char *checkpoint, const char *path) {
    const int D = s->n_domains, L = s->n_layer, E = s->n_experts;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    MOME_CHECK(f, "open_memstream failed");
    /* canvas: left panel the sorted means on a log axis, right panel the stacked bars */
    const double W = 980, H = 480, top = 90, bottom = H - 60;
    const double lx0 = 75, lx1 = 560, bx0 = 650, bx1 = W - 30;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, H);
    fputs("<text x=\"20\" y=\"24\" font-size=\"15\" font-weight=\"bold\">Gate probability of ", f);
    xml_text(f, checkpoint);
    fputs("</text>\n", f);
    fprintf(f, "<text x=\"20\" y=\"44\">%.0f validation tokens of %d domain%s; E = %d experts, top_k = %d; "
               "each token's gate softmax sorted, averaged per rank</text>\n",
            s->tokens[D], D, D == 1 ? "" : "s", E, s->top_k);

    /* left: mean probability at rank r, log10 y from 10^lo to 1 */
    double mn = 1.0;
    for (int l = 0; l < L; l++)
        for (int r = 0; r < E; r++) {
            const double v = s->sorted[mome_gate_ple(s, D, l, r)];
            if (v > 0 && v < mn) mn = v;
        }
    int lo = (int)floor(log10(mn));
    if (lo > -1) lo = -1;
    if (lo < -12) lo = -12;
    const double ylo = (double)lo;
#define LY(v) (bottom - ((log10((v) > 0 ? (v) : 1e-300) < ylo ? ylo : log10((v) > 0 ? (v) : 1e-300)) - ylo) / \
                            (0.0 - ylo) * (bottom - top))
#define LX(r) (E > 1 ? lx0 + 20 + (double)(r) / (E - 1) * (lx1 - lx0 - 40) : (lx0 + lx1) / 2)
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", lx0,
            top, lx1 - lx0, bottom - top);
    const int step = -lo > 8 ? (-lo + 7) / 8 : 1;
    for (int e10 = lo; e10 <= 0; e10 += step) {
        const double y = LY(pow(10.0, e10));
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", lx0, y, lx1, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n", lx0 - 6, y + 4, e10);
    }
    if (step == 1) /* minor grid at 2..9 x each decade */
        for (int e10 = lo; e10 < 0; e10++)
            for (int m = 2; m <= 9; m++) {
                const double y = LY(m * pow(10.0, e10));
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#f0f0f0\"/>\n", lx0, y,
                        lx1, y);
            }
    const int xstep = E > 16 ? (E + 15) / 16 : 1;
    for (int r = 0; r < E; r += xstep)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", LX(r), bottom + 16, r + 1);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">rank of the expert in the token's gate "
               "(1 = most probable)</text>\n", (lx0 + lx1) / 2, bottom + 36);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">mean gate probability "
               "(log scale)</text>\n", lx0 - 50, (top + bottom) / 2);
    /* uniform gate: every rank 1/E; the top_k ranks are the activated ones */
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" stroke-dasharray=\"5,4\"/>\n",
            lx0, LY(1.0 / E), lx1, LY(1.0 / E));
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#666\">uniform 1/E</text>\n", lx0 + 6, LY(1.0 / E) - 5);
    if (s->top_k < E) {
        const double xk = (LX(s->top_k - 1) + LX(s->top_k)) / 2;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                   "stroke-dasharray=\"2,3\"/>\n", xk, top, xk, bottom);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#666\">activated | not</text>\n", xk + 4, top + 14);
    }
    for (int l = 0; l < L; l++) {
        const char *c = palette[l % N_PALETTE];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", c);
        for (int r = 0; r < E; r++)
            fprintf(f, "%s%.1f,%.1f", r ? " " : "", LX(r), LY(s->sorted[mome_gate_ple(s, D, l, r)]));
        fputs("\"/>\n", f);
        if (E <= 32)
            for (int r = 0; r < E; r++)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", LX(r),
                        LY(s->sorted[mome_gate_ple(s, D, l, r)]), c);
    }
    const int shown = L < 12 ? L : 12; /* the legend names the first layers */
    for (int l = 0; l < shown; l++) {
        const double y = top + 34 + 16 * l;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                lx1 - 90, y - 4, lx1 - 70, y - 4, palette[l % N_PALETTE]);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">layer %d</text>\n", lx1 - 64, y, l);
    }
#undef LX
#undef LY

    /* right: per layer a bar of height 1, activated mass at the bottom */
#define BY(v) (bottom - (v) * (bottom - top))
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", bx0, bottom, bx1, bottom);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", bx0, top, bx0, bottom);
    for (int i = 0; i <= 4; i++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", bx0 - 6, BY(i / 4.0) + 4,
                i / 4.0);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">share of the gate "
               "mass</text>\n", bx0 - 42, (top + bottom) / 2);
    const double slot = (bx1 - bx0) / L, bw = slot * 0.6;
    for (int l = 0; l < L; l++) {
        const double a = s->activated[mome_gate_pl(s, D, l)], x = bx0 + slot * l + (slot - bw) / 2;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#4e79a7\"/>\n", x, BY(a), bw,
                a * (bottom - top));
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f28e2b\"/>\n", x, top, bw,
                (1.0 - a) * (bottom - top));
        if (L <= 12) {
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"white\">%.2f</text>\n", x + bw / 2,
                    BY(a / 2) + 4, a);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.2f</text>\n", x + bw / 2,
                    BY(a + (1 - a) / 2) + 4, 1 - a);
        }
        if (L <= 24 || l % ((L + 23) / 24) == 0)
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x + bw / 2, bottom + 16, l);
    }
    const double kE = (double)s->top_k / E;
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#222\" stroke-dasharray=\"5,4\"/>\n",
            bx0, BY(kE), bx1, BY(kE));
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">layer</text>\n", (bx0 + bx1) / 2, bottom + 36);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"#4e79a7\"/><text x=\"%.1f\" y=\"%.1f\">"
               "activated (top_k)</text>\n", bx0, top - 26, bx0 + 16, top - 16);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"#f28e2b\"/><text x=\"%.1f\" y=\"%.1f\">"
               "non-activated</text>\n", bx0 + 120, top - 26, bx0 + 136, top - 16);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#222\" stroke-dasharray=\"5,4\"/>"
               "<text x=\"%.1f\" y=\"%.1f\">top_k/E</text>\n", bx0 + 230, top - 20, bx0 + 252, top - 20, bx0 + 256,
            top - 16);
#undef BY
    fputs("</svg>\n", f);
    fclose(f);
    int rc = mome_write_file_atomic(path, text, len);
    free(text);
    return rc ? mome_error_wrap(rc, "--plot %s", path) : MOME_OK;
}
