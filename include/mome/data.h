/* data.h — the token shards of a corpus (`mome data build`) as training samples and validation windows.
 *
 * A training sample is a window of T+1 consecutive tokens of one domain's train stream. Sample g of a run is a
 * pure function of (seed, g): its domain is g mod n_domains (every batch is balanced over domains) and its
 * offset is drawn from an RNG stream keyed by (seed, g). A rank that processes samples [a, b) therefore needs
 * no shared state, the global batch is the same for any number of ranks, and resuming only needs the step.
 * Validation windows are the consecutive non-overlapping windows from the start of each domain's val stream.
 */
#ifndef MOME_DATA_H
#define MOME_DATA_H

#include <stddef.h>
#include <stdint.h>

#define MOME_MAX_DOMAINS 16

typedef struct {
    char name[32];     /* domain name, from the shard file name tokens/<name>.h5 */
    uint16_t *train;   /* (n_train,) token ids */
    size_t n_train;
    uint16_t *val;     /* (n_val,) */
    size_t n_val;
} mome_domain_tokens;

typedef struct {
    char dir[512];
    int n_domains;
    mome_domain_tokens domains[MOME_MAX_DOMAINS];
    int vocab_size;
    char tokenizer_hash[32];
    struct mome_tokenizer *tok; /* the corpus tokenizer (dir/tokenizer.h5) */
} mome_dataset;

/* Opens every tokens/<domain>.h5 under dir (or only the comma-separated `only` list when non-empty), checks
 * that all shards share the tokenizer hash of dir/tokenizer.h5, and loads the ids. */
int mome_dataset_open(mome_dataset *ds, const char *dir, const char *only);
void mome_dataset_close(mome_dataset *ds);

/* Global training sample g: writes T+1 ids into tokens and returns the domain index in *domain (domains in turn:
 * g mod n_domains). */
void mome_dataset_sample(const mome_dataset *ds, uint64_t seed, uint64_t g, int T, int32_t *tokens, int *domain);
/* Global training sample g drawn from domain d (the same window as mome_dataset_sample gives for a g of that
 * domain). */
void mome_dataset_sample_from(const mome_dataset *ds, int d, uint64_t seed, uint64_t g, int T, int32_t *tokens);
/* Number of validation windows of T+1 tokens in domain d. */
size_t mome_dataset_val_windows(const mome_dataset *ds, int d, int T);
/* Validation window w of domain d: T+1 ids. */
void mome_dataset_val_window(const mome_dataset *ds, int d, size_t w, int T, int32_t *tokens);

#endif
