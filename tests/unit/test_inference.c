/* test_inference.c — an inference-only model (mome_gpt_set_inference: no gradients, one layer of activations
 * reused by every layer) computes exactly what the training model computes: bit-identical logits, MoE statistics
 * and expert loads, for a dense and an MoE configuration, over two batch shapes in turn. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "mome/model.h"
#include "mome/rng.h"

static void compare(const mome_gpt_config *cfg, const char *what) {
    enum { B = 3, T = 16 };
    mome_gpt train, infer;
    CHECK_RC(mome_gpt_init(&train, cfg), MOME_OK);
    CHECK_RC(mome_gpt_init(&infer, cfg), MOME_OK);
    mome_gpt_init_weights(&train, 7);
    mome_gpt_init_weights(&infer, 7);
    mome_gpt_set_inference(&infer);
    CHECK(infer.grads == NULL && infer.inference == 1);
    CHECK_RC(mome_gpt_reserve(&train, B, T), MOME_OK);
    CHECK_RC(mome_gpt_reserve(&infer, B, T), MOME_OK);
    int32_t in[B * T];
    mome_rng r;
    mome_rng_stream(&r, 3, 0, 0);
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)mome_rng_below(&r, (uint64_t)cfg->vocab_size);
    const int shapes[2][2] = {{B, T}, {2, 9}};
    for (int s = 0; s < 2; s++) {
        const int b = shapes[s][0], t = shapes[s][1];
        mome_gpt_forward(&train, in, b, t);
        mome_gpt_forward(&infer, in, b, t);
        const size_t n = (size_t)b * t * (size_t)cfg->vocab_size;
        size_t diff = 0;
        for (size_t i = 0; i < n; i++) diff += memcmp(&train.logits[i], &infer.logits[i], sizeof(float)) != 0;
        if (diff) fprintf(stderr, "%s: %zu of %zu logits differ (batch %d x %d)\n", what, diff, n, b, t);
        CHECK_EQ_I(diff, 0);
        if (cfg->n_experts > 0) {
            CHECK(train.aux_loss == infer.aux_loss && train.z_loss == infer.z_loss);
            CHECK(memcmp(train.expert_load, infer.expert_load,
                         (size_t)cfg->n_layer * (size_t)cfg->n_experts * sizeof(double)) == 0);
        }
    }
    printf("%s: inference logits bit-identical to the training forward\n", what);
    mome_gpt_free(&train);
    mome_gpt_free(&infer);
}

int main(void) {
    const mome_gpt_config dense = {.vocab_size = 64, .seq_len = 16, .n_layer = 3, .n_head = 2, .d_model = 16,
                                   .d_ff = 48};
    compare(&dense, "dense");
    const mome_gpt_config moe = {.vocab_size = 64, .seq_len = 16, .n_layer = 3, .n_head = 2, .d_model = 16,
                                 .d_ff = 32, .n_experts = 4, .top_k = 2, .capacity_factor = 1.25f,
                                 .shared_d_ff = 24, .aux_coef = 0.01f, .z_coef = 0.001f};
    compare(&moe, "moe");
    return failures ? 1 : 0;
}
