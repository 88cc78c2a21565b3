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

/* ---- Helpers used by the build, exposed for tests and tools ---- */

/* Marks the start of a section (an h1/h2/h3 heading) in the output of mome_corpus_html_to_text. */
#define MOME_CORPUS_SECTION_BREAK '\f'

/* Converts HTML (UTF-8) to plain UTF-8 text: drops tags, comments and the contents of <head>, <script> and
 * <style> (and DocBook navigation / table-of-contents blocks: class navheader, navfooter, toc); decodes
 * entities (&amp; &lt; &gt; &quot; &apos;, &#NN; &#xNN;, &nbsp; as a plain space, the Latin-1 named ones such as
 * &eacute;, and a few typographic ones such as &mdash;); block elements become line breaks (paragraph-like ones a
 * blank line); whitespace outside <pre> collapses to single spaces; <pre> is kept verbatim. With mark_sections
 * != 0, a MOME_CORPUS_SECTION_BREAK byte is written before each h1/h2/h3 heading that follows some text (the
 * output contains no other control bytes besides '\n' and '\t'). Returns a NUL-terminated mome_malloc'd
 * string and its length in *out_len. */
char *mome_corpus_html_to_text(const char *html, size_t len, int mark_sections, size_t *out_len);

/* The train/val split of a document: 1 when mome_fnv1a(MOME_FNV_OFFSET, source) % 10000 is below
 * val_fraction * 10000 (a pure function of the source name; no other document is involved). */
int mome_corpus_is_val(const char *source, double val_fraction);

/* Checks that every named Debian package is installed (dpkg-query). MOME_ENOPKG, with a message naming every
 * missing package and the apt-get command that installs them, when one is not; MOME_EINVAL for a name that is
 * not a valid Debian package name. */
int mome_corpus_check_packages(const char *const *packages, size_t n);

#endif
