/* route_jsonl.h — the JSON-lines reader of `mome route predict` and `mome route eval`, as one entry point for
 * tests/fuzz/fuzz_route.c (internal to the tree: not part of the library's interface in include/mome/).
 */
#ifndef MOME_ROUTE_JSONL_H
#define MOME_ROUTE_JSONL_H

#include <stddef.h>
#include <stdio.h>

#include "mome/route.h"

/* Reads every non-blank line of f as `mome route predict` (need_label 0) or `eval` (need_label 1) does: parses
 * the {"text": ..., "label": ...} object, classifies the text with r and, for predict, formats the output line
 * (then discards it). Stops at the first bad line and returns its error, naming name:line; MOME_OK at the end of
 * f. *n_ok counts the lines that parsed. */
int mome_route_check_lines(const mome_router *r, FILE *f, const char *name, int need_label, size_t *n_ok);

#endif
