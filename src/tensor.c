/* tensor.c — the flat tensor table (see tensor.h). */
#include "mome/tensor.h"

#include <stdio.h>
#include <string.h>

#include "mome/common.h"

int mome_tensor_table_add(mome_tensor_table *tab, const char *name, int ndim, const size_t *shape, int decay) {
    MOME_CHECK(tab->n < MOME_MAX_TENSORS, "tensor table full adding %s", name);
    MOME_CHECK(ndim >= 1 && ndim <= MOME_MAX_DIMS, "tensor %s: bad ndim %d", name, ndim);
    MOME_CHECK(strlen(name) < MOME_TENSOR_NAME_MAX, "tensor name too long: %s", name);
    mome_tensor_info *t = &tab->t[tab->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < MOME_MAX_DIMS; d++) {
        t->shape[d] = d < ndim ? shape[d] : 1;
        t->numel *= t->shape[d];
    }
    t->decay = decay;
    t->expert_dim = -1;
    t->offset = (tab->total + 15) & ~(size_t)15;
    tab->total = t->offset + t->numel;
    return tab->n++;
}

int mome_tensor_table_find(const mome_tensor_table *tab, const char *name) {
    for (int i = 0; i < tab->n; i++)
        if (strcmp(tab->t[i].name, name) == 0) return i;
    return -1;
}
