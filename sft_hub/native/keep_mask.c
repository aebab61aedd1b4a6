/* Dropout keep-masks drawn exactly as torch's CPU generator draws `empty(..., dtype=bool).bernoulli_(p)`,
   about 14x faster (sft_hub/native/__init__.py builds, checks and calls this; tests/test_keep_mask.py).

   torch's CPU generator is MT19937; its scalar bernoulli draws one double per element from two 32-bit
   outputs, (first << 32 | second), keeps the low 53 bits v and returns v * 2^-53 < p, which is exactly
   v < ceil(p * 2^53). torch does this serially, one generator call at a time; here a whole 624-word
   block is twisted and tempered at once and the pairs are compared in a loop the compiler vectorises. */
#include <stdint.h>
#include <string.h>
#define N 624
#define M 397
#define UPPER 0x80000000u
#define LOWER 0x7fffffffu
#define MATRIX 0x9908b0dfu

static void twist(uint32_t *mt) {
    int i;
    for (i = 0; i < N - M; i++) {
        uint32_t y = (mt[i] & UPPER) | (mt[i + 1] & LOWER);
        mt[i] = mt[i + M] ^ (y >> 1) ^ ((0u - (y & 1u)) & MATRIX);
    }
    for (; i < N - 1; i++) {
        uint32_t y = (mt[i] & UPPER) | (mt[i + 1] & LOWER);
        mt[i] = mt[i + M - N] ^ (y >> 1) ^ ((0u - (y & 1u)) & MATRIX);
    }
    uint32_t y = (mt[N - 1] & UPPER) | (mt[0] & LOWER);
    mt[N - 1] = mt[M - 1] ^ (y >> 1) ^ ((0u - (y & 1u)) & MATRIX);
}

static inline uint32_t temper(uint32_t y) {
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

/* out[k] = 1 when the k-th double drawn as torch's CPU generator draws it ((first << 32 | second), low 53 bits)
   is below threshold, i.e. u < p with threshold = ceil(p * 2^53). mt/pos: MT19937 state, pos = next word (624: twist first). */
void keep_mask(uint32_t *mt, int32_t *pos_io, uint8_t *out, int64_t n, uint64_t threshold) {
    int32_t pos = *pos_io;
    uint32_t t[N];
    const uint64_t mask53 = (((uint64_t)1) << 53) - 1;
    int have = 0; /* t[] holds the tempered block of mt when have */
    int64_t k = 0;
    while (k < n) {
        if (pos >= N) { twist(mt); pos = 0; have = 0; }
        if (!have) { for (int i = 0; i < N; i++) t[i] = temper(mt[i]); have = 1; }
        if (pos == N - 1) { /* a pair straddles two blocks */
            uint32_t first = t[N - 1];
            twist(mt); pos = 0;
            for (int i = 0; i < N; i++) t[i] = temper(mt[i]);
            uint32_t second = t[pos++];
            out[k++] = ((((uint64_t)first << 32) | second) & mask53) < threshold;
            continue;
        }
        int64_t pairs = (N - pos) / 2;
        if (pairs > n - k) pairs = n - k;
        const uint32_t *src = t + pos;
        uint8_t *dst = out + k;
        for (int64_t j = 0; j < pairs; j++)
            dst[j] = ((((uint64_t)src[2 * j] << 32) | src[2 * j + 1]) & mask53) < threshold;
        pos += (int32_t)(2 * pairs);
        k += pairs;
    }
    *pos_io = pos;
}

/* out[i] = x[i] * (keep[i] ? scale : 0): torch's `x * keep.float().div_(keep_prob)` (scale = 1 / keep_prob as
   torch rounds it) in one pass and without the float mask; the same IEEE float products, signed zeros included.
   Compiled without fast-math, so the compiler may vectorise but not reassociate. */
void apply_mask(const float *x, const uint8_t *keep, float scale, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * (keep[i] ? scale : 0.0f);
}
