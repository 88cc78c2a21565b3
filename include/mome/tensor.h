/* tensor.h — the table of named tensors that lays every parameter out in one flat float buffer.
 *
 * A model computes its table from its config (names, shapes), and one allocation holds all parameters; the
 * gradients and both AdamW moments reuse the same layout, so the optimizer is one flat loop and a checkpoint
 * writes one dataset per table entry. Names are HDF5 paths relative to /model ("wte", "blocks/qkv_w").
 */
#ifndef MOME_TENSOR_H
#define MOME_TENSOR_H

#include <stddef.h>

#define MOME_MAX_TENSORS 64
#define MOME_MAX_DIMS 4
#define MOME_TENSOR_NAME_MAX 64

typedef struct {
    char name[MOME_TENSOR_NAME_MAX]; /* HDF5 path below /model, e.g. "blocks/fc_w" */
    int ndim;                        /* 1..MOME_MAX_DIMS */
    size_t shape[MOME_MAX_DIMS];     /* row-major; unused dims are 1 */
    size_t offset;                   /* first float of this tensor in the flat buffer */
    size_t numel;                    /* product of shape */
    int decay;                       /* 1: AdamW weight decay applies (weight matrices); 0: biases, norms */
    int expert_dim;                  /* -1, or the dim indexed by global expert id (for MoE tensors) */
} mome_tensor_info;

typedef struct {
    int n;                                 /* number of tensors */
    mome_tensor_info t[MOME_MAX_TENSORS];  /* in buffer order */
    size_t total;                          /* floats in the flat buffer (sum of numel, plus padding) */
} mome_tensor_table;

/* Appends a tensor; returns its index. Offsets are 16-float aligned so every tensor starts on a cache line. */
int mome_tensor_table_add(mome_tensor_table *tab, const char *name, int ndim, const size_t *shape, int decay);
/* Index of the tensor named `name`, or -1. */
int mome_tensor_table_find(const mome_tensor_table *tab, const char *name);

#endif
