/* Hand-written CPU kernels for the L2 instance norm + (Ada)ReLU of a CNN-F
 * (cnnf/native.py builds and loads this file; cnnf/fused.py has the same
 * formulas as tensor code, the reference these kernels are tested against).
 *
 * Maps are channels-last (N, H, W, C) and contiguous; the per-(sample,
 * channel) factors r are (N, C) float32. One sample's slab (H W C values,
 * 100-200 KB here) is read once from memory for its per-channel sums and
 * once more, now from the core's cache, for the elementwise pass: the
 * compiled kernels stream the whole map twice, and that traffic is what
 * bounds them on a 2-core machine.
 *
 * Everything is computed in float32; bfloat16 inputs are widened on load and
 * outputs rounded once (to nearest even) on store, as the compiled kernels do.
 * Samples are spread over `threads` OpenMP threads (torch's own OpenMP
 * runtime: libgomp.so.1 is already loaded with torch).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_C 256

typedef uint16_t bf16;

static inline float bf16_load(bf16 v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16 bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

#define LD_f32(p, i) ((p)[i])
#define ST_f32(p, i, v) ((p)[i] = (v))
#define LD_bf16(p, i) bf16_load((p)[i])
#define ST_bf16(p, i, v) ((p)[i] = bf16_store(v))

/* Runs CALL (which names the channel count CC_) with CC_ a compile-time
 * constant for 16, 32, 64 and 128 channels, so that the inlined loops are
 * specialised, and with the run-time count for any other C up to MAX_C;
 * returns 1 (the caller falls back) for anything else. */
#define SPECIALISE(CALL)                                                                                            \
    switch (C) {                                                                                                    \
    case 16: { const int CC_ = 16; CALL; return 0; }                                                                \
    case 32: { const int CC_ = 32; CALL; return 0; }                                                                \
    case 64: { const int CC_ = 64; CALL; return 0; }                                                                \
    case 128: { const int CC_ = 128; CALL; return 0; }                                                              \
    default: { if (C < 1 || C > MAX_C) return 1; const int CC_ = (int)C; CALL; return 0; }                          \
    }

/* For each dtype T (f32 / bf16) and a channel count CC that is a compile-time
 * constant after inlining, the six kernels; `body_T(CC)` is instantiated for
 * 16, 32, 64 and 128 channels and once for any other C <= MAX_C. */
#define KERNELS(T, CT)                                                                                              \
/* r = (mean_HW(x^2) + eps)^(-1/2) per channel of one sample's slab xn, into rr and r_out. */                      \
static inline __attribute__((always_inline)) void                                                                  \
inv_rms_##T(const CT* restrict xn, int64_t HW, const int CC, float eps, float* restrict rr, float* restrict r_out) {\
    float acc[MAX_C] __attribute__((aligned(64)));                                                                  \
    for (int c = 0; c < CC; c++) acc[c] = 0.f;                                                                     \
    for (int64_t p = 0; p < HW; p++) {                                                                              \
        _Pragma("omp simd")                                                                                         \
        for (int c = 0; c < CC; c++) { float v = LD_##T(xn, p * CC + c); acc[c] += v * v; }                        \
    }                                                                                                               \
    for (int c = 0; c < CC; c++) { rr[c] = 1.0f / sqrtf(acc[c] / (float)HW + eps); r_out[c] = rr[c]; }            \
}                                                                                                                   \
static inline __attribute__((always_inline)) void                                                                  \
norm_fwd_##T##_c(const CT* restrict x, const float* restrict bias, float eps, int relu, int64_t N, int64_t HW,     \
                 const int CC, CT* restrict out, float* restrict r, int threads) {                                \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t n = 0; n < N; n++) {                                                                               \
        const CT* restrict xn = x + n * HW * CC;                                                                   \
        CT* restrict on = out + n * HW * CC;                                                                       \
        float rr[MAX_C] __attribute__((aligned(64)));                                                              \
        inv_rms_##T(xn, HW, CC, eps, rr, r + n * CC);                                                              \
        for (int64_t p = 0; p < HW; p++) {                                                                          \
            _Pragma("omp simd")                                                                                     \
            for (int c = 0; c < CC; c++) {                                                                          \
                float v = LD_##T(xn, p * CC + c) * rr[c] + bias[c];                                                 \
                ST_##T(on, p * CC + c, (relu && v <= 0.f) ? 0.f : v); /* NaN passes, as torch.relu */           \
            }                                                                                                       \
        }                                                                                                           \
    }                                                                                                               \
}                                                                                                                   \
/* grad of y = x r + bias (relu: of relu(y)), r as in the forward pass:                                            \
 *   gm = g where active; dL/dx = r gm - x r^3 mean_HW(gm x); dL/dbias = sum gm. */                                 \
static inline __attribute__((always_inline)) void                                                                  \
norm_bwd_##T##_c(const CT* restrict g, const CT* restrict x, const float* restrict r, const float* restrict bias,  \
                 int relu, int64_t N, int64_t HW, const int CC, CT* restrict gx, float* restrict gbias_rows,       \
                 int threads) {                                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t n = 0; n < N; n++) {                                                                               \
        const CT* restrict gn = g + n * HW * CC;                                                                   \
        const CT* restrict xn = x + n * HW * CC;                                                                   \
        CT* restrict on = gx + n * HW * CC;                                                                        \
        float dot[MAX_C] __attribute__((aligned(64))), bs[MAX_C] __attribute__((aligned(64)));                    \
        float rr[MAX_C] __attribute__((aligned(64))), k[MAX_C] __attribute__((aligned(64)));                      \
        for (int c = 0; c < CC; c++) { dot[c] = 0.f; bs[c] = 0.f; rr[c] = r[n * CC + c]; }                         \
        for (int64_t p = 0; p < HW; p++) {                                                                          \
            _Pragma("omp simd")                                                                                     \
            for (int c = 0; c < CC; c++) {                                                                          \
                float xv = LD_##T(xn, p * CC + c), gv = LD_##T(gn, p * CC + c);                                    \
                float gm = (relu && !(xv * rr[c] + bias[c] > 0.f)) ? 0.f : gv;                                     \
                dot[c] += gm * xv;                                                                                  \
                bs[c] += gm;                                                                                        \
            }                                                                                                       \
        }                                                                                                           \
        for (int c = 0; c < CC; c++) k[c] = rr[c] * rr[c] * rr[c] * (dot[c] / (float)HW);                          \
        for (int64_t p = 0; p < HW; p++) {                                                                          \
            _Pragma("omp simd")                                                                                     \
            for (int c = 0; c < CC; c++) {                                                                          \
                float xv = LD_##T(xn, p * CC + c), gv = LD_##T(gn, p * CC + c);                                    \
                float gm = (relu && !(xv * rr[c] + bias[c] > 0.f)) ? 0.f : gv;                                     \
                ST_##T(on, p * CC + c, gm * rr[c] - xv * k[c]);                                                     \
            }                                                                                                       \
        }                                                                                                           \
        if (gbias_rows) memcpy(gbias_rows + n * CC, bs, CC * sizeof(float));                                      \
    }                                                                                                               \
}                                                                                                                   \
/* Later pass: f = x r + bias, f' = f + eta (s - f), z = sign(s) f', out = f' where z > 0 else 0. */               \
static inline __attribute__((always_inline)) void                                                                  \
ada_fwd_##T##_c(const CT* restrict x, const float* restrict bias, const CT* restrict s, float eta, float eps,       \
                int64_t N, int64_t HW, const int CC, CT* restrict out, CT* restrict z, float* restrict r,          \
                int threads) {                                                                                      \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t n = 0; n < N; n++) {                                                                               \
        const CT* restrict xn = x + n * HW * CC;                                                                   \
        const CT* restrict sn = s + n * HW * CC;                                                                   \
        CT* restrict on = out + n * HW * CC;                                                                       \
        CT* restrict zn = z + n * HW * CC;                                                                         \
        float rr[MAX_C] __attribute__((aligned(64)));                                                              \
        inv_rms_##T(xn, HW, CC, eps, rr, r + n * CC);                                                              \
        for (int64_t p = 0; p < HW; p++) {                                                                          \
            _Pragma("omp simd")                                                                                     \
            for (int c = 0; c < CC; c++) {                                                                          \
                float f = LD_##T(xn, p * CC + c) * rr[c] + bias[c];                                                 \
                float sv = LD_##T(sn, p * CC + c);                                                                  \
                f = f + eta * (sv - f);                                                                             \
                float sg = sv > 0.f ? 1.f : (sv < 0.f ? -1.f : 0.f);                                                \
                float zv = sg * f;                                                                                  \
                ST_##T(zn, p * CC + c, zv);                                                                         \
                ST_##T(on, p * CC + c, zv > 0.f ? f : 0.f);                                                         \
            }                                                                                                       \
        }                                                                                                           \
    }                                                                                                               \
}                                                                                                                   \
/* Its gradient: gz = g where z > 0; the norm gets gz (1 - eta), the signal s gets gz eta. */                      \
static inline __attribute__((always_inline)) void                                                                  \
ada_bwd_##T##_c(const CT* restrict g, const CT* restrict z, const CT* restrict x, const float* restrict r,         \
                float eta, int64_t N, int64_t HW, const int CC, CT* restrict gx, float* restrict gbias_rows,       \
                CT* restrict gs, int threads) {                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t n = 0; n < N; n++) {                                                                               \
        const CT* restrict gn = g + n * HW * CC;                                                                   \
        const CT* restrict zn = z + n * HW * CC;                                                                   \
        const CT* restrict xn = x + n * HW * CC;                                                                   \
        CT* restrict on = gx + n * HW * CC;                                                                        \
        float dot[MAX_C] __attribute__((aligned(64))), bs[MAX_C] __attribute__((aligned(64)));                    \
        float rr[MAX_C] __attribute__((aligned(64))), k[MAX_C] __attribute__((aligned(64)));                      \
        const float keep = 1.f - eta;                                                                               \
        for (int c = 0; c < CC; c++) { dot[c] = 0.f; bs[c] = 0.f; rr[c] = r[n * CC + c]; }                         \
        for (int64_t p = 0; p < HW; p++) {                                                                          \
            _Pragma("omp simd")                                                                                     \
            for (int c = 0; c < CC; c++) {                                                                          \
                float gz = LD_##T(zn, p * CC + c) > 0.f ? LD_##T(gn, p * CC + c) : 0.f;                            \
                float gm = gz * keep;                                                                               \
                dot[c] += gm * LD_##T(xn, p * CC + c);                                                              \
                bs[c] += gm;                                                                                        \
            }                                                                                                       \
        }                                                                                                           \
        for (int c = 0; c < CC; c++) k[c] = rr[c] * rr[c] * rr[c] * (dot[c] / (float)HW);                          \
        for (int64_t p = 0; p < HW; p++) {                                                                          \
            _Pragma("omp simd")                                                                                     \
            for (int c = 0; c < CC; c++) {                                                                          \
                float gz = LD_##T(zn, p * CC + c) > 0.f ? LD_##T(gn, p * CC + c) : 0.f;                            \
                float gm = gz * keep;                                                                               \
                ST_##T(on, p * CC + c, gm * rr[c] - LD_##T(xn, p * CC + c) * k[c]);                                 \
                if (gs) ST_##T(gs + n * HW * CC, p * CC + c, gz * eta);                                             \
            }                                                                                                       \
        }                                                                                                           \
        if (gbias_rows) memcpy(gbias_rows + n * CC, bs, CC * sizeof(float));                                      \
    }                                                                                                               \
}                                                                                                                   \
int cnnf_norm_fwd_##T(const CT* x, const float* bias, float eps, int relu, int64_t N, int64_t HW, int64_t C,       \
                      CT* out, float* r, int threads) {                                                             \
    SPECIALISE(norm_fwd_##T##_c(x, bias, eps, relu, N, HW, CC_, out, r, threads));                                  \
}                                                                                                                   \
int cnnf_norm_bwd_##T(const CT* g, const CT* x, const float* r, const float* bias, int relu, int64_t N,           \
                      int64_t HW, int64_t C, CT* gx, float* gbias_rows, int threads) {                              \
    SPECIALISE(norm_bwd_##T##_c(g, x, r, bias, relu, N, HW, CC_, gx, gbias_rows, threads));                         \
}                                                                                                                   \
int cnnf_ada_fwd_##T(const CT* x, const float* bias, const CT* s, float eta, float eps, int64_t N, int64_t HW,     \
                     int64_t C, CT* out, CT* z, float* r, int threads) {                                            \
    SPECIALISE(ada_fwd_##T##_c(x, bias, s, eta, eps, N, HW, CC_, out, z, r, threads));                              \
}                                                                                                                   \
int cnnf_ada_bwd_##T(const CT* g, const CT* z, const CT* x, const float* r, float eta, int64_t N, int64_t HW,      \
                     int64_t C, CT* gx, float* gbias_rows, CT* gs, int threads) {                                   \
    SPECIALISE(ada_bwd_##T##_c(g, z, x, r, eta, N, HW, CC_, gx, gbias_rows, gs, threads));                          \
}

KERNELS(f32, float)
KERNELS(bf16, bf16)

/* 2x2, stride-2 max pooling of channels-last maps (the AdaPools), with
 * max_pool2d's conventions: the index is the flat position h W + w in the
 * input plane, the first maximum in row-major window order wins, a NaN
 * wins over numbers (the last NaN over earlier ones). Odd trailing rows or
 * columns are not pooled. */
#define POOL_KERNELS(T, CT)                                                                                         \
int cnnf_maxpool2_##T(const CT* restrict x, int64_t N, int64_t H, int64_t W, int64_t C, CT* restrict out,          \
                      int64_t* restrict idx, int threads) {                                                         \
    const int64_t h = H / 2, w = W / 2;                                                                             \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t ni = 0; ni < N * h; ni++) {                                                                        \
        const int64_t n = ni / h, i = ni % h;                                                                       \
        for (int64_t j = 0; j < w; j++) {                                                                           \
            const int64_t p0 = (2 * i) * W + 2 * j;                                                                 \
            const CT* restrict a = x + (n * H * W + p0) * C;                                                        \
            const CT* restrict b = a + C;                                                                           \
            const CT* restrict d = a + W * C;                                                                       \
            const CT* restrict e = d + C;                                                                           \
            CT* restrict o = out + ((n * h + i) * w + j) * C;                                                       \
            int64_t* restrict k = idx + ((n * h + i) * w + j) * C;                                                  \
            _Pragma("omp simd")                                                                                     \
            for (int64_t c = 0; c < C; c++) {                                                                       \
                float m = LD_##T(a, c), v;                                                                          \
                CT mv = a[c];                                                                                       \
                int64_t mk = p0;                                                                                    \
                v = LD_##T(b, c); if (v > m || v != v) { m = v; mv = b[c]; mk = p0 + 1; }                           \
                v = LD_##T(d, c); if (v > m || v != v) { m = v; mv = d[c]; mk = p0 + W; }                           \
                v = LD_##T(e, c); if (v > m || v != v) { m = v; mv = e[c]; mk = p0 + W + 1; }                       \
                o[c] = mv;                                                                                          \
                k[c] = mk;                                                                                          \
            }                                                                                                       \
        }                                                                                                           \
    }                                                                                                               \
    return 0;                                                                                                       \
}                                                                                                                   \
/* The adjoint: out (N, H, W, C) holds g at the position its index names and                                       \
 * 0 elsewhere; every index must lie in its own 2x2 window (as cnnf_maxpool2                                       \
 * gives). This is max_pool2d's backward and max_unpool2d, written densely:                                       \
 * one pass, no zero fill followed by a scatter. */                                                                 \
int cnnf_unpool2_##T(const CT* restrict g, const int64_t* restrict idx, int64_t N, int64_t H, int64_t W,           \
                     int64_t C, CT* restrict out, int threads) {                                                    \
    const int64_t h = H / 2, w = W / 2;                                                                             \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t nr = 0; nr < N * H; nr++) {                                                                        \
        const int64_t n = nr / H, row = nr % H, i = row / 2;                                                        \
        for (int64_t col = 0; col < W; col++) {                                                                     \
            const int64_t j = col / 2, p = row * W + col;                                                           \
            CT* restrict o = out + (n * H * W + p) * C;                                                             \
            if (i >= h || j >= w) { memset(o, 0, C * sizeof(CT)); continue; }                                       \
            const CT* restrict s = g + ((n * h + i) * w + j) * C;                                                   \
            const int64_t* restrict k = idx + ((n * h + i) * w + j) * C;                                            \
            _Pragma("omp simd")                                                                                     \
            for (int64_t c = 0; c < C; c++) o[c] = k[c] == p ? s[c] : (CT)0;                                        \
        }                                                                                                           \
    }                                                                                                               \
    return 0;                                                                                                       \
}                                                                                                                   \
/* max_unpool2d's backward: out (N, h, w, C) = g (N, H, W, C) at each index. */                                    \
int cnnf_gather2_##T(const CT* restrict g, const int64_t* restrict idx, int64_t N, int64_t H, int64_t W,           \
                     int64_t C, CT* restrict out, int threads) {                                                    \
    const int64_t hw = (H / 2) * (W / 2);                                                                           \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                             \
    for (int64_t n = 0; n < N; n++) {                                                                               \
        const CT* restrict gn = g + n * H * W * C;                                                                  \
        for (int64_t q = 0; q < hw; q++) {                                                                          \
            const int64_t* restrict k = idx + (n * hw + q) * C;                                                     \
            CT* restrict o = out + (n * hw + q) * C;                                                                \
            for (int64_t c = 0; c < C; c++) o[c] = gn[k[c] * C + c];                                                \
        }                                                                                                           \
    }                                                                                                               \
    return 0;                                                                                                       \
}

POOL_KERNELS(f32, float)
POOL_KERNELS(bf16, bf16)
