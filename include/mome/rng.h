/* rng.h — deterministic random numbers (xoshiro256**), seeded with splitmix64.
 *
 * The state is four 64-bit words, saved in checkpoints so that a resumed run draws exactly the numbers the
 * uninterrupted run would have drawn. mome_rng_stream derives independent streams (per rank, per purpose)
 * from one seed, so results never depend on the order in which ranks or threads draw.
 */
#ifndef MOME_RNG_H
#define MOME_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} mome_rng;

void mome_rng_seed(mome_rng *rng, uint64_t seed);
/* A stream for (seed, a, b): the same arguments always give the same stream. */
void mome_rng_stream(mome_rng *rng, uint64_t seed, uint64_t a, uint64_t b);
uint64_t mome_rng_u64(mome_rng *rng);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t mome_rng_below(mome_rng *rng, uint64_t n);
/* Uniform float in [0, 1). */
float mome_rng_uniform(mome_rng *rng);
/* Standard normal (Box-Muller, no cached second value, so the state alone defines the sequence). */
float mome_rng_normal(mome_rng *rng);

#endif
