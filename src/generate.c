/* generate.c — sampling a continuation from a model (temperature, top-k), deterministic for a seed: one prompt
 * for `mome generate`, or a batch of rows for on-policy distillation (kd.on_policy).
 *
 * `mome generate` reruns the forward pass over the (cropped) context for each new token: it is the plain
 * reference, and a context longer than seq_len slides, which a cache of learned positions cannot follow. The
 * on-policy rows use the model's key/value cache (mome_gpt_kv): one forward over the prefixes, then one row per
 * sequence for each sampled position (docs/distillation.md gives the measured cost).
 */
#include <math.h>
#include <string.h>

#include "mome/common.h"
#include "mome/rng.h"
#include "mome/tokenizer.h"
#include "mome/train.h"

/* The next token from one position's logits: the most likely (temperature <= 0) or a draw from the softmax at
 * `temperature` over the top_k largest logits (0: all). probs (V) is scratch. */
static int32_t pick_token(const float *logits, int V, float temperature, int top_k, float *probs, mome_rng *rng) {
    if (temperature <= 0.0f) {
        int next = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[next]) next = v;
        return next;
    }
    float mx = -INFINITY;
    for (int v = 0; v < V; v++) mx = fmaxf(mx, logits[v]);
    float thresh = -INFINITY;
    if (top_k > 0 && top_k < V) {
        /* The k-th largest logit by partial selection. */
        for (int v = 0; v < V; v++) probs[v] = logits[v];
        int lo = 0, hi = V - 1, k = top_k - 1;
        while (lo < hi) {
            float pivot = probs[(lo + hi) / 2];
            int a = lo, b = hi;
            while (a <= b) {
                while (probs[a] > pivot) a++;
                while (probs[b] < pivot) b--;
                if (a <= b) {
                    float t = probs[a];
                    probs[a] = probs[b];
                    probs[b] = t;
                    a++, b--;
                }
            }
            if (k <= b) hi = b;
            else if (k >= a) lo = a;
            else break;
        }
        thresh = probs[k];
    }
    double sum = 0.0;
    for (int v = 0; v < V; v++) {
        probs[v] = logits[v] >= thresh ? expf((logits[v] - mx) / temperature) : 0.0f;
        sum += probs[v];
    }
    double r = (double)mome_rng_uniform(rng) * sum, acc = 0.0;
    for (int v = 0; v < V; v++) {
        acc += probs[v];
        if (probs[v] > 0.0f && r < acc) return v;
    }
    return V - 1;
}

int mome_generate(mome_gpt *m, const int32_t *prompt, int n_prompt, int n_tokens, float temperature, int top_k,
                  uint64_t seed, int32_t *out) {
    const int Tmax = m->cfg.seq_len, V = m->cfg.vocab_size;
    if (n_prompt < 1) return mome_error_set(MOME_EINVAL, "generate: the prompt needs at least one token");
    if (m->max_B < 1 || m->max_T < Tmax) {
        int rc = mome_gpt_reserve(m, 1, Tmax);
        if (rc) return rc;
    }
    int total = n_prompt + n_tokens;
    int32_t *ctx = mome_malloc((size_t)total * sizeof *ctx);
    float *probs = mome_malloc((size_t)V * sizeof *probs);
    memcpy(ctx, prompt, (size_t)n_prompt * sizeof *ctx);
    mome_rng rng;
    mome_rng_stream(&rng, seed, 0x9e7e, 0);
    int n = n_prompt;
    for (int i = 0; i < n_tokens; i++, n++) {
        int start = n > Tmax ? n - Tmax : 0;
        int T = n - start;
        mome_gpt_forward(m, ctx + start, 1, T);
        const int32_t next = pick_token(m->logits + (size_t)(T - 1) * V, V, temperature, top_k, probs, &rng);
        ctx[n] = next;
        out[i] = next;
        if (next == MOME_TOK_EOS) {
            n++;
            break;
        }
    }
    mome_free(probs);
    mome_free(ctx);
    return n - n_prompt;
}

int mome_generate_rows(mome_gpt *m, int32_t *rows, int B, int T, int from, float temperature, uint64_t seed,
                       uint64_t counter, uint64_t row_base) {
    const int V = m->cfg.vocab_size;
    if (from < 1 || from > T || B < 1)
        return mome_error_set(MOME_EINVAL, "generate: rows of %d tokens cannot be continued from position %d", T,
                              from);
    if (from == T) return MOME_OK;
    mome_gpt_kv *kv = mome_gpt_kv_new(m, B, T);
    if (!kv) return mome_error_wrap(MOME_EINVAL, "generate");
    int32_t *ctx = mome_malloc((size_t)B * (size_t)from * sizeof *ctx); /* (B, from): the forward wants them packed */
    int32_t *tok = mome_malloc((size_t)B * sizeof *tok);
    float *probs = mome_malloc((size_t)V * sizeof *probs);
    mome_rng *rng = mome_malloc((size_t)B * sizeof *rng);
    for (int b = 0; b < B; b++) {
        mome_rng_stream(&rng[b], seed, counter, row_base + (uint64_t)b);
        memcpy(ctx + (size_t)b * from, rows + (size_t)b * T, (size_t)from * sizeof *ctx);
    }
    mome_gpt_kv_prefill(m, kv, ctx, from);
    for (int t = from; t < T; t++) {
        for (int b = 0; b < B; b++) {
            /* the logits of position t - 1: the prefix's last after the prefill, then one row per sequence */
            const size_t row = t == from ? (size_t)b * from + (size_t)(from - 1) : (size_t)b;
            const float *lg = m->logits + row * V;
            tok[b] = rows[(size_t)b * T + t] = pick_token(lg, V, temperature, 0, probs, &rng[b]);
        }
        if (t + 1 < T) mome_gpt_kv_step(m, kv, tok);
    }
    mome_free(rng);
    mome_free(probs);
    mome_free(tok);
    mome_free(ctx);
    mome_gpt_kv_free(kv);
    return MOME_OK;
}
