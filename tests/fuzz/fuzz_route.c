/* fuzz_route.c — the JSON-lines reader of `mome route predict` and `eval` (src/route.c, src/route_jsonl.h).
 *
 * Three routers (logistic regression, SVM, naive Bayes; classes alpha, beta, gamma; 4096 buckets, n-grams 1-5,
 * weights from a fixed generator) are made at start. The first input byte picks the router and whether labels
 * are required (eval) or not (predict); the rest is the input file, read through a memory stream exactly as
 * from a file: line splitting, JSON parsing, the "text" and "label" fields, classification (UTF-8 decoding,
 * whitespace folding, n-gram hashing) and, for predict, the output line. The same bytes are also cut into
 * training segments (mome_route_segment), the other reader of raw text. Checks: a refusal leaves a message
 * naming the input; probabilities are finite and sum to 1.
 */
#include "fuzz.h"

#include <math.h>

#include "mome/route.h"
#include "route_jsonl.h"

static mome_router *routers[3];

static uint64_t next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    const char *labels[3] = {"alpha", "beta", "gamma"};
    mome_route_hashing h;
    mome_route_hashing_defaults(&h);
    h.buckets = 4096;
    uint64_t seed = 1;
    for (int k = 0; k < 3; k++) {
        if (mome_router_create(&routers[k], (mome_router_kind)k, labels, 3, &h) != MOME_OK) abort();
        mome_router *r = routers[k];
        for (uint32_t b = 0; b < h.buckets; b++) {
            r->idf[b] = 1.0f + (float)(next(&seed) % 1000) / 500.0f;
            for (int c = 0; c < 3; c++)
                r->weights[(size_t)b * 3 + (size_t)c] = (float)((double)(next(&seed) % 2001) / 1000.0 - 1.0);
        }
        for (int c = 0; c < 3; c++) r->bias[c] = 0.1f * (float)c;
    }
    return 0;
}

typedef struct {
    const char *doc;
    size_t len;
} doc_span;

static void seg_check(const char *text, size_t len, int is_short, void *ctx) {
    const doc_span *d = ctx;
    FUZZ_CHECK(len > 0 && text >= d->doc && text + len <= d->doc + d->len,
               "segment [%td, +%zu) outside the document of %zu bytes", text - d->doc, len, d->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const mome_router *r = routers[data[0] % 3];
    const int need_label = (data[0] >> 2) & 1;
    data++, size--;

    FILE *f = fmemopen(size ? (void *)data : (void *)"", size ? size : 1, "rb");
    if (!f) abort();
    if (!size) getc(f); /* fmemopen needs a non-empty buffer: start at its end */
    size_t n_ok = 0;
    int rc = mome_route_check_lines(r, f, "fuzz.jsonl", need_label, &n_ok);
    fclose(f);
    if (rc != MOME_OK) {
        FUZZ_CHECK(strstr(mome_error_message(), "fuzz.jsonl:") != NULL, "the error does not name the input line: %s",
                   mome_error_message());
    }

    /* The whole input as one text: probabilities finite and normalised. */
    float probs[MOME_ROUTER_MAX_CLASSES];
    const int k = mome_router_classify(r, (const char *)data, size, probs);
    FUZZ_CHECK(k >= 0 && k < 3, "class %d", k);
    double sum = 0;
    for (int c = 0; c < 3; c++) {
        FUZZ_CHECK(isfinite(probs[c]) && probs[c] >= 0 && probs[c] <= 1, "probability %g", (double)probs[c]);
        sum += probs[c];
    }
    FUZZ_CHECK(fabs(sum - 1) < 1e-4, "probabilities sum to %.9g", sum);

    char *doc = malloc(size + 1);
    if (!doc) abort();
    memcpy(doc, data, size);
    doc[size] = 0;
    mome_route_seg_opts o;
    mome_route_seg_defaults(&o);
    doc_span span = {doc, size};
    mome_route_segment(doc, size, "fuzz", 1, &o, seg_check, &span);
    free(doc);
    return 0;
}
