/* fuzz_config.c — the INI parser and the `section.key=value` overrides (src/config.c).
 *
 * Input: INI text up to the first NUL byte, then overrides separated by NUL bytes. The text is parsed over the
 * defaults, every override applied, the result validated. Checks, beyond the sanitizers:
 *  - every refusal leaves a message;
 *  - a configuration that validates survives the trip a checkpoint gives it: its resolved text
 *    (mome_config_to_string, what /config stores) parses back without error into the same configuration.
 *
 * A value with ';' at its start or after a blank used to be accepted and then read back cut short (an inline
 * comment for inih); config.c now refuses it, and tests/fuzz/regressions/config/ holds the two inputs that found it.
 */
#include "fuzz.h"

#include "mome/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 1);
    if (!buf) abort();
    memcpy(buf, data, size);
    buf[size] = 0;
    const size_t text_len = strlen(buf);

    mome_config cfg;
    mome_config_defaults(&cfg);
    int rc = mome_config_load_string(&cfg, buf, "fuzz.ini");
    FUZZ_CHECK(rc == MOME_OK || mome_error_message()[0], "load_string failed (%d) without a message", rc);
    for (size_t off = text_len + 1; off < size + 1; off += strlen(buf + off) + 1) {
        rc = mome_config_override(&cfg, buf + off);
        FUZZ_CHECK(rc == MOME_OK || mome_error_message()[0], "override failed (%d) without a message", rc);
    }
    if (mome_config_validate(&cfg) == MOME_OK) {
        char *text = mome_config_to_string(&cfg);
        mome_config back;
        mome_config_defaults(&back);
        rc = mome_config_load_string(&back, text, "resolved");
        FUZZ_CHECK(rc == MOME_OK, "the resolved text of a valid configuration does not parse: %s\n%s",
                   mome_error_message(), text);
        char *again = mome_config_to_string(&back);
        FUZZ_CHECK(strcmp(text, again) == 0, "the resolved text does not round-trip:\n%s\n---\n%s", text, again);
        mome_free(again);
        mome_free(text);
    }
    free(buf);
    return 0;
}
