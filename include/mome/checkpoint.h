/* checkpoint.h — HDF5 checkpoints: atomic writes, a `latest` pointer, keep-last-K, strict validation.
 *
 * Layout of checkpoints/<run>/step_00001000.h5 (see docs/checkpoints.md):
 *   root attrs   format="mome-checkpoint", format_version, step, tokens_seen, world_size, git_sha,
 *                tokenizer_hash, model_kind
 *   /config      resolved configuration text
 *   /model/<tensor name>              one dataset per tensor of the model's table, float32
 *   /optimizer/m/<name>, /optimizer/v/<name>, attr /optimizer step
 *   /rng/state   (world_size, 4) uint64: each rank's generator state
 *   /data/cursor (world_size,) uint64: each rank's data cursor (samples drawn)
 *   /kd/ce_window, /kd/kd_window (K,) float64, /kd/count (1,) uint64: the alpha state (distillation runs only)
 * Every dataset carries Fletcher32. The file is written as step_XXXXXXXX.h5.tmp, fsynced, renamed, and the
 * directory fsynced; then `latest` is replaced atomically with the file name; then old ones beyond `keep` go.
 */
#ifndef MOME_CHECKPOINT_H
#define MOME_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "mome/tensor.h"

#define MOME_CKPT_FORMAT "mome-checkpoint"
#define MOME_CKPT_VERSION 1

typedef struct {
    int64_t step;                 /* optimizer steps completed */
    int64_t tokens_seen;          /* training tokens consumed, all ranks */
    int world_size;               /* ranks that wrote it (informative; a checkpoint never depends on it) */
    const char *config_text;      /* resolved config (mome_config_to_string) */
    const char *tokenizer_hash;   /* 16 hex digits */
    const char *model_kind;       /* "gpt" for the dense model */
    const mome_tensor_table *table; /* the model's tensors */
    const float *params;          /* table->total floats */
    const float *adam_m;          /* table->total floats, or NULL when no optimizer state */
    const float *adam_v;
    int64_t adam_step;
    int n_streams;                /* rows of rng_states and data_cursors (= world_size) */
    const uint64_t *rng_states;   /* (n_streams, 4) */
    const uint64_t *data_cursors; /* (n_streams) */
    size_t kd_window;             /* 0: no distillation state; else the alpha windows below (kd.h export) */
    const double *kd_ce, *kd_kd;  /* (kd_window) */
    uint64_t kd_count;
    size_t router_n;              /* 0, or the size of a teacher router trained with kd.method = sar (/kd/router) */
    const float *router_gate, *router_m, *router_v; /* (router_n): its gate weights and AdamW moments */
    int64_t router_step;
} mome_ckpt_save_args;

/* Writes <dir>/step_%08ld.h5 atomically, updates <dir>/latest, deletes the oldest beyond `keep` (0 = keep all).
 * On any error nothing visible changes: the temporary file is removed and `latest` still names the previous
 * checkpoint. The path written is returned in out_path if non-NULL. */
int mome_ckpt_save(const char *dir, const mome_ckpt_save_args *args, int keep, char *out_path, size_t cap);

/* Resolves <dir>/latest to a checkpoint path. MOME_ENOENT when there is none. */
int mome_ckpt_latest(const char *dir, char *path, size_t cap);

typedef struct {
    int64_t step, tokens_seen, adam_step;
    int world_size;
    char tokenizer_hash[32];
    char model_kind[32];
    char git_sha[64];
    char *config_text;       /* owned; free with mome_ckpt_info_free */
    int n_streams;
    uint64_t *rng_states;    /* owned (n_streams, 4) */
    uint64_t *data_cursors;  /* owned (n_streams) */
    size_t kd_window;        /* 0 when the checkpoint holds no /kd state */
    double *kd_ce, *kd_kd;   /* owned (kd_window): the adaptive-alpha windows, oldest first */
    uint64_t kd_count;
    size_t router_n;         /* 0 when the checkpoint holds no /kd/router (kd.method = sar) */
    float *router_gate, *router_m, *router_v; /* owned (router_n) */
    int64_t router_step;
} mome_ckpt_info;

/* Opens and checks format and version, reads the scalar state, the config text and the per-rank state.
 * Checksum failures, truncation and missing objects are reported with the file and object name. */
int mome_ckpt_read_info(const char *path, mome_ckpt_info *info);
void mome_ckpt_info_free(mome_ckpt_info *info);
/* Reads every tensor of `table` into params (and the moments when non-NULL). A tensor whose stored shape
 * differs from the table is refused, naming the tensor and both shapes. */
int mome_ckpt_read_tensors(const char *path, const mome_tensor_table *table, float *params, float *adam_m,
                           float *adam_v);

#endif
