/* monitor_view_feed.h — `mome monitor`'s message handling without a connection, for tests/fuzz/fuzz_monitor.c
 * (internal to the tree: not part of the library's interface in include/mome/).
 *
 * A feed is a monitor that never connects: each message given to it goes through exactly the path of a
 * message received from the stream (frame count and size limits, topic, JSON parsing, schema validation, the
 * session and sequence bookkeeping, the plain, JSON or terminal output).
 */
#ifndef MOME_MONITOR_VIEW_FEED_H
#define MOME_MONITOR_VIEW_FEED_H

#include <stddef.h>

typedef struct mome_monitor_feed mome_monitor_feed;

/* out: 0 the terminal view, 1 plain lines, 2 JSON lines (as --json); utf8: the view's bar characters; cols x rows:
 * the terminal size the view assumes (0: 80 x 24). Output goes to stdout, warnings to stderr. */
mome_monitor_feed *mome_monitor_feed_new(int out, int utf8, int cols, int rows);
/* One message of `frames` frames (topic, JSON body; other counts are skipped as malformed). Returns the exit code
 * of `mome monitor` when the message ended the run, else -1. */
int mome_monitor_feed_message(mome_monitor_feed *f, int frames, const void *const *frame, const size_t *len);
/* Redraws the terminal view now (nothing for the other outputs). */
void mome_monitor_feed_draw(mome_monitor_feed *f);
void mome_monitor_feed_free(mome_monitor_feed *f);

#endif
