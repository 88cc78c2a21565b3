/* monitor.h — the run's record stream: every record goes to runs/<run>/metrics.jsonl and, on a ZeroMQ XPUB
 * socket, to any subscriber (docs/monitoring.md has the message schema).
 *
 * Used by rank 0 only. A record is a topic ("mome.train", ...) and a JSON object; mome_monitor_publish adds the
 * common fields (v, run_id, session, seq, t, step), appends the object with its topic to metrics.jsonl and sends
 * it as two frames without ever blocking: a subscriber whose queue (hwm) is full loses messages, training goes
 * on. The last mome.meta object is sent again to every new subscriber and every meta_every_s seconds, so a late
 * joiner learns what the run is.
 */
#ifndef MOME_MONITOR_H
#define MOME_MONITOR_H

#include <jansson.h>
#include <stdint.h>

typedef struct mome_monitor mome_monitor;

typedef struct {
    const char *bind;             /* ZeroMQ endpoint, or "none" / "" for metrics.jsonl only */
    const char *curve_secret_key; /* file holding a Z85 CURVE secret key, or "" */
    int insecure;                 /* allow a non-loopback bind without CURVE */
    int hwm, sndbuf, linger_ms; /* sndbuf 0: the system's */
    double meta_every_s;
} mome_monitor_config;

/* 1 when endpoint only accepts local connections: tcp on 127.0.0.0/8, localhost or [::1], ipc://, inproc://. */
int mome_monitor_endpoint_is_local(const char *endpoint);

/* MOME_ECONFIG when the bind is not local and neither a CURVE key nor insecure is given. */
int mome_monitor_config_check(const mome_monitor_config *c);

/* Opens run_dir/metrics.jsonl for appending (creating run_dir) and, unless bind is none, binds the socket and
 * writes run_dir/monitor.json atomically. start_step is the step the run starts from: records of later steps left
 * by an earlier session (killed after its last checkpoint) are removed first, so steps in the file only grow. */
int mome_monitor_open(mome_monitor **out, const mome_monitor_config *c, const char *run_dir, const char *run_id,
                      long start_step);

/* Adds the common fields to `fields` (the reference is stolen), writes and sends it. */
void mome_monitor_publish(mome_monitor *m, const char *topic, long step, json_t *fields);

/* Keeps `meta` (stolen) as the run's description and publishes it as mome.meta. */
void mome_monitor_set_meta(mome_monitor *m, long step, json_t *meta);

/* Non-blocking housekeeping, called once per step: resends mome.meta to new subscribers and periodically. */
void mome_monitor_poll(mome_monitor *m, long step);

/* Messages published this session (every topic). */
uint64_t mome_monitor_published(const mome_monitor *m);

/* The bound endpoint ("" when bind is none). */
const char *mome_monitor_endpoint(const mome_monitor *m);

/* Closes the socket (waiting at most linger_ms for queued messages) and the file. Accepts NULL. */
void mome_monitor_close(mome_monitor *m);

#endif
