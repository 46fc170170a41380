/* MaxSim of one query against candidate documents whose ColBERT token rows are stored as fixed-width codes.
 *
 * score[c] = sum over query rows i of max over the document's token rows t of dot(q_i, x_t), where x_t is the
 * token decoded from its code:
 *   float32: x_t = the stored floats; float16: x_t = the stored halves (the query is float32 for both);
 *   int8:    x_t = scale_t * code_t (int8 per dimension), the query given as int16 q_i / qscale_i;
 *   binary:  x_t = scale_t * sign_t (one bit per dimension, 1 = +1, np.packbits order), the query given as
 *            int8 q_i / qscale_i, with dot(q_i, sign_t) = 2 * (sum of q_i over the set bits) - sum(q_i).
 * Integer products are exact; the query is quantized once per search by the caller (m3embed/index/maxsim.py).
 * Each token is decoded once into a small buffer and dotted with every query row. The AVX2 paths, and for binary
 * codes an AVX-512 VNNI path and an AMX path (16 tokens x 16 query rows per tile product), are chosen at run time
 * (CPUID; `limit` caps them); the portable loops give the same results (integers exactly, floats up to summation
 * order). The GIL is released while scoring, so searches in several threads run in parallel.
 *
 * `encode` makes the codes of token rows (float32 or float16) in one pass per row, as maxsim.py documents them:
 * float16 rounds to nearest even (as NumPy's astype), int8 = rint(x / s) with s = max|x| / 127, binary = the sign
 * bits with s = sum(x^2) / sum(|x|); optionally the float16 originals in the same pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define M3_X86 1
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define M3_AMX 1
#endif

enum { ENC_FLOAT16 = 0, ENC_INT8 = 1, ENC_BINARY = 2, ENC_FLOAT32 = 3 };

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* round to nearest even, as NumPy's float32 -> float16 conversion */
static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, mag = x & 0x7fffffff;
    if (mag >= 0x7f800000) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (mag > 0x7f800000 ? 0x200 | ((mag >> 13) & 0x3ff) : 0));
    if (mag >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (mag < 0x38800000) { /* a float16 subnormal or zero */
        if (mag < 0x33000000) return (uint16_t)sign; /* below half the smallest subnormal */
        uint32_t e = mag >> 23, m = (mag & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t half = m >> shift, rest = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((mag - 0x38000000) >> 13), rest = mag & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

/* ---- portable kernels: dots of one decoded token with every query row ---- */

static void dots_f32(const float *q, int nq, int dim, const float *x, float *out) {
    for (int i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * dim;
        float s = 0.f;
        for (int d = 0; d < dim; d++) s += qi[d] * x[d];
        out[i] = s;
    }
}

static void dots_i16(const int16_t *q, int nq, int dim, const int16_t *x, int32_t *out) {
    for (int i = 0; i < nq; i++) {
        const int16_t *qi = q + (size_t)i * dim;
        int32_t s = 0;
        for (int d = 0; d < dim; d++) s += (int32_t)qi[d] * x[d];
        out[i] = s;
    }
}

static void dots_bits(const int8_t *q, int nq, int dim, const uint8_t *x01, int32_t *out) {
    for (int i = 0; i < nq; i++) {
        const int8_t *qi = q + (size_t)i * dim;
        int32_t s = 0;
        for (int d = 0; d < dim; d++) s += x01[d] ? qi[d] : 0;
        out[i] = s;
    }
}

static void decode_f16(const uint16_t *code, int dim, float *x) {
    for (int d = 0; d < dim; d++) x[d] = half_to_float(code[d]);
}

static void decode_bits(const uint8_t *code, int dim, uint8_t *x01) {
    for (int d = 0; d < dim; d++) x01[d] = (code[d >> 3] >> (7 - (d & 7))) & 1;
}

#ifdef M3_X86
/* ---- AVX2 kernels (dim a multiple of 32) ---- */

__attribute__((target("avx2,fma,f16c"))) static void decode_f16_avx2(const uint16_t *code, int dim, float *x) {
    for (int d = 0; d < dim; d += 8)
        _mm256_storeu_ps(x + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(code + d))));
}

__attribute__((target("avx2,fma"))) static float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) static int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2,fma"))) static void dots_f32_avx2(const float *q, int nq, int dim, const float *x,
                                                               float *out) {
    int i = 0;
    for (; i + 4 <= nq; i += 4) {
        const float *q0 = q + (size_t)i * dim, *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < dim; d += 8) {
            __m256 xv = _mm256_loadu_ps(x + d);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), xv, a3);
        }
        out[i] = hsum_ps(a0), out[i + 1] = hsum_ps(a1), out[i + 2] = hsum_ps(a2), out[i + 3] = hsum_ps(a3);
    }
    for (; i < nq; i++) {
        const float *qi = q + (size_t)i * dim;
        __m256 a = _mm256_setzero_ps();
        for (int d = 0; d < dim; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), _mm256_loadu_ps(x + d), a);
        out[i] = hsum_ps(a);
    }
}

__attribute__((target("avx2"))) static void dots_i16_avx2(const int16_t *q, int nq, int dim, const int16_t *x,
                                                           int32_t *out) {
    int i = 0;
    for (; i + 4 <= nq; i += 4) {
        const int16_t *q0 = q + (size_t)i * dim, *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < dim; d += 16) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x + d));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(q0 + d)), xv));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(q1 + d)), xv));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(q2 + d)), xv));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(q3 + d)), xv));
        }
        out[i] = hsum_epi32(a0), out[i + 1] = hsum_epi32(a1), out[i + 2] = hsum_epi32(a2);
        out[i + 3] = hsum_epi32(a3);
    }
    for (; i < nq; i++) {
        const int16_t *qi = q + (size_t)i * dim;
        __m256i a = _mm256_setzero_si256();
        for (int d = 0; d < dim; d += 16)
            a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(qi + d)),
                                                      _mm256_loadu_si256((const __m256i *)(x + d))));
        out[i] = hsum_epi32(a);
    }
}

__attribute__((target("avx2"))) static void decode_i8_avx2(const int8_t *code, int dim, int16_t *x) {
    for (int d = 0; d < dim; d += 16)
        _mm256_storeu_si256((__m256i *)(x + d), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(code + d))));
}

/* 32 dimensions' bits (4 bytes, most significant bit first) -> 32 bytes of 0 / 1 */
__attribute__((target("avx2"))) static void decode_bits_avx2(const uint8_t *code, int dim, uint8_t *x01) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_setr_epi8((char)0x80, 0x40, 0x20, 0x10, 8, 4, 2, 1, (char)0x80, 0x40, 0x20, 0x10,
                                         8, 4, 2, 1, (char)0x80, 0x40, 0x20, 0x10, 8, 4, 2, 1, (char)0x80, 0x40,
                                         0x20, 0x10, 8, 4, 2, 1);
    const __m256i one = _mm256_set1_epi8(1);
    for (int d = 0; d < dim; d += 32) {
        int32_t word;
        memcpy(&word, code + d / 8, 4);
        __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(word), spread);
        v = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), one);
        _mm256_storeu_si256((__m256i *)(x01 + d), v);
    }
}

/* sum of q over the set bits: maddubs(0/1 bytes, int8 q) gives 16 int16 sums of 2 products (|.| <= 254); they
 * are summed in int16 for at most 64 steps (|.| <= 16256) before widening to int32 */
__attribute__((target("avx2"))) static void dots_bits_avx2(const int8_t *q, int nq, int dim, const uint8_t *x01,
                                                            int32_t *out) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    int i = 0;
    for (; i + 4 <= nq; i += 4) {
        const int8_t *q0 = q + (size_t)i * dim, *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
        __m256i w0 = _mm256_setzero_si256(), w1 = w0, w2 = w0, w3 = w0;
        for (int start = 0; start < dim; start += 64 * 32) {
            int stop = start + 64 * 32 < dim ? start + 64 * 32 : dim;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = start; d < stop; d += 32) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x01 + d));
                a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(xv, _mm256_loadu_si256((const __m256i *)(q0 + d))));
                a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(xv, _mm256_loadu_si256((const __m256i *)(q1 + d))));
                a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(xv, _mm256_loadu_si256((const __m256i *)(q2 + d))));
                a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(xv, _mm256_loadu_si256((const __m256i *)(q3 + d))));
            }
            w0 = _mm256_add_epi32(w0, _mm256_madd_epi16(a0, ones16));
            w1 = _mm256_add_epi32(w1, _mm256_madd_epi16(a1, ones16));
            w2 = _mm256_add_epi32(w2, _mm256_madd_epi16(a2, ones16));
            w3 = _mm256_add_epi32(w3, _mm256_madd_epi16(a3, ones16));
        }
        out[i] = hsum_epi32(w0), out[i + 1] = hsum_epi32(w1), out[i + 2] = hsum_epi32(w2);
        out[i + 3] = hsum_epi32(w3);
    }
    for (; i < nq; i++) {
        const int8_t *qi = q + (size_t)i * dim;
        __m256i w = _mm256_setzero_si256();
        for (int start = 0; start < dim; start += 64 * 32) {
            int stop = start + 64 * 32 < dim ? start + 64 * 32 : dim;
            __m256i a = _mm256_setzero_si256();
            for (int d = start; d < stop; d += 32)
                a = _mm256_add_epi16(a, _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(x01 + d)),
                                                             _mm256_loadu_si256((const __m256i *)(qi + d))));
            w = _mm256_add_epi32(w, _mm256_madd_epi16(a, ones16));
        }
        out[i] = hsum_epi32(w);
    }
}

/* ---- AVX-512 VNNI kernel for binary codes (dim a multiple of 64) ----
 * A code's 8 bytes for 64 dimensions, read as one little-endian 64-bit mask, set bit 8b + j for dimension
 * 8b + 7 - j (np.packbits order). The query rows are given to it with each group of 8 dimensions reversed
 * (`permute_groups`), so mask bit m selects query byte m: the sum of q over the set bits is one masked move
 * (the bits as 0/1 bytes) and one dpbusd (u8 x s8 -> int32) per 64 dimensions and query row. */
/* the four lane sums of a0..a3 into out[0..3], in one transposing tree (4 separate reductions cost 4x more) */
__attribute__((target("avx512f,avx512bw"))) static void reduce4_epi32(__m512i a0, __m512i a1, __m512i a2,
                                                                      __m512i a3, int32_t *out) {
    __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    /* each 128-bit lane: (a0, a1, a0, a1) and (a2, a3, a2, a3) partial sums -> (a0, a1, a2, a3) */
    __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
    __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
    __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    _mm_storeu_si128((__m128i *)out, q);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void dots_bits_vnni(const int8_t *q, int nq, int dim,
                                                                                 const uint8_t *code,
                                                                                 uint8_t *bits, int32_t *out) {
    const __m512i one = _mm512_set1_epi8(1);
    int chunks = dim / 64;
    for (int c = 0; c < chunks; c++) {
        uint64_t m;
        memcpy(&m, code + 8 * c, 8);
        _mm512_storeu_si512(bits + 64 * c, _mm512_maskz_mov_epi8((__mmask64)m, one));
    }
    int i = 0;
    for (; i + 4 <= nq; i += 4) {
        const int8_t *q0 = q + (size_t)i * dim, *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (int c = 0; c < chunks; c++) {
            __m512i b = _mm512_loadu_si512(bits + 64 * c);
            a0 = _mm512_dpbusd_epi32(a0, b, _mm512_loadu_si512(q0 + 64 * c));
            a1 = _mm512_dpbusd_epi32(a1, b, _mm512_loadu_si512(q1 + 64 * c));
            a2 = _mm512_dpbusd_epi32(a2, b, _mm512_loadu_si512(q2 + 64 * c));
            a3 = _mm512_dpbusd_epi32(a3, b, _mm512_loadu_si512(q3 + 64 * c));
        }
        reduce4_epi32(a0, a1, a2, a3, out + i);
    }
    for (; i < nq; i++) {
        const int8_t *qi = q + (size_t)i * dim;
        __m512i a = _mm512_setzero_si512();
        for (int c = 0; c < chunks; c++)
            a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(bits + 64 * c), _mm512_loadu_si512(qi + 64 * c));
        out[i] = _mm512_reduce_add_epi32(a);
    }
}
#endif

/* 3: every kernel the CPU has, 2: at most AVX-512 VNNI, 1: at most AVX2, 0: the portable loops (`limit`) */
static int isa_cap = 3;

static int cpu_vnni(void) {
#ifdef M3_X86
    static int cpu = -1;
    if (cpu < 0) {
        __builtin_cpu_init();
        cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vnni");
    }
    return cpu;
#else
    return 0;
#endif
}

static int use_vnni(int dim) { return isa_cap >= 2 && cpu_vnni() && dim % 64 == 0; }

/* AMX (tile matrix multiply, int8): the CPU has it (CPUID.7.0:EDX bits 24 and 25), AVX-512 VNNI for the rest, and
 * Linux lets this process use the tile registers (arch_prctl ARCH_REQ_XCOMP_PERM, asked once) */
static int use_amx(int dim) {
#if defined(__x86_64__) && defined(__linux__)
    static int ok = -1;
    if (ok < 0) {
        unsigned a, b, c, d;
        ok = 0;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1) && cpu_vnni())
            ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    }
    return isa_cap >= 3 && ok && dim % 64 == 0;
#else
    (void)dim;
    return 0;
#endif
}

/* each group of 8 values reversed (the order the VNNI kernel reads binary codes in) */
static void permute_groups(const int8_t *q, size_t n, int8_t *out) {
    for (size_t g = 0; g < n; g += 8)
        for (int j = 0; j < 8; j++) out[g + j] = q[g + 7 - j];
}

static int use_avx2(int dim) {
#ifdef M3_X86
    static int cpu = -1;
    if (cpu < 0) {
        __builtin_cpu_init();
        cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return isa_cap >= 1 && cpu && dim % 32 == 0;
#else
    (void)dim;
    return 0;
#endif
}

#ifdef M3_AMX
/* ---- AMX kernel for binary codes (dim a multiple of 64) ----
 * Per document, 16 tokens at a time: their bits become 0/1 bytes (tile A: 16 tokens x 64 dimensions, unsigned),
 * the query is 16 rows at a time in the tiles' VNNI layout (tile B: 16 rows of 4-dimension groups x 16 query rows,
 * signed; built once per call by `amx_query`), and one TDPBUSD per 64 dimensions accumulates the 16 x 16 integer
 * dots (tile C). The scaled dots of the document's tokens are folded into each query row's max as in the other
 * kernels. Query rows are padded with zeros to a multiple of 16. */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) TileConfig;

/* B tiles of the permuted int8 query: [chunk of 64 dims][group of 16 rows][16 x 64 bytes] */
static void amx_query(const int8_t *q, int nq, int dim, int8_t *tiles) {
    int groups = (nq + 15) / 16, chunks = dim / 64;
    memset(tiles, 0, (size_t)chunks * groups * 1024);
    for (int i = 0; i < nq; i++)
        for (int d = 0; d < dim; d++) {
            int kc = d / 64, k = d % 64, g = i / 16, n = i % 16;
            tiles[((size_t)kc * groups + g) * 1024 + (k / 4) * 64 + n * 4 + k % 4] = q[(size_t)i * dim + d];
        }
}

__attribute__((target("avx512f,avx512bw,amx-tile,amx-int8"))) static void score_docs_amx(
        const int8_t *qtiles, int nq, int dim, const float *qscale, const float *qsum, const uint8_t *codes,
        const float *scales, const int64_t *starts, const int64_t *counts, Py_ssize_t n, float *out, uint8_t *a,
        float *best) {
    int groups = (nq + 15) / 16, chunks = dim / 64;
    size_t code_bytes = (size_t)dim / 8;
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 3; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64; /* C int32 16x16, A u8 16x64, B s8 16x64 */
    _tile_loadconfig(&cfg);
    const __m512i one = _mm512_set1_epi8(1);
    int32_t c[256];
    for (Py_ssize_t doc = 0; doc < n; doc++) {
        for (int i = 0; i < groups * 16; i++) best[i] = -FLT_MAX;
        for (int64_t t0 = starts[doc]; t0 < starts[doc] + counts[doc]; t0 += 16) {
            int rows = (int)(starts[doc] + counts[doc] - t0 < 16 ? starts[doc] + counts[doc] - t0 : 16);
            for (int r = 0; r < 16; r++)
                for (int kc = 0; kc < chunks; kc++) {
                    uint64_t m = 0;
                    if (r < rows) memcpy(&m, codes + (size_t)(t0 + r) * code_bytes + 8 * kc, 8);
                    _mm512_storeu_si512(a + ((size_t)kc * 16 + r) * 64, _mm512_maskz_mov_epi8((__mmask64)m, one));
                }
            for (int g = 0; g < groups; g++) {
                _tile_zero(0);
                for (int kc = 0; kc < chunks; kc++) {
                    _tile_loadd(1, a + (size_t)kc * 1024, 64);
                    _tile_loadd(2, qtiles + ((size_t)kc * groups + g) * 1024, 64);
                    _tile_dpbusd(0, 1, 2);
                }
                _tile_stored(0, c, 64);
                __m512 qs = _mm512_loadu_ps(qscale + 16 * g), qt = _mm512_loadu_ps(qsum + 16 * g);
                __m512 b = _mm512_loadu_ps(best + 16 * g);
                for (int r = 0; r < rows; r++) {
                    __m512 dot = _mm512_cvtepi32_ps(_mm512_loadu_si512(c + 16 * r));
                    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(scales[t0 + r]), qs),
                                             _mm512_sub_ps(_mm512_add_ps(dot, dot), qt));
                    b = _mm512_max_ps(b, v);
                }
                _mm512_storeu_ps(best + 16 * g, b);
            }
        }
        float total = 0.f;
        if (counts[doc] > 0)
            for (int i = 0; i < nq; i++) total += best[i];
        out[doc] = total;
    }
    _tile_release();
}
#endif

/* ---- one query against many documents ---- */

typedef struct {
    int encoding, nq, dim, avx2, vnni; /* vnni: binary codes scored by dots_bits_vnni, q permuted for it */
    const void *q;        /* float32 (float32, float16), int16 (int8) or int8 (binary), (nq, dim) */
    const float *qscale;  /* (nq,) for the integer encodings */
    const float *qsum;    /* (nq,) sum of the integer query row, binary */
    const uint8_t *codes; /* token codes, code_bytes each */
    const float *scales;  /* (tokens,) per-token scale, integer encodings */
    size_t code_bytes;
} Query;

static void score_docs(const Query *Q, const int64_t *starts, const int64_t *counts, Py_ssize_t n, float *out,
                       void *buf, float *best, int32_t *idots, float *fdots) {
    int nq = Q->nq, dim = Q->dim;
    for (Py_ssize_t c = 0; c < n; c++) {
        for (int i = 0; i < nq; i++) best[i] = -FLT_MAX;
        for (int64_t t = starts[c]; t < starts[c] + counts[c]; t++) {
            const uint8_t *code = Q->codes + (size_t)t * Q->code_bytes;
            if (Q->encoding == ENC_FLOAT32) {
#ifdef M3_X86
                if (Q->avx2)
                    dots_f32_avx2((const float *)Q->q, nq, dim, (const float *)code, fdots);
                else
#endif
                    dots_f32((const float *)Q->q, nq, dim, (const float *)code, fdots);
                for (int i = 0; i < nq; i++) if (fdots[i] > best[i]) best[i] = fdots[i];
                continue;
            }
            if (Q->encoding == ENC_FLOAT16) {
#ifdef M3_X86
                if (Q->avx2) {
                    decode_f16_avx2((const uint16_t *)code, dim, (float *)buf);
                    dots_f32_avx2((const float *)Q->q, nq, dim, (const float *)buf, fdots);
                } else
#endif
                {
                    decode_f16((const uint16_t *)code, dim, (float *)buf);
                    dots_f32((const float *)Q->q, nq, dim, (const float *)buf, fdots);
                }
                for (int i = 0; i < nq; i++) if (fdots[i] > best[i]) best[i] = fdots[i];
                continue;
            }
            if (Q->encoding == ENC_INT8) {
#ifdef M3_X86
                if (Q->avx2) {
                    decode_i8_avx2((const int8_t *)code, dim, (int16_t *)buf);
                    dots_i16_avx2((const int16_t *)Q->q, nq, dim, (const int16_t *)buf, idots);
                } else
#endif
                {
                    for (int d = 0; d < dim; d++) ((int16_t *)buf)[d] = ((const int8_t *)code)[d];
                    dots_i16((const int16_t *)Q->q, nq, dim, (const int16_t *)buf, idots);
                }
                float s = Q->scales[t];
                for (int i = 0; i < nq; i++) {
                    float v = s * Q->qscale[i] * (float)idots[i];
                    if (v > best[i]) best[i] = v;
                }
                continue;
            }
#ifdef M3_X86
            if (Q->vnni) {
                dots_bits_vnni((const int8_t *)Q->q, nq, dim, code, (uint8_t *)buf, idots);
            } else if (Q->avx2) {
                decode_bits_avx2(code, dim, (uint8_t *)buf);
                dots_bits_avx2((const int8_t *)Q->q, nq, dim, (const uint8_t *)buf, idots);
            } else
#endif
            {
                decode_bits(code, dim, (uint8_t *)buf);
                dots_bits((const int8_t *)Q->q, nq, dim, (const uint8_t *)buf, idots);
            }
            float s = Q->scales[t];
            for (int i = 0; i < nq; i++) {
                float v = s * Q->qscale[i] * (2.f * (float)idots[i] - Q->qsum[i]);
                if (v > best[i]) best[i] = v;
            }
        }
        float total = 0.f;
        if (counts[c] > 0)
            for (int i = 0; i < nq; i++) total += best[i];
        out[c] = total;
    }
}

static int need(Py_buffer *b, Py_ssize_t bytes, const char *what) {
    if (b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "maxsim: %s holds %zd bytes, %zd needed", what, b->len, bytes);
        return 0;
    }
    return 1;
}

/* maxsim(encoding, q, qscale, qsum, nq, dim, codes, scales, starts, counts, out) */
static PyObject *maxsim(PyObject *self, PyObject *args) {
    (void)self;
    int encoding, nq, dim;
    Py_buffer q, qscale, qsum, codes, scales, starts, counts, out;
    if (!PyArg_ParseTuple(args, "iy*y*y*iiy*y*y*y*w*", &encoding, &q, &qscale, &qsum, &nq, &dim, &codes, &scales,
                          &starts, &counts, &out))
        return NULL;
    PyObject *result = NULL;
    void *buf = NULL;
    float *best = NULL, *fdots = NULL;
    int32_t *idots = NULL;
    int8_t *permuted = NULL;
    Py_ssize_t n = starts.len / 8;
    int floats = encoding == ENC_FLOAT16 || encoding == ENC_FLOAT32;
    size_t code_bytes = encoding == ENC_FLOAT32   ? 4 * (size_t)dim
                        : encoding == ENC_FLOAT16 ? 2 * (size_t)dim
                        : encoding == ENC_INT8    ? (size_t)dim
                                                  : (size_t)dim / 8;
    size_t q_item = floats ? 4 : encoding == ENC_INT8 ? 2 : 1;
    if (encoding < ENC_FLOAT16 || encoding > ENC_FLOAT32 || nq < 1 || dim < 8 || dim % 8) {
        PyErr_Format(PyExc_ValueError, "maxsim: bad encoding %d, nq %d or dim %d", encoding, nq, dim);
        goto done;
    }
    if (!need(&q, (Py_ssize_t)(q_item * nq * dim), "the query") || !need(&counts, n * 8, "counts") ||
        !need(&out, n * 4, "out") ||
        (!floats && !need(&qscale, 4 * nq, "qscale")) ||
        (encoding == ENC_BINARY && !need(&qsum, 4 * nq, "qsum")))
        goto done;
    const int64_t *st = (const int64_t *)starts.buf, *ct = (const int64_t *)counts.buf;
    Py_ssize_t tokens = (Py_ssize_t)(codes.len / code_bytes);
    for (Py_ssize_t c = 0; c < n; c++) {
        if (st[c] < 0 || ct[c] < 0 || st[c] + ct[c] > tokens) {
            PyErr_Format(PyExc_ValueError, "maxsim: document %zd's tokens [%lld, %lld) are outside the %zd stored",
                         c, (long long)st[c], (long long)(st[c] + ct[c]), tokens);
            goto done;
        }
    }
    if (!floats && !need(&scales, 4 * tokens, "scales")) goto done;
#ifdef M3_AMX
    if (encoding == ENC_BINARY && use_amx(dim)) {
        int groups = (nq + 15) / 16;
        int8_t *qperm = PyMem_RawMalloc((size_t)nq * dim);
        int8_t *qtiles = PyMem_RawMalloc((size_t)(dim / 64) * groups * 1024);
        uint8_t *a = PyMem_RawMalloc(16 * (size_t)dim);
        float *bests = PyMem_RawMalloc(4 * (size_t)groups * 16), *qs = PyMem_RawMalloc(4 * (size_t)groups * 16);
        float *qt = PyMem_RawMalloc(4 * (size_t)groups * 16);
        if (qperm && qtiles && a && bests && qs && qt) {
            permute_groups((const int8_t *)q.buf, (size_t)nq * dim, qperm);
            amx_query(qperm, nq, dim, qtiles);
            memset(qs, 0, 4 * (size_t)groups * 16), memset(qt, 0, 4 * (size_t)groups * 16);
            memcpy(qs, qscale.buf, 4 * (size_t)nq), memcpy(qt, qsum.buf, 4 * (size_t)nq);
            Py_BEGIN_ALLOW_THREADS
            score_docs_amx(qtiles, nq, dim, qs, qt, (const uint8_t *)codes.buf, (const float *)scales.buf, st, ct,
                           n, (float *)out.buf, a, bests);
            Py_END_ALLOW_THREADS
            result = Py_None;
            Py_INCREF(result);
        } else {
            PyErr_NoMemory();
        }
        PyMem_RawFree(qperm), PyMem_RawFree(qtiles), PyMem_RawFree(a), PyMem_RawFree(bests), PyMem_RawFree(qs);
        PyMem_RawFree(qt);
        goto done;
    }
#endif
    int vnni = encoding == ENC_BINARY && use_vnni(dim);
    buf = PyMem_RawMalloc(4 * (size_t)dim + 64); /* dim / 64 zmm registers' worth for the VNNI kernel: dim bytes */
    if (vnni) {
        permuted = PyMem_RawMalloc((size_t)nq * dim);
        if (!permuted) {
            PyErr_NoMemory();
            goto done;
        }
        permute_groups((const int8_t *)q.buf, (size_t)nq * dim, permuted);
    }
    best = PyMem_RawMalloc(4 * (size_t)nq);
    fdots = PyMem_RawMalloc(4 * (size_t)nq);
    idots = PyMem_RawMalloc(4 * (size_t)nq);
    if (!buf || !best || !fdots || !idots) {
        PyErr_NoMemory();
        goto done;
    }
    Query Q = {encoding, nq, dim, use_avx2(dim), vnni, vnni ? (const void *)permuted : q.buf,
               (const float *)qscale.buf, (const float *)qsum.buf,
               (const uint8_t *)codes.buf, (const float *)scales.buf, code_bytes};
    Py_BEGIN_ALLOW_THREADS
    score_docs(&Q, st, ct, n, (float *)out.buf, buf, best, idots, fdots);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_RawFree(buf), PyMem_RawFree(best), PyMem_RawFree(fdots), PyMem_RawFree(idots), PyMem_RawFree(permuted);
    PyBuffer_Release(&q), PyBuffer_Release(&qscale), PyBuffer_Release(&qsum), PyBuffer_Release(&codes);
    PyBuffer_Release(&scales), PyBuffer_Release(&starts), PyBuffer_Release(&counts), PyBuffer_Release(&out);
    return result;
}

/* ---- encoding token rows ---- */

static void to_halves(const float *x, int dim, uint16_t *out) {
    for (int d = 0; d < dim; d++) out[d] = float_to_half(x[d]);
}

#ifdef M3_X86
__attribute__((target("avx2,fma,f16c"))) static void to_halves_avx2(const float *x, int dim, uint16_t *out) {
    for (int d = 0; d < dim; d += 8)
        _mm_storeu_si128((__m128i *)(out + d), _mm256_cvtps_ph(_mm256_loadu_ps(x + d), _MM_FROUND_TO_NEAREST_INT));
}

/* the sign bits (most significant first, as np.packbits) and sum(x^2) / sum(|x|) of one row */
__attribute__((target("avx2,fma"))) static float binary_avx2(const float *x, int dim, uint8_t *out) {
    static uint8_t reversed[256];
    if (!reversed[1])
        for (int b = 0; b < 256; b++) {
            uint8_t r = 0;
            for (int j = 0; j < 8; j++) r |= (uint8_t)(((b >> j) & 1) << (7 - j));
            reversed[b] = r;
        }
    const __m256 zero = _mm256_setzero_ps(), abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 l1 = zero, l2 = zero;
    for (int d = 0; d < dim; d += 8) {
        __m256 v = _mm256_loadu_ps(x + d);
        out[d / 8] = reversed[_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ))];
        l1 = _mm256_add_ps(l1, _mm256_and_ps(v, abs_mask));
        l2 = _mm256_fmadd_ps(v, v, l2);
    }
    float a = hsum_ps(l1), b = hsum_ps(l2);
    return a > 0.f ? b / a : 0.f;
}
#endif

static void encode_rows(int encoding, const void *src, int half_src, Py_ssize_t n, int dim, uint8_t *codes,
                        float *scales, uint16_t *halves, float *row) {
    int avx2 = use_avx2(dim);
    for (Py_ssize_t r = 0; r < n; r++) {
        const float *x = row;
        const uint16_t *h = (const uint16_t *)src + (size_t)r * dim;
        if (half_src) {
#ifdef M3_X86
            if (avx2) decode_f16_avx2(h, dim, row);
            else
#endif
                decode_f16(h, dim, row);
        } else {
            x = (const float *)src + (size_t)r * dim;
        }
        uint16_t *half_out[2] = {halves ? halves + (size_t)r * dim : NULL,
                                 encoding == ENC_FLOAT16 ? (uint16_t *)(codes + (size_t)r * 2 * dim) : NULL};
        for (int j = 0; j < 2; j++) {
            if (!half_out[j]) continue;
            if (half_src) memcpy(half_out[j], h, 2 * (size_t)dim);
#ifdef M3_X86
            else if (avx2) to_halves_avx2(x, dim, half_out[j]);
#endif
            else to_halves(x, dim, half_out[j]);
        }
        if (encoding == ENC_FLOAT32) {
            memcpy(codes + (size_t)r * 4 * dim, x, 4 * (size_t)dim);
        } else if (encoding == ENC_FLOAT16) {
            continue;
        } else if (encoding == ENC_INT8) {
            float top = 0.f;
            for (int d = 0; d < dim; d++) { float a = fabsf(x[d]); if (a > top) top = a; }
            float scale = top / 127.f, safe = scale > 0.f ? scale : 1.f;
            int8_t *o = (int8_t *)(codes + (size_t)r * dim);
            for (int d = 0; d < dim; d++) {
                float v = nearbyintf(x[d] / safe);
                o[d] = (int8_t)(v > 127.f ? 127.f : v < -127.f ? -127.f : v);
            }
            scales[r] = scale;
        } else {
            uint8_t *o = codes + (size_t)r * (dim / 8);
#ifdef M3_X86
            if (avx2) {
                scales[r] = binary_avx2(x, dim, o);
                continue;
            }
#endif
            float l1 = 0.f, l2 = 0.f;
            for (int b = 0; b < dim / 8; b++) {
                uint8_t byte = 0;
                for (int j = 0; j < 8; j++) {
                    float v = x[8 * b + j];
                    byte = (uint8_t)(byte << 1) | (v > 0.f);
                    l1 += fabsf(v), l2 += v * v;
                }
                o[b] = byte;
            }
            scales[r] = l1 > 0.f ? l2 / l1 : 0.f;
        }
    }
}

/* encode(encoding, src, half_src, dim, codes, scales, halves): n = rows of src; halves may be empty */
static PyObject *encode(PyObject *self, PyObject *args) {
    (void)self;
    int encoding, half_src, dim;
    Py_buffer src, codes, scales, halves;
    if (!PyArg_ParseTuple(args, "iy*piw*w*w*", &encoding, &src, &half_src, &dim, &codes, &scales, &halves))
        return NULL;
    PyObject *result = NULL;
    float *row = NULL;
    if (encoding < ENC_FLOAT16 || encoding > ENC_FLOAT32 || dim < 8 || dim % 8) {
        PyErr_Format(PyExc_ValueError, "encode: bad encoding %d or dim %d", encoding, dim);
        goto done;
    }
    Py_ssize_t n = src.len / ((half_src ? 2 : 4) * (Py_ssize_t)dim);
    size_t code_bytes = encoding == ENC_FLOAT32   ? 4 * (size_t)dim
                        : encoding == ENC_FLOAT16 ? 2 * (size_t)dim
                        : encoding == ENC_INT8    ? (size_t)dim
                                                  : (size_t)dim / 8;
    int scaled = encoding == ENC_INT8 || encoding == ENC_BINARY;
    if (!need(&codes, n * (Py_ssize_t)code_bytes, "codes") || (scaled && !need(&scales, 4 * n, "scales")) ||
        (halves.len && !need(&halves, 2 * n * dim, "halves")))
        goto done;
    row = PyMem_RawMalloc(4 * (size_t)dim);
    if (!row) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    encode_rows(encoding, src.buf, half_src, n, dim, (uint8_t *)codes.buf, (float *)scales.buf,
                halves.len ? (uint16_t *)halves.buf : NULL, row);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_RawFree(row);
    PyBuffer_Release(&src), PyBuffer_Release(&codes), PyBuffer_Release(&scales), PyBuffer_Release(&halves);
    return result;
}

static PyObject *simd(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyUnicode_FromString(use_amx(64)    ? "amx"
                                : use_vnni(64) ? "avx512-vnni"
                                : use_avx2(32) ? "avx2"
                                               : "portable");
}

/* limit(level): use at most level 3 (every kernel), 2 (AVX-512 VNNI), 1 (AVX2) or 0 (portable); for tests */
static PyObject *limit(PyObject *self, PyObject *args) {
    (void)self;
    int level;
    if (!PyArg_ParseTuple(args, "i", &level)) return NULL;
    if (level < 0 || level > 3) {
        PyErr_Format(PyExc_ValueError, "limit: level %d, expected 0 (portable) to 3 (amx)", level);
        return NULL;
    }
    isa_cap = level;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"limit", limit, METH_VARARGS, "Use at most these kernels: 3 AMX, 2 AVX-512 VNNI, 1 AVX2, 0 portable."},
    {"maxsim", maxsim, METH_VARARGS, "Sum over query rows of the max dot with each document's decoded tokens."},
    {"encode", encode, METH_VARARGS, "Codes (and float16 originals) of float32 or float16 token rows."},
    {"simd", simd, METH_NOARGS, "The instruction set the kernels use on this CPU."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_maxsim", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__maxsim(void) { return PyModule_Create(&module); }
