/* fuzz_monitor.c — `mome monitor`'s handling of received messages (src/monitor_view.c, src/monitor_view_feed.h).
 *
 * Input: three bytes of settings (output: terminal view, plain lines or JSON lines, and the view's UTF-8 bars;
 * the terminal's columns, 20 + 2 b; its rows, 6 + b), then messages separated by NUL bytes, each one's frames
 * separated by 0x1f (a real message is two frames: topic and JSON body). Every message goes through the path of
 * one received from the stream: frame checks, topic, JSON parsing, schema validation, sessions and sequence
 * numbers, the output; the terminal view is redrawn after each. The message sequence matters: a mome.meta or mome.train kept from an
 * earlier message is drawn next to later ones. Checks: exit codes are those of `mome monitor`.
 */
#include "fuzz.h"

#include "mome/monitor_view.h"
#include "monitor_view_feed.h"

#define MAX_FRAMES 4
#define MAX_MESSAGES 64

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    const int out = data[0] % 3, utf8 = (data[0] >> 2) & 1;
    const int cols = 20 + 2 * data[1], rows = 6 + data[2]; /* up to 530 x 261: past the view's own limits */
    mome_monitor_feed *f = mome_monitor_feed_new(out, utf8, cols, rows);
    data += 3, size -= 3;
    int n_msg = 0;
    for (size_t i = 0; i <= size && n_msg < MAX_MESSAGES; n_msg++) {
        const uint8_t *end = memchr(data + i, 0, size - i);
        const size_t len = end ? (size_t)(end - (data + i)) : size - i;
        const void *frame[MAX_FRAMES];
        size_t flen[MAX_FRAMES];
        int frames = 0;
        for (size_t j = i; frames < MAX_FRAMES;) {
            const uint8_t *sep = memchr(data + j, 0x1f, i + len - j);
            const size_t l = sep ? (size_t)(sep - (data + j)) : i + len - j;
            frame[frames] = data + j;
            flen[frames++] = l;
            if (!sep) break;
            j += l + 1;
        }
        const int code = mome_monitor_feed_message(f, frames, frame, flen);
        FUZZ_CHECK(code == -1 || code == 0 || code == MOME_MONITOR_EXIT_FAILED, "exit code %d", code);
        mome_monitor_feed_draw(f);
        if (code >= 0) break; /* the run ended: `mome monitor` exits */
        i += len + 1;
    }
    mome_monitor_feed_free(f);
    return 0;
}
