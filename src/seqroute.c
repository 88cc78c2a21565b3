/* seqroute.c — sequences to expert trunks (seqroute.h): by name matching of trunks to data domains and router
 * classes, and per-thread decoding of token ids to text for the router. */
#include "mome/seqroute.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mome/common.h"
#include "mome/modular.h"
#include "mome/tokenizer.h"

int mome_seqroute_mode_parse(const char *name) {
    if (strcmp(name, "router") == 0) return MOME_SEQROUTE_ROUTER;
    if (strcmp(name, "gold") == 0) return MOME_SEQROUTE_GOLD;
    if (strcmp(name, "average") == 0) return MOME_SEQROUTE_AVERAGE;
    return -1;
}

static int trunk_of(const mome_seq_router *r, const char *name) {
    for (int e = 0; e < r->n_trunks; e++)
        if (strcmp(r->names[e], name) == 0) return e;
    return -1;
}

int mome_seq_router_init(mome_seq_router *r, mome_seqroute_mode mode, const char *trunks, const mome_dataset *ds,
                         const char *router_path, int max_T) {
    memset(r, 0, sizeof *r);
    r->mode = mode;
    r->tok = ds->tok;
    r->max_T = max_T;
    if (trunks && trunks[0]) {
        for (const char *p = trunks; *p;) {
            const size_t n = strcspn(p, ",");
            if (r->n_trunks == MOME_MAX_DOMAINS)
                return mome_error_set(MOME_ECONFIG, "[modular] experts: more than %d trunks", MOME_MAX_DOMAINS);
            if (n == 0 || n >= sizeof r->names[0])
                return mome_error_set(MOME_ECONFIG, "[modular] experts = '%s': bad name", trunks);
            memcpy(r->names[r->n_trunks], p, n);
            r->names[r->n_trunks][n] = 0;
            if (trunk_of(r, r->names[r->n_trunks]) >= 0)
                return mome_error_set(MOME_ECONFIG, "[modular] experts = '%s': '%s' twice", trunks,
                                      r->names[r->n_trunks]);
            r->n_trunks++;
            p += n + (p[n] == ',');
        }
    } else {
        for (int d = 0; d < ds->n_domains; d++) snprintf(r->names[r->n_trunks++], sizeof r->names[0], "%s", ds->domains[d].name);
    }
    for (int d = 0; d < ds->n_domains; d++) r->domain_trunk[d] = trunk_of(r, ds->domains[d].name);
    if (mode != MOME_SEQROUTE_ROUTER) return MOME_OK;
    int rc = mome_router_open(&r->router, router_path);
    if (rc) return mome_error_wrap(rc, "[modular] routing = router needs a router (`mome route train`)");
    int matched = 0;
    char missing[512] = "";
    for (int k = 0; k < mome_router_n_classes(r->router); k++) {
        r->class_trunk[k] = trunk_of(r, mome_router_label(r->router, k));
        if (r->class_trunk[k] >= 0)
            matched++;
        else
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s", missing[0] ? ", " : "",
                     mome_router_label(r->router, k));
    }
    if (matched == 0) {
        mome_seq_router_free(r);
        return mome_error_set(MOME_EMISMATCH, "%s: none of the router's classes names an expert trunk (%s)",
                              router_path, trunks && trunks[0] ? trunks : "the data's domains");
    }
    if (missing[0])
        mome_warn("%s: router classes without an expert trunk are never chosen: %s", router_path, missing);
#ifdef _OPENMP
    r->n_bufs = omp_get_max_threads();
#else
    r->n_bufs = 1;
#endif
    r->text = mome_calloc((size_t)r->n_bufs, sizeof *r->text);
    r->text_cap = mome_calloc((size_t)r->n_bufs, sizeof *r->text_cap);
    r->ids = mome_calloc((size_t)r->n_bufs, sizeof *r->ids);
    for (int i = 0; i < r->n_bufs; i++) {
        r->text_cap[i] = (size_t)max_T * 16 + 1;
        r->text[i] = mome_malloc(r->text_cap[i]);
        r->ids[i] = mome_malloc((size_t)max_T * sizeof *r->ids[i]);
    }
    return MOME_OK;
}

void mome_seq_router_free(mome_seq_router *r) {
    if (!r) return;
    for (int i = 0; i < r->n_bufs; i++) {
        mome_free(r->text[i]);
        mome_free(r->ids[i]);
    }
    mome_free(r->text);
    mome_free(r->text_cap);
    mome_free(r->ids);
    if (r->router) mome_router_free(r->router);
    memset(r, 0, sizeof *r);
}

int mome_seq_router_classify_text(const mome_seq_router *r, const char *text, size_t len) {
    float probs[MOME_ROUTER_MAX_CLASSES];
    mome_router_classify(r->router, text, len, probs);
    int best = -1;
    for (int k = 0; k < mome_router_n_classes(r->router); k++)
        if (r->class_trunk[k] >= 0 && (best < 0 || probs[k] > probs[best])) best = k;
    return r->class_trunk[best];
}

void mome_seq_router_route(mome_seq_router *r, mome_seqroute_mode mode, const int32_t *inputs, const int *domains,
                           int B, int T, int32_t *routes) {
    if (mode == MOME_SEQROUTE_AVERAGE) {
        for (int b = 0; b < B; b++) routes[b] = MOME_ROUTE_ALL;
        return;
    }
    if (mode == MOME_SEQROUTE_GOLD) {
        MOME_CHECK(domains, "gold routing needs the sequences' domains");
        for (int b = 0; b < B; b++) {
            routes[b] = r->domain_trunk[domains[b]];
            MOME_CHECK(routes[b] >= 0, "gold routing: data domain %d has no expert trunk", domains[b]);
        }
        return;
    }
    MOME_CHECK(r->router && T <= r->max_T, "router routing: no router loaded, or T %d > %d", T, r->max_T);
    long agree = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : agree)
    for (int b = 0; b < B; b++) {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
        MOME_CHECK(tid < r->n_bufs, "router routing: thread %d of more than the %d set up", tid, r->n_bufs);
#else
        const int tid = 0;
#endif
        uint32_t *ids = r->ids[tid];
        for (int t = 0; t < T; t++) ids[t] = (uint32_t)inputs[(size_t)b * T + (size_t)t];
        size_t need = mome_tokenizer_decode(r->tok, ids, (size_t)T, r->text[tid], r->text_cap[tid]);
        MOME_CHECK(need != (size_t)-1, "router routing: sequence %d has a token outside the vocabulary", b);
        if (need > r->text_cap[tid]) { /* a sequence of unusually long tokens: grow this thread's buffer */
            mome_free(r->text[tid]);
            r->text_cap[tid] = need;
            r->text[tid] = mome_malloc(need);
            mome_tokenizer_decode(r->tok, ids, (size_t)T, r->text[tid], r->text_cap[tid]);
        }
        routes[b] = mome_seq_router_classify_text(r, r->text[tid], need);
        if (domains) agree += routes[b] == r->domain_trunk[domains[b]];
    }
    if (domains) {
        r->n_routed += B;
        r->n_agree += agree;
    }
}
