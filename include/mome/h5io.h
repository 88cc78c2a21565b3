/* h5io.h — small HDF5 helpers shared by the tokenizer, the corpus shards and checkpoints.
 *
 * Every dataset mome writes is chunked with the Fletcher32 checksum filter, so a flipped byte is detected on
 * read. Every function returns a mome status and records a message naming the file and object on error.
 * HDF5's own error stack printing is silenced by mome_h5_quiet(); our messages replace it.
 *
 * Chunking: an N-d dataset (ndim >= 2) whose slice along dim 0 is >= 64 KiB gets one chunk per slice along
 * dim 0 (so experts stacked as [E, ...] are one chunk each); otherwise datasets up to 4 MiB are one chunk,
 * larger ones are chunked along dim 0 in ~1 MiB chunks. Writing over an existing dataset name replaces it.
 * ndim 0 writes a 1-element 1-D dataset (HDF5 cannot chunk scalars); reading with ndim 0 accepts it.
 * Strings are fixed-length UTF-8 in a 1-element dataset (h5py: f[name].asstr()[0]); string attributes are
 * variable-length UTF-8 (h5py: str). Errors: missing object MOME_ENOENT, wrong shape MOME_EMISMATCH (both
 * shapes named), checksum failure MOME_ECORRUPT.
 */
#ifndef MOME_H5IO_H
#define MOME_H5IO_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

void mome_h5_quiet(void);

/* Datasets: `name` may contain '/', intermediate groups are created. dims has ndim entries. */
int mome_h5_write_f32(hid_t loc, const char *name, const float *data, int ndim, const hsize_t *dims);
int mome_h5_write_u16(hid_t loc, const char *name, const uint16_t *data, int ndim, const hsize_t *dims);
int mome_h5_write_u32(hid_t loc, const char *name, const uint32_t *data, int ndim, const hsize_t *dims);
int mome_h5_write_u64(hid_t loc, const char *name, const uint64_t *data, int ndim, const hsize_t *dims);
int mome_h5_write_f64(hid_t loc, const char *name, const double *data, int ndim, const hsize_t *dims);
int mome_h5_write_string(hid_t loc, const char *name, const char *text);

/* Reads a dataset converting to the requested type; the stored shape must equal dims (ndim entries) exactly,
 * otherwise MOME_EMISMATCH naming both shapes. Checksum failures are MOME_ECORRUPT. */
int mome_h5_read_f32(hid_t loc, const char *name, float *data, int ndim, const hsize_t *dims);
int mome_h5_read_f64(hid_t loc, const char *name, double *data, int ndim, const hsize_t *dims);
int mome_h5_read_u32(hid_t loc, const char *name, uint32_t *data, int ndim, const hsize_t *dims);
int mome_h5_read_u64(hid_t loc, const char *name, uint64_t *data, int ndim, const hsize_t *dims);
/* 1 if the object `name` (a path, may contain '/') exists below loc, else 0. */
int mome_h5_exists(hid_t loc, const char *name);
/* Shape of a dataset (up to 8 dims; ndim 0 for a true scalar). Refuses (MOME_ECORRUPT, naming the object) an
 * uncompressed dataset whose file holds fewer bytes than the shape needs, so that callers may size buffers from
 * the shape: a damaged or forged header cannot make them allocate more than the file justifies. */
int mome_h5_shape(hid_t loc, const char *name, int *ndim, hsize_t *dims);
/* Reads elements [start, start+count) of a 1-D integer dataset as uint32. */
int mome_h5_read_u32_range(hid_t loc, const char *name, uint32_t *data, hsize_t start, hsize_t count);
/* Reads a string dataset; caller frees with mome_free. */
int mome_h5_read_string(hid_t loc, const char *name, char **text);

/* Attributes on an object (loc may be a file, group or dataset). */
int mome_h5_attr_set_str(hid_t loc, const char *name, const char *value);
int mome_h5_attr_set_i64(hid_t loc, const char *name, int64_t value);
int mome_h5_attr_get_str(hid_t loc, const char *name, char *value, size_t cap);
int mome_h5_attr_get_i64(hid_t loc, const char *name, int64_t *value);
int mome_h5_attr_set_f64(hid_t loc, const char *name, double value);
int mome_h5_attr_get_f64(hid_t loc, const char *name, double *value);
/* attr_get_str: a value longer than cap-1 bytes is MOME_EINVAL; a missing attribute is MOME_ENOENT. */

/* Opens a file read-only / creates it (truncating) with the serial driver; negative hid on error with a
 * message recorded. */
hid_t mome_h5_open_read(const char *path);
hid_t mome_h5_create(const char *path);

/* The attributes `format` (must be `name`) and `format_version` (must be `version`) of a mome file; MOME_EFORMAT
 * naming path and what it found otherwise (a tokenizer given where a router is expected, a newer file). */
int mome_h5_check_format(hid_t f, const char *path, const char *name, int64_t version);

/* Ends the writing of a file created as tmp (mome_h5_create), so that path is either what it was or the whole new
 * file: closes f (if >= 0) and, when rc is MOME_OK, renames tmp over path and syncs path's directory (best effort:
 * the file itself is complete). On any failure tmp is removed. Returns rc, or the close or rename error. */
int mome_h5_close_into_place(hid_t f, const char *tmp, const char *path, int rc);

#endif
