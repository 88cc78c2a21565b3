/* monitor.c — the record stream of a run (monitor.h): metrics.jsonl and a ZeroMQ XPUB socket on rank 0.
 *
 * XPUB rather than PUB so that subscriptions are visible: each new subscriber gets the run's mome.meta at once
 * (ZMQ_XPUB_VERBOSE passes every subscription, not only the first of each prefix). Sends use ZMQ_DONTWAIT and a
 * bounded queue per subscriber (ZMQ_SNDHWM): a subscriber that stops reading loses its own messages, and the
 * training loop never waits on the network. What `mome monitor` does with the messages is in monitor_view.c.
 */
#include "mome/monitor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <zmq.h>

#include "mome/common.h"

struct mome_monitor {
    mome_monitor_config cfg;
    char run_id[256];
    char session[17];
    char endpoint[512];
    char path[1024];       /* metrics.jsonl */
    FILE *file;
    void *ctx, *sock;      /* NULL when bind is none */
    uint64_t seq;
    json_t *meta;          /* the last mome.meta fields (owned) */
    double last_meta;      /* mome_now() of the last mome.meta */
};

static double unix_time(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

int mome_monitor_endpoint_is_local(const char *e) {
    if (strncmp(e, "ipc://", 6) == 0 || strncmp(e, "inproc://", 9) == 0) return 1;
    if (strncmp(e, "tcp://", 6) != 0) return 0;
    const char *h = e + 6;
    return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 || strncmp(h, "[::1]:", 6) == 0 ||
           strncmp(h, "lo:", 3) == 0;
}

static int bind_is_none(const char *b) { return b == NULL || b[0] == '\0' || strcmp(b, "none") == 0; }

int mome_monitor_config_check(const mome_monitor_config *c) {
    if (bind_is_none(c->bind)) return MOME_OK;
    if (!mome_monitor_endpoint_is_local(c->bind) && !c->curve_secret_key[0] && !c->insecure)
        return mome_error_set(MOME_ECONFIG,
                              "config: [monitor] bind = '%s' accepts connections from other hosts: set "
                              "monitor.curve_secret_key (a key file from `mome monitor --keygen`) to encrypt the "
                              "stream, or monitor.insecure = 1 to publish it unencrypted",
                              c->bind);
    return MOME_OK;
}

/* Removes the records of steps after start_step that an earlier session wrote after its last checkpoint. */
static int drop_records_after(const char *path, long start_step) {
    FILE *f = fopen(path, "r");
    if (!f) return MOME_OK; /* no file yet */
    char *line = NULL;
    size_t cap = 0, kept_len = 0, kept_cap = 0;
    char *kept = NULL;
    long dropped = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *st = o ? json_object_get(o, "step") : NULL;
        const int drop = st && json_is_integer(st) && json_integer_value(st) > start_step;
        json_decref(o);
        if (drop) {
            dropped++;
            continue;
        }
        if (kept_len + (size_t)n + 1 > kept_cap) {
            kept_cap = 2 * (kept_len + (size_t)n + 1);
            kept = realloc(kept, kept_cap);
            MOME_CHECK(kept, "monitor: out of memory reading %s", path);
        }
        memcpy(kept + kept_len, line, (size_t)n);
        kept_len += (size_t)n;
    }
    free(line);
    fclose(f);
    int rc = MOME_OK;
    if (dropped > 0) {
        rc = mome_write_file_atomic(path, kept ? kept : "", kept_len);
        if (rc == MOME_OK)
            mome_info("%s: dropped %ld records after step %ld (written after the checkpoint this run resumes from)",
                      path, dropped, start_step);
    }
    free(kept);
    return rc;
}

static int zmq_fail(mome_monitor *m, const char *what) {
    return mome_error_set(MOME_EIO, "monitor: %s (%s): %s", what, m->cfg.bind, zmq_strerror(zmq_errno()));
}

static int read_key(const char *path, char key[41]) {
    FILE *f = fopen(path, "r");
    if (!f) return mome_error_set(MOME_EIO, "monitor: cannot open the CURVE secret key file %s", path);
    char buf[128] = "";
    const size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    size_t len = strcspn(buf, "\r\n \t");
    if (len != 40)
        return mome_error_set(MOME_ECONFIG, "monitor: %s: expected a 40-character Z85 CURVE secret key, found %zu "
                              "characters", path, len);
    memcpy(key, buf, 40);
    key[40] = '\0';
    return MOME_OK;
}

static int open_socket(mome_monitor *m, const char *run_dir) {
    const mome_monitor_config *c = &m->cfg;
    m->ctx = zmq_ctx_new();
    if (!m->ctx) return zmq_fail(m, "zmq_ctx_new");
    m->sock = zmq_socket(m->ctx, ZMQ_XPUB);
    if (!m->sock) return zmq_fail(m, "zmq_socket");
    const int one = 1;
    if (zmq_setsockopt(m->sock, ZMQ_SNDHWM, &c->hwm, sizeof c->hwm) ||
        zmq_setsockopt(m->sock, ZMQ_LINGER, &c->linger_ms, sizeof c->linger_ms) ||
        zmq_setsockopt(m->sock, ZMQ_XPUB_VERBOSE, &one, sizeof one) ||
        (c->sndbuf > 0 && zmq_setsockopt(m->sock, ZMQ_SNDBUF, &c->sndbuf, sizeof c->sndbuf)))
        return zmq_fail(m, "zmq_setsockopt");
    char public_key[41] = "";
    if (c->curve_secret_key[0]) {
        char secret[41];
        int rc = read_key(c->curve_secret_key, secret);
        if (rc) return rc;
        if (!zmq_has("curve"))
            return mome_error_set(MOME_ECONFIG, "monitor: this libzmq was built without CURVE support");
        if (zmq_curve_public(public_key, secret) != 0) return zmq_fail(m, "deriving the CURVE public key");
        if (zmq_setsockopt(m->sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
            zmq_setsockopt(m->sock, ZMQ_CURVE_SECRETKEY, secret, 40))
            return zmq_fail(m, "setting the CURVE server key");
    }
    if (zmq_bind(m->sock, c->bind) != 0) return zmq_fail(m, "cannot bind the monitor socket");
    size_t len = sizeof m->endpoint;
    if (zmq_getsockopt(m->sock, ZMQ_LAST_ENDPOINT, m->endpoint, &len) != 0) return zmq_fail(m, "ZMQ_LAST_ENDPOINT");

    char host[256] = "";
    gethostname(host, sizeof host - 1);
    json_t *info = json_pack("{s:i, s:s, s:s, s:s, s:o, s:s, s:I, s:f}", "v", 1, "run_id", m->run_id, "session",
                             m->session, "endpoint", m->endpoint, "curve_server_key",
                             public_key[0] ? json_string(public_key) : json_null(), "host", host, "pid",
                             (json_int_t)getpid(), "started", unix_time());
    char *text = json_dumps(info, JSON_INDENT(1));
    json_decref(info);
    char path[1100];
    snprintf(path, sizeof path, "%s/monitor.json", run_dir);
    int rc = mome_write_file_atomic(path, text, strlen(text));
    free(text);
    if (rc) return rc;
    mome_info("monitor: publishing on %s (%s)", m->endpoint, path);
    return MOME_OK;
}

int mome_monitor_open(mome_monitor **out, const mome_monitor_config *c, const char *run_dir, const char *run_id,
                      long start_step) {
    *out = NULL;
    int rc = mome_monitor_config_check(c);
    if (rc) return rc;
    mome_monitor *m = mome_calloc(1, sizeof *m);
    m->cfg = *c;
    snprintf(m->run_id, sizeof m->run_id, "%s", run_id);
    /* a session id that differs between restarts, even within the same second */
    const uint64_t seed[3] = {(uint64_t)getpid(), (uint64_t)(unix_time() * 1e6), (uint64_t)(uintptr_t)m};
    snprintf(m->session, sizeof m->session, "%016llx", (unsigned long long)mome_fnv1a(0, seed, sizeof seed));
    rc = mome_mkdirs(run_dir);
    if (rc == MOME_OK) {
        snprintf(m->path, sizeof m->path, "%s/metrics.jsonl", run_dir);
        rc = drop_records_after(m->path, start_step);
    }
    if (rc == MOME_OK && !(m->file = fopen(m->path, "a")))
        rc = mome_error_set(MOME_EIO, "%s: cannot open for appending: %s", m->path, strerror(errno));
    if (rc == MOME_OK && !bind_is_none(c->bind)) rc = open_socket(m, run_dir);
    if (rc) {
        mome_monitor_close(m);
        return rc;
    }
    m->last_meta = mome_now();
    *out = m;
    return MOME_OK;
}

/* Sends a copy of o (topic, JSON) without blocking; a full queue drops the message for that subscriber. */
static void send_frames(mome_monitor *m, const char *topic, const char *json) {
    if (!m->sock) return;
    if (zmq_send(m->sock, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return;
    zmq_send(m->sock, json, strlen(json), ZMQ_DONTWAIT);
}

static void publish(mome_monitor *m, const char *topic, long step, json_t *o, int to_file) {
    json_object_set_new(o, "v", json_integer(1));
    json_object_set_new(o, "run_id", json_string(m->run_id));
    json_object_set_new(o, "session", json_string(m->session));
    json_object_set_new(o, "seq", json_integer((json_int_t)m->seq++));
    json_object_set_new(o, "t", json_real(unix_time()));
    json_object_set_new(o, "step", json_integer((json_int_t)step));
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (text) {
        send_frames(m, topic, text);
        free(text);
    }
    if (to_file && m->file) {
        json_object_set_new(o, "topic", json_string(topic));
        char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (line) {
            fprintf(m->file, "%s\n", line);
            fflush(m->file);
            free(line);
        }
    }
}

void mome_monitor_publish(mome_monitor *m, const char *topic, long step, json_t *fields) {
    if (!m) {
        json_decref(fields);
        return;
    }
    publish(m, topic, step, fields, 1);
    json_decref(fields);
}

void mome_monitor_set_meta(mome_monitor *m, long step, json_t *meta) {
    if (!m) {
        json_decref(meta);
        return;
    }
    json_decref(m->meta);
    m->meta = meta;
    json_t *copy = json_deep_copy(meta);
    publish(m, "mome.meta", step, copy, 1);
    json_decref(copy);
    m->last_meta = mome_now();
}

/* mome.meta again, to the stream only (metrics.jsonl has it once per session). */
static void resend_meta(mome_monitor *m, long step) {
    if (!m->meta) return;
    json_t *copy = json_deep_copy(m->meta);
    publish(m, "mome.meta", step, copy, 0);
    json_decref(copy);
    m->last_meta = mome_now();
}

void mome_monitor_poll(mome_monitor *m, long step) {
    if (!m || !m->sock) return;
    int joined = 0;
    for (;;) { /* subscription messages: first byte 1 = subscribe, 0 = unsubscribe */
        unsigned char buf[256];
        const int n = zmq_recv(m->sock, buf, sizeof buf, ZMQ_DONTWAIT);
        if (n < 0) break;
        if (n > 0 && buf[0] == 1) joined = 1;
    }
    if (joined || mome_now() - m->last_meta >= m->cfg.meta_every_s) resend_meta(m, step);
}

uint64_t mome_monitor_published(const mome_monitor *m) { return m ? m->seq : 0; }

const char *mome_monitor_endpoint(const mome_monitor *m) { return m ? m->endpoint : ""; }

void mome_monitor_close(mome_monitor *m) {
    if (!m) return;
    if (m->sock) zmq_close(m->sock);
    if (m->ctx) zmq_ctx_term(m->ctx);
    if (m->file) fclose(m->file);
    json_decref(m->meta);
    mome_free(m);
}
