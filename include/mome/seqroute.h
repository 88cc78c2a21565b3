/* seqroute.h — which expert trunk each sequence of a modular student goes to (modular.h).
 *
 * Three ways, as in Mixture of Modular Experts: the router classifier (route.h) reads the sequence's text (its
 * token ids decoded with the corpus tokenizer) and picks a domain; the gold label is the domain the sequence was
 * drawn from; averaging sends it through every trunk. Trunks are named by domain: trunk e serves the domain
 * called names[e]; the data's domains and the router's classes are matched to trunks by name, so a run may train
 * on a subset of the domains (sequential phases, one language expert) with the full set of trunks.
 */
#ifndef MOME_SEQROUTE_H
#define MOME_SEQROUTE_H

#include <stdint.h>

#include "mome/data.h"
#include "mome/route.h"

typedef enum { MOME_SEQROUTE_ROUTER, MOME_SEQROUTE_GOLD, MOME_SEQROUTE_AVERAGE } mome_seqroute_mode;

typedef struct {
    mome_seqroute_mode mode;
    int n_trunks;
    char names[MOME_MAX_DOMAINS][32];          /* trunk e serves domain names[e] */
    int domain_trunk[MOME_MAX_DOMAINS];        /* data domain -> trunk (-1: none) */
    mome_router *router;                       /* loaded for ROUTER mode */
    int class_trunk[MOME_ROUTER_MAX_CLASSES];  /* router class -> trunk (-1: no trunk of that name) */
    const struct mome_tokenizer *tok;
    int n_bufs;                                /* per-thread decode buffers */
    char **text;
    size_t *text_cap;
    uint32_t **ids;                            /* (n_bufs, max_T) */
    int max_T;
    /* agreement of the router with the gold label over the sequences routed since the last reset */
    long n_routed, n_agree;
} mome_seq_router;

/* mode from its config name ("router", "gold", "average"); -1 if unknown. */
int mome_seqroute_mode_parse(const char *name);
/* trunks: comma-separated domain names ("" = the data's domains, in order); a data domain without a trunk has
 * domain_trunk -1 (gold routing cannot route it). For ROUTER mode, router_path is loaded and its classes
 * are matched by name; classes without a trunk are never chosen (a warning names them) and at least one must
 * match. ds supplies the domain names and the tokenizer; sequences are up to max_T tokens. */
int mome_seq_router_init(mome_seq_router *r, mome_seqroute_mode mode, const char *trunks, const mome_dataset *ds,
                         const char *router_path, int max_T);
void mome_seq_router_free(mome_seq_router *r);
/* routes[b] for the B sequences inputs (B, T) of data domains domains[b] (may be NULL unless mode is GOLD):
 * a trunk index, or MOME_ROUTE_ALL for AVERAGE. The router picks the most probable class that has a trunk. */
void mome_seq_router_route(mome_seq_router *r, mome_seqroute_mode mode, const int32_t *inputs, const int *domains,
                           int B, int T, int32_t *routes);
/* The trunk the router picks for a text. */
int mome_seq_router_classify_text(const mome_seq_router *r, const char *text, size_t len);

#endif
