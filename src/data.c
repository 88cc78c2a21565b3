/* data.c — token shards as training samples and validation windows (see data.h).
 *
 * Shards are small next to a rank's memory (a few MiB per domain for the embedded corpus), so each rank loads
 * the ids once at start; sampling is then a pure function of (seed, sample index). Building the shards is
 * corpus.c's job.
 */
#include "mome/data.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mome/common.h"
#include "mome/h5io.h"
#include "mome/rng.h"
#include "mome/tokenizer.h"

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int in_list(const char *name, const char *list) {
    size_t n = strlen(name);
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ')) p++, len--;
        while (len && p[len - 1] == ' ') len--;
        if (len == n && strncmp(p, name, n) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static int load_stream(hid_t f, const char *path, const char *name, uint16_t **out, size_t *n) {
    int ndim;
    hsize_t dims[8];
    int rc = mome_h5_shape(f, name, &ndim, dims);
    if (rc) return rc;
    if (ndim != 1) return mome_error_set(MOME_EFORMAT, "%s: dataset %s has %d dims, expected 1", path, name, ndim);
    uint32_t *tmp = mome_malloc(dims[0] * sizeof *tmp + 4);
    rc = mome_h5_read_u32(f, name, tmp, 1, dims);
    if (rc) {
        mome_free(tmp);
        return rc;
    }
    uint16_t *ids = mome_malloc(dims[0] * sizeof *ids + 2);
    for (hsize_t i = 0; i < dims[0]; i++) ids[i] = (uint16_t)tmp[i];
    mome_free(tmp);
    *out = ids;
    *n = dims[0];
    return MOME_OK;
}

int mome_dataset_open(mome_dataset *ds, const char *dir, const char *only) {
    memset(ds, 0, sizeof *ds);
    snprintf(ds->dir, sizeof ds->dir, "%s", dir);
    mome_h5_quiet();
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.h5", dir);
    int rc = mome_tokenizer_load(&ds->tok, path);
    if (rc) return mome_error_wrap(rc, "corpus %s (build it with `mome data build --out %s`)", dir, dir);
    snprintf(ds->tokenizer_hash, sizeof ds->tokenizer_hash, "%s", mome_tokenizer_hash(ds->tok));
    ds->vocab_size = mome_tokenizer_vocab_size(ds->tok);

    snprintf(path, sizeof path, "%s/tokens", dir);
    DIR *d = opendir(path);
    if (!d) {
        mome_dataset_close(ds);
        return mome_error_set(MOME_ENOENT, "%s: no token shards (run `mome data build --out %s`)", path, dir);
    }
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t len = strlen(e->d_name);
        if (len > 3 && strcmp(e->d_name + len - 3, ".h5") == 0) names[n++] = mome_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    rc = MOME_OK;
    for (int i = 0; i < n && rc == MOME_OK; i++) {
        char dom[64];
        snprintf(dom, sizeof dom, "%.*s", (int)(strlen(names[i]) - 3), names[i]);
        if (only && only[0] && !in_list(dom, only)) continue;
        if (ds->n_domains == MOME_MAX_DOMAINS) {
            rc = mome_error_set(MOME_EINVAL, "%s: more than %d domains", dir, MOME_MAX_DOMAINS);
            break;
        }
        mome_domain_tokens *dt = &ds->domains[ds->n_domains];
        snprintf(dt->name, sizeof dt->name, "%s", dom);
        snprintf(path, sizeof path, "%s/tokens/%s", dir, names[i]);
        hid_t f = mome_h5_open_read(path);
        if (f < 0) {
            rc = mome_error_wrap(MOME_EIO, "opening shard");
            break;
        }
        char hash[32] = "";
        rc = mome_h5_attr_get_str(f, "tokenizer_hash", hash, sizeof hash);
        if (!rc && strcmp(hash, ds->tokenizer_hash) != 0)
            rc = mome_error_set(MOME_EMISMATCH, "%s: tokenizer hash %s differs from %s/tokenizer.h5 (%s)", path, hash,
                                dir, ds->tokenizer_hash);
        if (!rc) rc = load_stream(f, path, "train", &dt->train, &dt->n_train);
        if (!rc) rc = load_stream(f, path, "val", &dt->val, &dt->n_val);
        H5Fclose(f);
        if (rc) break;
        ds->n_domains++;
        for (size_t k = 0; k < dt->n_train; k++)
            if (dt->train[k] >= ds->vocab_size) {
                rc = mome_error_set(MOME_ECORRUPT, "%s: train token %zu has id %u >= vocab %d", path, k, dt->train[k],
                                    ds->vocab_size);
                break;
            }
    }
    for (int i = 0; i < n; i++) mome_free(names[i]);
    if (rc == MOME_OK && ds->n_domains == 0)
        rc = mome_error_set(MOME_ENOENT, "%s/tokens: no shards%s%s", dir, only && only[0] ? " matching " : "",
                            only && only[0] ? only : "");
    if (rc) mome_dataset_close(ds);
    return rc;
}

void mome_dataset_close(mome_dataset *ds) {
    for (int i = 0; i < ds->n_domains; i++) {
        mome_free(ds->domains[i].train);
        mome_free(ds->domains[i].val);
    }
    ds->n_domains = 0;
    mome_tokenizer_free(ds->tok);
    ds->tok = NULL;
}

void mome_dataset_sample(const mome_dataset *ds, uint64_t seed, uint64_t g, int T, int32_t *tokens, int *domain) {
    const int d = (int)(g % (uint64_t)ds->n_domains);
    mome_dataset_sample_from(ds, d, seed, g, T, tokens);
    if (domain) *domain = d;
}

void mome_dataset_sample_from(const mome_dataset *ds, int d, uint64_t seed, uint64_t g, int T, int32_t *tokens) {
    MOME_CHECK(d >= 0 && d < ds->n_domains, "sample: domain %d outside [0, %d)", d, ds->n_domains);
    const mome_domain_tokens *dt = &ds->domains[d];
    MOME_CHECK(dt->n_train > (size_t)T + 1, "domain %s has %zu train tokens, fewer than a sequence of %d", dt->name,
               dt->n_train, T + 1);
    mome_rng rng;
    mome_rng_stream(&rng, seed, 0x5a3b1e, g);
    size_t off = (size_t)mome_rng_below(&rng, dt->n_train - (size_t)T - 1);
    for (int t = 0; t <= T; t++) tokens[t] = dt->train[off + (size_t)t];
}

size_t mome_dataset_val_windows(const mome_dataset *ds, int d, int T) {
    size_t n = ds->domains[d].n_val;
    return n > (size_t)T ? (n - 1) / (size_t)T : 0;
}

void mome_dataset_val_window(const mome_dataset *ds, int d, size_t w, int T, int32_t *tokens) {
    const mome_domain_tokens *dt = &ds->domains[d];
    size_t off = w * (size_t)T;
    MOME_CHECK(off + (size_t)T < dt->n_val, "val window %zu out of range for domain %s", w, dt->name);
    for (int t = 0; t <= T; t++) tokens[t] = dt->val[off + (size_t)t];
}
