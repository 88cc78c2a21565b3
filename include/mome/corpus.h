/* corpus.h — `mome data build`: turns text domains into a tokenizer and token shards.
 *
 * The embedded default corpus has four domains drawn from Debian packages only: en (manpages,
 * debian-reference-en), fr (manpages-fr, debian-reference-fr), de (manpages-de, debian-reference-de) and python
 * (the standard library sources of the system python3). Users may bring their own domains as NAME=DIR.
 *
 * Output layout under out_dir:
 *   raw/<domain>/train.jsonl, raw/<domain>/val.jsonl   one {"source": ..., "text": ...} per document
 *   tokenizer.h5                                         the BPE (tokenizer.h)
 *   tokens/<domain>.h5                                   datasets train, val (uint16 or uint32 ids, documents
 *                                                        joined as BOS doc EOS), train_docs, val_docs (uint64
 *                                                        start offsets of documents); attrs domain,
 *                                                        vocab_size, tokenizer_hash
 *   manifest.json                                        domains, sources, document and token counts
 */
#ifndef MOME_CORPUS_H
#define MOME_CORPUS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char name[32]; /* domain name: [a-z0-9_-]+ */
    char *path;    /* directory of text files (user domains), or NULL for the embedded sources */
} mome_domain_spec;

typedef struct {
    const char *out_dir;            /* default "data/default" */
    int vocab_size;                 /* default 4096 */
    const mome_domain_spec *domains; /* NULL/0: the embedded default corpus */
    size_t n_domains;
    double val_fraction;            /* share of documents held out, by a hash of the document source; 0.05 */
    size_t max_bytes_per_domain;    /* cap on raw text per domain before balancing; 0 = no cap */
    size_t tokenizer_sample_bytes;  /* text per domain used to learn the BPE merges */
    double balance_tolerance;       /* domains' train token counts within this fraction of each other; 0.05 */
} mome_data_build_opts;

void mome_data_build_defaults(mome_data_build_opts *opts);
int mome_data_build(const mome_data_build_opts *opts);

#endif
