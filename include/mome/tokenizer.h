/* tokenizer.h — byte-level BPE trained by mome, stored in HDF5.
 *
 * Ids 0..255 are the bytes themselves, MOME_TOK_BOS and MOME_TOK_EOS mark the beginning and end of a
 * document, and every id from MOME_TOK_FIRST_MERGE on is one learned merge of two earlier ids. Encoding
 * never produces a special token from text, so decode(encode(x)) == x for every byte string x.
 */
#ifndef MOME_TOKENIZER_H
#define MOME_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define MOME_TOK_BOS 256
#define MOME_TOK_EOS 257
#define MOME_TOK_FIRST_MERGE 258

typedef struct mome_tokenizer mome_tokenizer;

/* Learns vocab_size - MOME_TOK_FIRST_MERGE merges from the texts (deterministic for the same input).
 * vocab_size must be in [MOME_TOK_FIRST_MERGE, 65536]. */
int mome_tokenizer_train(mome_tokenizer **out, const char *const *texts, const size_t *lens, size_t n_texts,
                         int vocab_size);
int mome_tokenizer_save(const mome_tokenizer *tok, const char *path);
/* Loads and validates (every merge refers to earlier ids, the stored hash matches). Errors name the file. */
int mome_tokenizer_load(mome_tokenizer **out, const char *path);
void mome_tokenizer_free(mome_tokenizer *tok);

int mome_tokenizer_vocab_size(const mome_tokenizer *tok);
/* Content hash (merges and vocabulary size) as 16 lowercase hex digits: the identity that checkpoints,
 * token shards and teachers are checked against. */
const char *mome_tokenizer_hash(const mome_tokenizer *tok);

/* Appends the ids of text[0..len) to *ids (growing *ids / *cap with realloc as needed; *ids may be NULL). */
int mome_tokenizer_encode(const mome_tokenizer *tok, const char *text, size_t len, uint32_t **ids, size_t *n,
                          size_t *cap);
/* Writes the bytes of ids into out (up to cap bytes) and returns the number of bytes the full decoding needs;
 * special tokens decode to nothing. Ids out of range are an error reported as (size_t)-1. */
size_t mome_tokenizer_decode(const mome_tokenizer *tok, const uint32_t *ids, size_t n, char *out, size_t cap);
/* The bytes of one token (NULL/0 for special tokens). */
const uint8_t *mome_tokenizer_token_bytes(const mome_tokenizer *tok, uint32_t id, size_t *len);
/* The two ids merged into id (id >= MOME_TOK_FIRST_MERGE); MOME_EINVAL for bytes, specials, out of range. */
int mome_tokenizer_merge(const mome_tokenizer *tok, uint32_t id, uint32_t *left, uint32_t *right);

/* Notes on the implementation (src/tokenizer.c):
 *  - train: if the texts support fewer merges than asked, the vocabulary is smaller (a warning is logged);
 *    use mome_tokenizer_vocab_size for the real size.
 *  - encode keeps a per-thread cache (chunk -> ids), so one tokenizer may encode from several threads at
 *    once; *ids grows with realloc (free it with free or mome_free).
 *  - decode with out == NULL (or cap 0) only measures; with a short cap it writes the first cap bytes. */

#endif
