/* dump.h — the small HDF5 writer the dump tools share (gpt_dump, kd_dump, modular_dump): plain HDF5
 * calls, no h5io, so the reference checks stay independent of the checkpoint code. Each tool sets dump_file and
 * dump_tool first. */
#ifndef MOME_TEST_DUMP_H
#define MOME_TEST_DUMP_H

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

#include "mome/tensor.h"

static hid_t dump_file = -1;
static const char *dump_tool = "dump";

static inline void dump_die(const char *what, const char *name) {
    fprintf(stderr, "%s: %s failed for '%s'\n", dump_tool, what, name);
    if (dump_file >= 0) H5Fclose(dump_file);
    exit(1);
}

/* Writes a dataset name (intermediate groups created) of the given type and shape. */
static inline void dump_write(const char *name, hid_t type, int ndim, const hsize_t *dims, const void *data) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0) dump_die("H5Pcreate(link)", name);
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    if (space < 0) dump_die("H5Screate_simple", name);
    hid_t ds = H5Dcreate2(dump_file, name, type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0) dump_die("H5Dcreate2", name);
    if (H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) dump_die("H5Dwrite", name);
    H5Dclose(ds);
    H5Sclose(space);
    H5Pclose(lcpl);
}

/* Writes every tensor of the table from buf under prefix/<name>, in its table shape. */
static inline void dump_tensors(const char *prefix, const mome_tensor_table *tab, const float *buf) {
    for (int k = 0; k < tab->n; k++) {
        const mome_tensor_info *ti = &tab->t[k];
        char name[160];
        snprintf(name, sizeof name, "%s/%s", prefix, ti->name);
        hsize_t dims[MOME_MAX_DIMS];
        for (int d = 0; d < ti->ndim; d++) dims[d] = ti->shape[d];
        dump_write(name, H5T_NATIVE_FLOAT, ti->ndim, dims, buf + ti->offset);
    }
}

#endif
