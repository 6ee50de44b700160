/*
 * qrlhf's native kernels: single-precision matrix products computed in place on the wasm
 * backend's heap (a Float32Array over WebAssembly.Memory; for the threaded wasm build that is a
 * SharedArrayBuffer whose base never moves).
 *
 *   gemm(heap, m, n, k, transA, transB, offsets)
 *     for every entry e: C_e[m, n] = op(A_e) · op(B_e), where A_e, B_e, C_e are dense row-major
 *     matrices at float offsets offsets[3e], offsets[3e+1], offsets[3e+2] of `heap`; op(A) is A
 *     [m, k] or, with transA, the transpose of A [k, m]; likewise B [k, n] or B [n, k].
 *
 * Design (the usual blocked scheme for caches, written for this project):
 *  - large products: operands packed into panels (A in rows of MR, B in columns of NR, zero
 *    padded), a register-blocked micro-kernel (AVX-512: 12 x 32, AVX2+FMA: 6 x 16, portable C:
 *    4 x 8) over blocks of KC x NC of B (L3) and MC x KC of A (L2). Transposed operands only change
 *    how panels are read. When padding wastes less work the other way round (few output columns,
 *    e.g. n = 19), C^T = B^T A^T is computed instead, with C written through its strides;
 *  - few output rows (m <= 8, decoding): no packing, the right operand streamed once from memory
 *    (or read from its packed copy, see packB: weights are packed once and kept by the caller);
 *  - tall and narrow (n <= 32, e.g. features x 19 quantile heads): A read in place, row by row,
 *    since packing it would only add a pass over memory;
 *  - threads: a fixed pool; a product is split in row or column blocks of whole panels, a batch
 *    in whole entries. Workers spin briefly after a job (the next product of a decoding step is
 *    microseconds away), then sleep on a condition variable. A call made while the pool is busy
 *    (another JS thread) runs on the calling thread.
 * Summation order differs from a naive loop (blocked over k), so results agree with a float64
 * reference within float32 rounding, not bit for bit.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define QRLHF_X86 1
#endif

/* ----------------------------------------------------------------------------- problem */
typedef struct {
  const float *a; long rsa, csa; /* op(A)[i, p] = a[i * rsa + p * csa] */
  const float *b; long rsb, csb; /* op(B)[p, j] = b[p * rsb + j * csb] */
  float *c; long rsc, csc;       /* C[i, j] = c[i * rsc + j * csc] */
  long m, n, k;
  /* op(B) packed once by packB() ([ceil(n / NR)][k][NR], zero padded), or NULL */
  const float *bp;
} Gemm;

/* micro-kernel: C[mr, nr] (+)= Ap[kc, MR] · Bp[kc, NR] (panels), through C's strides */
typedef void (*UKernel)(long kc, const float *Ap, const float *Bp, float *C, long rsc, long csc,
                        int accumulate, long mr, long nr);
typedef struct {
  const char *name;
  int MR, NR;
  UKernel ukr;
  int simd; /* 2 = AVX-512, 1 = AVX2, 0 = portable */
} Arch;

enum { KC = 256, MC_PANELS = 16, NC = 3072 };

/* writes (or adds, with acc) the valid mr x nr corner of a register tile t (row length ld) into C */
static void store_tile(const float *t, long ld, float *C, long rsc, long csc, int acc, long mr, long nr) {
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) {
      float *d = C + i * rsc + j * csc;
      *d = acc ? *d + t[i * ld + j] : t[i * ld + j];
    }
}

/* ----------------------------------------------------------------------------- portable */
static void ukr_c(long kc, const float *Ap, const float *Bp, float *C, long rsc, long csc, int acc,
                  long mr, long nr) {
  float t[4 * 8] = {0};
  for (long p = 0; p < kc; p++) {
    for (int i = 0; i < 4; i++) {
      float a = Ap[p * 4 + i];
      for (int j = 0; j < 8; j++) t[i * 8 + j] += a * Bp[p * 8 + j];
    }
  }
  store_tile(t, 8, C, rsc, csc, acc, mr, nr);
}

#ifdef QRLHF_X86
/* ----------------------------------------------------------------------------- AVX-512 */
#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

/* The 12 x 32 tile, reading row i of op(A) at a + i * rsa + p * csa: a packed panel (rsa 1,
 * csa 12) or, for tall narrow products, the rows themselves (rsa = row stride, csa 1; rows past mr
 * repeat row mr - 1, valid memory whose results are not stored). */
__attribute__((target("avx512f"), always_inline)) static inline void
tile_avx512(long kc, const float *A, long rsa, long csa, const float *Bp, float *C, long rsc, long csc, int acc,
            long mr, long nr) {
#define DECL(i) __m512 c##i##a = _mm512_setzero_ps(), c##i##b = _mm512_setzero_ps(); \
  const float *a##i = A + ((i) < mr ? (i) : mr - 1) * rsa;
  R12(DECL)
#undef DECL
  for (long p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_loadu_ps(Bp + p * 32), b1 = _mm512_loadu_ps(Bp + p * 32 + 16);
#define STEP(i)                                                                                    \
  {                                                                                                \
    const __m512 ai = _mm512_set1_ps(a##i[p * csa]);                                               \
    c##i##a = _mm512_fmadd_ps(ai, b0, c##i##a);                                                    \
    c##i##b = _mm512_fmadd_ps(ai, b1, c##i##b);                                                    \
  }
    R12(STEP)
#undef STEP
  }
  if (mr == 12 && nr == 32 && csc == 1) {
#define STORE(i)                                                                                   \
  {                                                                                                \
    float *d = C + (i) * rsc;                                                                      \
    if (acc) {                                                                                     \
      c##i##a = _mm512_add_ps(c##i##a, _mm512_loadu_ps(d));                                        \
      c##i##b = _mm512_add_ps(c##i##b, _mm512_loadu_ps(d + 16));                                   \
    }                                                                                              \
    _mm512_storeu_ps(d, c##i##a);                                                                  \
    _mm512_storeu_ps(d + 16, c##i##b);                                                             \
  }
    R12(STORE)
#undef STORE
    return;
  }
  float t[12 * 32] __attribute__((aligned(64)));
#define SPILL(i)                                                                                   \
  _mm512_store_ps(t + (i) * 32, c##i##a);                                                          \
  _mm512_store_ps(t + (i) * 32 + 16, c##i##b);
  R12(SPILL)
#undef SPILL
  store_tile(t, 32, C, rsc, csc, acc, mr, nr);
}

__attribute__((target("avx512f"))) static void ukr_avx512(long kc, const float *Ap, const float *Bp, float *C,
                                                           long rsc, long csc, int acc, long mr, long nr) {
  tile_avx512(kc, Ap, 1, 12, Bp, C, rsc, csc, acc, mr, nr);
}

/* The same tile reading op(A) in place (contiguous along k, row stride rsa): for a tall, narrow
 * product (all of C's columns in one panel), A is read exactly once, so packing it would only add
 * a pass over memory. */
__attribute__((target("avx512f"))) static void ukr_avx512_rows(long kc, const float *A, long rsa, const float *Bp,
                                                                float *C, long rsc, long csc, int acc, long mr,
                                                                long nr) {
  tile_avx512(kc, A, rsa, 1, Bp, C, rsc, csc, acc, mr, nr);
}

/* ----------------------------------------------------------------------------- AVX2 + FMA */
#define R6(X) X(0) X(1) X(2) X(3) X(4) X(5)
__attribute__((target("avx2,fma"))) static void ukr_avx2(long kc, const float *Ap, const float *Bp,
                                                          float *C, long rsc, long csc, int acc,
                                                          long mr, long nr) {
#define DECL(i) __m256 c##i##a = _mm256_setzero_ps(), c##i##b = _mm256_setzero_ps();
  R6(DECL)
#undef DECL
  for (long p = 0; p < kc; p++) {
    const __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
#define STEP(i)                                                                                    \
  {                                                                                                \
    const __m256 ai = _mm256_broadcast_ss(Ap + i);                                                 \
    c##i##a = _mm256_fmadd_ps(ai, b0, c##i##a);                                                    \
    c##i##b = _mm256_fmadd_ps(ai, b1, c##i##b);                                                    \
  }
    R6(STEP)
#undef STEP
    Ap += 6;
    Bp += 16;
  }
  float t[6 * 16] __attribute__((aligned(32)));
#define SPILL(i)                                                                                   \
  _mm256_store_ps(t + (i) * 16, c##i##a);                                                          \
  _mm256_store_ps(t + (i) * 16 + 8, c##i##b);
  R6(SPILL)
#undef SPILL
  store_tile(t, 16, C, rsc, csc, acc, mr, nr);
}
#endif

static Arch g_arch = {"portable", 4, 8, ukr_c, 0};

/* The best kernels the CPU runs; QRLHF_NATIVE_ARCH=avx2|portable picks a lower one (tests run
 * every path on one machine that way). */
static void pick_arch(void) {
  const char *want = getenv("QRLHF_NATIVE_ARCH");
  if (want && strcmp(want, "portable") == 0) return;
#ifdef QRLHF_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && !(want && strcmp(want, "avx2") == 0)) {
    g_arch = (Arch){"avx512", 12, 32, ukr_avx512, 2};
    return;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    g_arch = (Arch){"avx2", 6, 16, ukr_avx2, 1};
    return;
  }
#endif
}

/* ----------------------------------------------------------------------------- packing */
/* Ap[panel][p][MR]: rows ic..ic+mc of op(A), columns pc..pc+kc, zero rows past m */
static void pack_a(const Gemm *g, long ic, long pc, long mc, long kc, float *Ap, int MR) {
  for (long ir = 0; ir < mc; ir += MR) {
    float *dst = Ap + ir * kc;
    long rows = mc - ir < MR ? mc - ir : MR;
    if (g->csa == 1 || rows < MR) {
      for (long i = 0; i < MR; i++) {
        if (i >= rows) {
          for (long p = 0; p < kc; p++) dst[p * MR + i] = 0.f;
          continue;
        }
        const float *src = g->a + (ic + ir + i) * g->rsa + pc * g->csa;
        if (g->csa == 1)
          for (long p = 0; p < kc; p++) dst[p * MR + i] = src[p];
        else
          for (long p = 0; p < kc; p++) dst[p * MR + i] = src[p * g->csa];
      }
    } else if (g->rsa == 1) {
      for (long p = 0; p < kc; p++) memcpy(dst + p * MR, g->a + (ic + ir) + (pc + p) * g->csa, MR * sizeof(float));
    } else {
      for (long p = 0; p < kc; p++)
        for (long i = 0; i < MR; i++) dst[p * MR + i] = g->a[(ic + ir + i) * g->rsa + (pc + p) * g->csa];
    }
  }
}

/* Bp[panel][p][NR]: rows pc..pc+kc of op(B), columns jc..jc+nc, zero columns past n */
static void pack_b(const Gemm *g, long pc, long jc, long kc, long nc, float *Bp, int NR) {
  for (long jr = 0; jr < nc; jr += NR) {
    float *dst = Bp + jr * kc;
    long cols = nc - jr < NR ? nc - jr : NR;
    if (g->csb == 1) {
      for (long p = 0; p < kc; p++) {
        const float *src = g->b + (pc + p) * g->rsb + jc + jr;
        memcpy(dst + p * NR, src, cols * sizeof(float));
        for (long j = cols; j < NR; j++) dst[p * NR + j] = 0.f;
      }
    } else {
      for (long j = 0; j < NR; j++) {
        if (j >= cols) {
          for (long p = 0; p < kc; p++) dst[p * NR + j] = 0.f;
          continue;
        }
        const float *src = g->b + (jc + jr + j) * g->csb + pc * g->rsb;
        if (g->rsb == 1)
          for (long p = 0; p < kc; p++) dst[p * NR + j] = src[p];
        else
          for (long p = 0; p < kc; p++) dst[p * NR + j] = src[p * g->rsb];
      }
    }
  }
}

/* ----------------------------------------------------------------------------- serial drivers */
typedef struct {
  float *a, *b;
  float *scratch; /* decoding attention's, grown on demand */
  size_t scratch_cap;
} Buffers;

/* A tall, narrow product (n <= NR, A contiguous along k) on the AVX-512 kernel that reads A in place. */
static int use_narrow_path(const Gemm *g) {
  return g_arch.simd == 2 && g->csa == 1 && g->n <= g_arch.NR && g->m >= 4 * g_arch.MR && g->bp == NULL;
}
static void gemm_narrow(const Gemm *g, Buffers *buf) {
#ifdef QRLHF_X86
  const long KB = 4096; /* a packed B block of KB x 32 floats (512 KB) stays in L2 */
  for (long pc = 0; pc < g->k; pc += KB) {
    const long kc = g->k - pc < KB ? g->k - pc : KB;
    pack_b(g, pc, 0, kc, g->n, buf->b, 32);
    for (long ir = 0; ir < g->m; ir += 12) {
      const long mr = g->m - ir < 12 ? g->m - ir : 12;
      ukr_avx512_rows(kc, g->a + ir * g->rsa + pc, g->rsa, buf->b, g->c + ir * g->rsc, g->rsc, g->csc, pc > 0, mr, g->n);
    }
  }
#else
  (void)g;
  (void)buf;
#endif
}

static void gemm_packed(const Gemm *g, Buffers *buf) {
  if (use_narrow_path(g)) {
    gemm_narrow(g, buf);
    return;
  }
  const int MR = g_arch.MR, NR = g_arch.NR;
  const long MC = (long)MC_PANELS * MR;
  for (long jc = 0; jc < g->n; jc += NC) {
    long nc = g->n - jc < NC ? g->n - jc : NC;
    for (long pc = 0; pc < g->k; pc += KC) {
      long kc = g->k - pc < KC ? g->k - pc : KC;
      const float *bblock = buf->b;
      long bstride = kc; /* floats between micro-panels of bblock, per NR columns */
      if (g->bp) {
        bblock = g->bp + (jc / NR) * g->k * NR + pc * NR;
        bstride = g->k;
      } else {
        pack_b(g, pc, jc, kc, nc, buf->b, NR);
      }
      for (long ic = 0; ic < g->m; ic += MC) {
        long mc = g->m - ic < MC ? g->m - ic : MC;
        pack_a(g, ic, pc, mc, kc, buf->a, MR);
        for (long jr = 0; jr < nc; jr += NR) {
          long nr = nc - jr < NR ? nc - jr : NR;
          for (long ir = 0; ir < mc; ir += MR) {
            long mr = mc - ir < MR ? mc - ir : MR;
            g_arch.ukr(kc, buf->a + ir * kc, bblock + jr * bstride, g->c + (ic + ir) * g->rsc + (jc + jr) * g->csc,
                       g->rsc, g->csc, pc > 0, mr, nr);
          }
        }
      }
    }
  }
}

/* Few rows (m <= 8): stream op(B) once, no packing. Columns [j0, j1). */
#ifdef QRLHF_X86
/* B rows contiguous (csb == 1): chunks of NV vectors of 16 columns, M accumulator rows */
__attribute__((target("avx512f"), always_inline)) static inline void
rows_plain_avx512(const Gemm *g, long j0, long j1, const int M, const int NV) {
  const long k = g->k;
  long j = j0;
  for (; j + 16 * NV <= j1; j += 16 * NV) {
    __m512 acc[8][8];
    for (int i = 0; i < M; i++)
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (long p = 0; p < k; p++) {
      const float *brow = g->b + p * g->rsb + j;
      __m512 bv[8];
      for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(brow + 16 * v);
      for (int i = 0; i < M; i++) {
        const __m512 ai = _mm512_set1_ps(g->a[i * g->rsa + p * g->csa]);
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    for (int i = 0; i < M; i++)
      for (int v = 0; v < NV; v++) _mm512_storeu_ps(g->c + i * g->rsc + j + 16 * v, acc[i][v]);
  }
  for (; j < j1; j += 16) {
    const long w = j1 - j < 16 ? j1 - j : 16;
    const __mmask16 mask = (__mmask16)((1u << w) - 1u);
    __m512 acc[8];
    for (int i = 0; i < M; i++) acc[i] = _mm512_setzero_ps();
    for (long p = 0; p < k; p++) {
      const __m512 bv = _mm512_maskz_loadu_ps(mask, g->b + p * g->rsb + j);
      for (int i = 0; i < M; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(g->a[i * g->rsa + p * g->csa]), bv, acc[i]);
    }
    for (int i = 0; i < M; i++) _mm512_mask_storeu_ps(g->c + i * g->rsc + j, mask, acc[i]);
  }
}

/* B stored transposed (rsb == 1): C[i, j] = dot(op(A) row i, B row j), J columns at a time */
__attribute__((target("avx512f"), always_inline)) static inline void
rows_trans_avx512(const Gemm *g, long j0, long j1, const int M, const int J) {
  const long k = g->k;
  const long kv = k & ~15L;
  const __mmask16 tail = (__mmask16)((1u << (k - kv)) - 1u);
  long j = j0;
  for (; j < j1; j += J) {
    const int jn = j1 - j < J ? (int)(j1 - j) : J;
    __m512 acc[8][4];
    for (int i = 0; i < M; i++)
      for (int q = 0; q < J; q++) acc[i][q] = _mm512_setzero_ps();
    for (long p = 0; p <= kv; p += 16) {
      const __mmask16 mk = p < kv ? (__mmask16)0xFFFF : tail;
      if (mk == 0) break;
      __m512 bv[4];
      for (int q = 0; q < J; q++)
        bv[q] = q < jn ? _mm512_maskz_loadu_ps(mk, g->b + (j + q) * g->csb + p) : _mm512_setzero_ps();
      for (int i = 0; i < M; i++) {
        __m512 av;
        if (g->csa == 1) av = _mm512_maskz_loadu_ps(mk, g->a + i * g->rsa + p);
        else {
          float tmp[16] = {0};
          for (long t = 0; t < 16 && p + t < k; t++) tmp[t] = g->a[i * g->rsa + (p + t) * g->csa];
          av = _mm512_loadu_ps(tmp);
        }
        for (int q = 0; q < J; q++) acc[i][q] = _mm512_fmadd_ps(av, bv[q], acc[i][q]);
      }
    }
    for (int i = 0; i < M; i++)
      for (int q = 0; q < jn; q++) g->c[i * g->rsc + j + q] = _mm512_reduce_add_ps(acc[i][q]);
  }
}

/* Few rows against a packed op(B) (NR = 32): panels [q0, q1), P panels at a time, each read
 * front to back (one contiguous stream per panel). */
__attribute__((target("avx512f"), always_inline)) static inline void
rows_packed_avx512(const Gemm *g, long q0, long q1, const int M, const int P) {
  const long k = g->k;
  for (long q = q0; q < q1; q += P) {
    const int pn = q1 - q < P ? (int)(q1 - q) : P;
    __m512 acc[8][8];
    for (int i = 0; i < M; i++)
      for (int v = 0; v < 2 * P; v++) acc[i][v] = _mm512_setzero_ps();
    const float *base = g->bp + q * k * 32;
    for (long p = 0; p < k; p++) {
      __m512 bv[8];
      for (int u = 0; u < P; u++) {
        const float *src = base + (u < pn ? u : 0) * k * 32 + p * 32;
        bv[2 * u] = _mm512_loadu_ps(src);
        bv[2 * u + 1] = _mm512_loadu_ps(src + 16);
      }
      for (int i = 0; i < M; i++) {
        const __m512 ai = _mm512_set1_ps(g->a[i * g->rsa + p * g->csa]);
        for (int v = 0; v < 2 * P; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
    for (int u = 0; u < pn; u++) {
      const long j = (q + u) * 32;
      for (int h = 0; h < 2; h++) {
        const long jj = j + 16 * h;
        if (jj >= g->n) break;
        const long w = g->n - jj < 16 ? g->n - jj : 16;
        const __mmask16 mask = (__mmask16)((1u << w) - 1u);
        for (int i = 0; i < M; i++) _mm512_mask_storeu_ps(g->c + i * g->rsc + jj, mask, acc[i][2 * u + h]);
      }
    }
  }
}

__attribute__((target("avx512f"))) static void rows_packed_dispatch(const Gemm *g, long q0, long q1) {
  switch (g->m) {
    case 1: rows_packed_avx512(g, q0, q1, 1, 4); break;
    case 2: rows_packed_avx512(g, q0, q1, 2, 4); break;
    case 3: rows_packed_avx512(g, q0, q1, 3, 2); break;
    case 4: rows_packed_avx512(g, q0, q1, 4, 2); break;
    case 5: rows_packed_avx512(g, q0, q1, 5, 1); break;
    case 6: rows_packed_avx512(g, q0, q1, 6, 1); break;
    case 7: rows_packed_avx512(g, q0, q1, 7, 1); break;
    default: rows_packed_avx512(g, q0, q1, 8, 1); break;
  }
}

__attribute__((target("avx512f"))) static void rows_avx512(const Gemm *g, long j0, long j1) {
  if (g->bp) {
    rows_packed_dispatch(g, j0 / 32, (j1 + 31) / 32);
    return;
  }
  if (g->csb == 1) {
    switch (g->m) {
      case 1: rows_plain_avx512(g, j0, j1, 1, 8); break;
      case 2: rows_plain_avx512(g, j0, j1, 2, 8); break;
      case 3: rows_plain_avx512(g, j0, j1, 3, 4); break;
      case 4: rows_plain_avx512(g, j0, j1, 4, 4); break;
      case 5: rows_plain_avx512(g, j0, j1, 5, 2); break;
      case 6: rows_plain_avx512(g, j0, j1, 6, 2); break;
      case 7: rows_plain_avx512(g, j0, j1, 7, 2); break;
      default: rows_plain_avx512(g, j0, j1, 8, 2); break;
    }
  } else {
    switch (g->m) {
      case 1: rows_trans_avx512(g, j0, j1, 1, 4); break;
      case 2: rows_trans_avx512(g, j0, j1, 2, 4); break;
      case 3: rows_trans_avx512(g, j0, j1, 3, 4); break;
      case 4: rows_trans_avx512(g, j0, j1, 4, 4); break;
      case 5: rows_trans_avx512(g, j0, j1, 5, 2); break;
      case 6: rows_trans_avx512(g, j0, j1, 6, 2); break;
      case 7: rows_trans_avx512(g, j0, j1, 7, 2); break;
      default: rows_trans_avx512(g, j0, j1, 8, 2); break;
    }
  }
}
#endif

/* portable few-rows product (also the path for non-AVX-512 machines) */
static void rows_c(const Gemm *g, long j0, long j1) {
  for (long i = 0; i < g->m; i++) {
    float *crow = g->c + i * g->rsc;
    for (long j = j0; j < j1; j++) crow[j] = 0.f;
    for (long p = 0; p < g->k; p++) {
      const float a = g->a[i * g->rsa + p * g->csa];
      if (g->csb == 1) {
        const float *brow = g->b + p * g->rsb;
        for (long j = j0; j < j1; j++) crow[j] += a * brow[j];
      } else {
        for (long j = j0; j < j1; j++) crow[j] += a * g->b[p * g->rsb + j * g->csb];
      }
    }
  }
}

static int use_rows_path(const Gemm *g) {
  return g->m <= 8 && g->csc == 1 && g_arch.simd == 2 && (g->bp != NULL || g->csb == 1 || g->rsb == 1);
}
static void gemm_rows(const Gemm *g, long j0, long j1) {
#ifdef QRLHF_X86
  if (g_arch.simd == 2) {
    rows_avx512(g, j0, j1);
    return;
  }
#endif
  rows_c(g, j0, j1);
}

/* ----------------------------------------------------------------------------- thread pool */
/* A job is a number of chunks that the caller and the workers claim one at a time from a shared
 * counter. The caller never waits for a worker that has not started: when it has claimed the
 * last chunk it closes the job, and a worker arriving later (asleep, or descheduled because
 * another process or Node's own threads hold that core) finds it closed and skips it. The
 * caller only waits for chunks a worker is actually computing. */
enum { MAX_THREADS = 64 };
typedef void (*ChunkFn)(void *ctx, long chunk, int tid);
#define JOB_CLOSED (1u << 30)
#define JOB_COUNT (JOB_CLOSED - 1u)
static int g_threads = 1; /* threads a product may use */
static int g_started = 1; /* workers started + the caller */
static Buffers g_buf[MAX_THREADS];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t g_busy = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint g_gen;
static atomic_int g_sleepers;
/* the current job: its number (high 32 bits), JOB_CLOSED, and the workers inside it (low bits).
 * Only a worker that joined a job (compare-and-swap while it is open) ever decrements the count,
 * and the caller waits for the count to reach 0 before the next job can start, so a decrement
 * always lands on the job it belongs to. */
static _Atomic uint64_t g_state = JOB_CLOSED;
static atomic_long g_next;
static ChunkFn g_chunk_fn;
static void *g_ctx;
static long g_chunks;
static long g_spin_ns = 200000;

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline void cpu_relax(void) {
#ifdef QRLHF_X86
  _mm_pause();
#endif
}

static void claim_chunks(int tid) {
  const ChunkFn fn = g_chunk_fn;
  void *ctx = g_ctx;
  const long n = g_chunks;
  for (;;) {
    const long c = atomic_fetch_add(&g_next, 1);
    if (c >= n) break;
    fn(ctx, c, tid);
  }
}

static void *worker_main(void *arg) {
  const int tid = (int)(intptr_t)arg;
  unsigned seen = atomic_load(&g_gen);
  for (;;) {
    unsigned gen = atomic_load(&g_gen);
    if (gen == seen) {
      const uint64_t until = now_ns() + (uint64_t)g_spin_ns;
      int spins = 0;
      while ((gen = atomic_load_explicit(&g_gen, memory_order_acquire)) == seen) {
        cpu_relax();
        if (++spins % 64 == 0 && now_ns() > until) break;
      }
      if (gen == seen) {
        pthread_mutex_lock(&g_mu);
        atomic_fetch_add(&g_sleepers, 1);
        while ((gen = atomic_load(&g_gen)) == seen) pthread_cond_wait(&g_cv, &g_mu);
        atomic_fetch_sub(&g_sleepers, 1);
        pthread_mutex_unlock(&g_mu);
      }
    }
    seen = gen;
    /* join the current job unless it is closed (it may already be a newer one than the wake-up
     * was for: chunks are claimed atomically, so joining any open job is correct) */
    if (tid >= g_threads) continue; /* a later init() asked for fewer threads */
    uint64_t st = atomic_load(&g_state);
    int joined = 0;
    while (!(st & JOB_CLOSED)) {
      if (atomic_compare_exchange_weak(&g_state, &st, st + 1)) {
        joined = 1;
        break;
      }
    }
    if (!joined) continue;
    claim_chunks(tid);
    atomic_fetch_sub(&g_state, 1);
  }
  return NULL;
}

static int alloc_buffers(Buffers *b) {
  const size_t asz = (size_t)MC_PANELS * 12 * KC * sizeof(float);
  const size_t bsz = (size_t)KC * (NC + 32) * sizeof(float);
  if (!b->a) b->a = aligned_alloc(64, (asz + 63) & ~(size_t)63);
  if (!b->b) b->b = aligned_alloc(64, (bsz + 63) & ~(size_t)63);
  return b->a && b->b;
}
/* packing buffers of pool worker `tid` (>= 1) */
static int buffers_for(int tid) { return alloc_buffers(&g_buf[tid]); }

/* The calling JS thread's own packing buffers (a pthread key: freed when that thread ends). Callers
 * are thread 0 of their job; with several JS threads (worker_threads) each has its own. */
static pthread_key_t g_caller_key;
static void free_caller_buffers(void *p) {
  Buffers *b = (Buffers *)p;
  free(b->a);
  free(b->b);
  free(b->scratch);
  free(b);
}
static Buffers *caller_buffers(void) {
  Buffers *b = (Buffers *)pthread_getspecific(g_caller_key);
  if (b) return b;
  b = calloc(1, sizeof(Buffers));
  if (!b || !alloc_buffers(b)) {
    fprintf(stderr, "qrlhf native: out of memory for packing buffers\n");
    abort();
  }
  pthread_setspecific(g_caller_key, b);
  return b;
}
static Buffers *buffers(int tid) { return tid == 0 ? caller_buffers() : &g_buf[tid]; }
/* at least n floats of thread tid's own scratch memory (NULL when out of memory) */
static float *scratch_for(int tid, size_t n) {
  Buffers *b = buffers(tid);
  if (b->scratch_cap < n) {
    free(b->scratch);
    b->scratch = malloc(n * sizeof(float));
    b->scratch_cap = b->scratch ? n : 0;
  }
  return b->scratch;
}

/* Runs chunks 0..n-1 of fn, on the pool when it has more than one thread and is free (another
 * JS thread may be using it: then on the calling thread alone). */
static void run_chunks(ChunkFn fn, void *ctx, long n, int parallel) {
  if (!parallel || n <= 1 || g_threads <= 1 || pthread_mutex_trylock(&g_busy) != 0) {
    for (long c = 0; c < n; c++) fn(ctx, c, 0);
    return;
  }
  /* no worker is inside a job here (the previous call waited for them) */
  g_chunk_fn = fn;
  g_ctx = ctx;
  g_chunks = n;
  atomic_store(&g_next, 0);
  /* open the next job: a new number, count 0 */
  atomic_store(&g_state, ((atomic_load(&g_state) >> 32) + 1) << 32);
  atomic_fetch_add(&g_gen, 1);
  if (atomic_load(&g_sleepers) > 0) {
    pthread_mutex_lock(&g_mu);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
  }
  claim_chunks(0);
  atomic_fetch_or(&g_state, (uint64_t)JOB_CLOSED);
  while ((atomic_load(&g_state) & JOB_COUNT) != 0) cpu_relax();
  pthread_mutex_unlock(&g_busy);
}

/* ----------------------------------------------------------------------------- parallel jobs */
typedef struct {
  Gemm g;          /* for a single product */
  int split;       /* 0: rows of C, 1: columns of C */
  long units;      /* number of MR- (rows) or NR- (cols) blocks */
  long per;        /* units per chunk */
  int rows_path;
  long unit_cols;
  /* batch */
  float *heap;
  const uint32_t *offs;
  long batch;
  long m, n, k;
  int ta, tb;
  const float *bp;
} Job;

static Gemm make_gemm(float *heap, uint32_t ao, uint32_t bo, uint32_t co, long m, long n, long k, int ta, int tb) {
  Gemm g;
  g.a = heap + ao;
  g.rsa = ta ? 1 : k;
  g.csa = ta ? m : 1;
  g.b = heap + bo;
  g.rsb = tb ? 1 : n;
  g.csb = tb ? k : 1;
  g.c = heap + co;
  g.rsc = n;
  g.csc = 1;
  g.m = m;
  g.n = n;
  g.k = k;
  g.bp = NULL;
  return g;
}

/* C^T = B^T A^T: same product, operands swapped, C written through its strides */
static Gemm swapped(const Gemm *g) {
  Gemm s;
  s.a = g->b; s.rsa = g->csb; s.csa = g->rsb;
  s.b = g->a; s.rsb = g->csa; s.csb = g->rsa;
  s.c = g->c; s.rsc = g->csc; s.csc = g->rsc;
  s.m = g->n; s.n = g->m; s.k = g->k;
  s.bp = NULL;
  return s;
}

static long ceil_to(long x, long q) { return (x + q - 1) / q * q; }

/* The orientation with less padded work (ties: as given). */
static Gemm oriented(const Gemm *g) {
  if (g->bp || use_narrow_path(g)) return *g;
  const long MR = g_arch.MR, NR = g_arch.NR;
  const double direct = (double)ceil_to(g->m, MR) * (double)ceil_to(g->n, NR);
  const double swap = (double)ceil_to(g->n, MR) * (double)ceil_to(g->m, NR);
  return swap < 0.85 * direct ? swapped(g) : *g;
}

static void zero_c(const Gemm *g) {
  for (long i = 0; i < g->m; i++)
    for (long j = 0; j < g->n; j++) g->c[i * g->rsc + j * g->csc] = 0.f;
}

static void serial(const Gemm *g, int tid) {
  if (g->k == 0) {
    zero_c(g);
    return;
  }
  if (use_rows_path(g)) {
    gemm_rows(g, 0, g->n);
    return;
  }
  gemm_packed(g, buffers(tid));
}

static void single_chunk(void *ctx, long chunk, int tid) {
  Job *J = (Job *)ctx;
  const long u0 = chunk * J->per, u1 = u0 + J->per < J->units ? u0 + J->per : J->units;
  if (u0 >= u1) return;
  Gemm s = J->g;
  if (J->rows_path) {
    const long w = J->unit_cols;
    const long j0 = u0 * w, j1 = u1 * w < s.n ? u1 * w : s.n;
    gemm_rows(&s, j0, j1);
    return;
  }
  if (J->split == 0) {
    const long MR = g_arch.MR;
    const long i0 = u0 * MR, i1 = u1 * MR < s.m ? u1 * MR : s.m;
    s.a += i0 * s.rsa;
    s.c += i0 * s.rsc;
    s.m = i1 - i0;
  } else {
    const long NR = g_arch.NR;
    const long j0 = u0 * NR, j1 = u1 * NR < s.n ? u1 * NR : s.n;
    s.b += j0 * s.csb;
    if (s.bp) s.bp += (j0 / NR) * s.k * NR;
    s.c += j0 * s.csc;
    s.n = j1 - j0;
  }
  gemm_packed(&s, buffers(tid));
}

static void batch_chunk(void *ctx, long e, int tid) {
  Job *J = (Job *)ctx;
  Gemm g = make_gemm(J->heap, J->offs[3 * e], J->offs[3 * e + 1], J->offs[3 * e + 2], J->m, J->n, J->k, J->ta, J->tb);
  g.bp = J->bp;
  if (!use_rows_path(&g)) g = oriented(&g);
  serial(&g, tid);
}

/* below this many FLOPs a product runs on the calling thread */
static double g_min_parallel_flops = 4e5;

static void gemm_one(Gemm g) {
  if (g.k == 0 || g.m == 0 || g.n == 0) {
    if (g.k == 0) zero_c(&g);
    return;
  }
  const double flops = 2.0 * (double)g.m * (double)g.n * (double)g.k;
  Job J;
  memset(&J, 0, sizeof J);
  if (use_rows_path(&g)) {
    J.g = g;
    J.rows_path = 1;
    J.units = g.bp ? (g.n + 31) / 32 : (g.n + 15) / 16;
    J.unit_cols = g.bp ? 32 : 16;
  } else {
    g = oriented(&g);
    J.g = g;
    const long mu = (g.m + g_arch.MR - 1) / g_arch.MR, nu = (g.n + g_arch.NR - 1) / g_arch.NR;
    /* rows when there are enough row panels for every thread, else columns */
    if (mu >= 2 * g_threads || mu >= nu) {
      J.split = 0;
      J.units = mu;
    } else {
      J.split = 1;
      J.units = nu;
    }
  }
  if (flops < g_min_parallel_flops || g_threads <= 1) {
    J.per = J.units;
    single_chunk(&J, 0, 0);
    return;
  }
  /* chunks: two per thread for packed products (each chunk packs its share of the other
   * operand), finer for the streaming few-rows path */
  long chunks = J.rows_path ? 4 * g_threads : 2 * g_threads;
  if (chunks > J.units) chunks = J.units;
  J.per = (J.units + chunks - 1) / chunks;
  run_chunks(single_chunk, &J, (J.units + J.per - 1) / J.per, 1);
}

/* ----------------------------------------------------------------------------- N-API */
#define NAPI_OK(call)                                                                              \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      napi_throw_error(env, NULL, "qrlhf native: bad arguments");                   \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

/* off + a·b·c ≤ len, without overflow (the entry points check every operand with it) */
static int within(size_t off, size_t a, size_t b, size_t c, size_t len) {
  size_t ab, abc, end;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) || __builtin_add_overflow(off, abc, &end))
    return 0;
  return end <= len;
}
/* rows of `width` floats at off, off + stride, ...: the last one ends within len */
static int rows_within(size_t off, size_t rows, size_t stride, size_t width, size_t len) {
  size_t span, end;
  if (rows == 0 || width == 0) return 1;
  if (__builtin_mul_overflow(rows - 1, stride, &span) || __builtin_add_overflow(off, span, &end) ||
      __builtin_add_overflow(end, width, &end))
    return 0;
  return end <= len;
}
/* no dimension may exceed the floats a wasm heap can hold */
#define QRLHF_MAX_DIM (1L << 30)

static int get_long(napi_env env, napi_value v, long *out) {
  int64_t x;
  if (napi_get_value_int64(env, v, &x) != napi_ok) return 0;
  *out = (long)x;
  return 1;
}

static long packed_size(long k, long n) { return (n + g_arch.NR - 1) / g_arch.NR * g_arch.NR * k; }

/* gemm(heap: Float32Array, m, n, k, transA, transB, offsets: Uint32Array [3 * batch], packedB?)
 * packedB: float offset of op(B) packed by packB() (then the B offsets are not read), or -1 */
static napi_value js_gemm(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 7) {
    napi_throw_error(env, NULL, "qrlhf native gemm: expected 7 arguments");
    return NULL;
  }
  napi_typedarray_type type;
  size_t hlen, olen;
  void *hdata, *odata;
  NAPI_OK(napi_get_typedarray_info(env, argv[0], &type, &hlen, &hdata, NULL, NULL));
  if (type != napi_float32_array) {
    napi_throw_type_error(env, NULL, "qrlhf native gemm: heap must be a Float32Array");
    return NULL;
  }
  long m, n, k, ta, tb;
  if (!get_long(env, argv[1], &m) || !get_long(env, argv[2], &n) || !get_long(env, argv[3], &k) ||
      !get_long(env, argv[4], &ta) || !get_long(env, argv[5], &tb) || m < 0 || n < 0 || k < 0 ||
      m > QRLHF_MAX_DIM || n > QRLHF_MAX_DIM || k > QRLHF_MAX_DIM) {
    napi_throw_type_error(env, NULL, "qrlhf native gemm: m, n, k must be integers in [0, 2^30], transA, transB integers");
    return NULL;
  }
  NAPI_OK(napi_get_typedarray_info(env, argv[6], &type, &olen, &odata, NULL, NULL));
  if (type != napi_uint32_array || olen % 3 != 0) {
    napi_throw_type_error(env, NULL, "qrlhf native gemm: offsets must be a Uint32Array of 3 * batch");
    return NULL;
  }
  const uint32_t *offs = (const uint32_t *)odata;
  const long batch = (long)(olen / 3);
  long packed = -1;
  if (argc >= 8 && !get_long(env, argv[7], &packed)) packed = -1;
  if (packed >= 0 && !within((size_t)packed, (size_t)packed_size(k, n), 1, 1, hlen)) {
    napi_throw_range_error(env, NULL, "qrlhf native gemm: the packed operand lies outside the heap");
    return NULL;
  }
  /* every operand must lie inside the heap */
  for (long e = 0; e < batch; e++) {
    if (!within(offs[3 * e], m, k, 1, hlen) || (packed < 0 && !within(offs[3 * e + 1], k, n, 1, hlen)) ||
        !within(offs[3 * e + 2], m, n, 1, hlen)) {
      napi_throw_range_error(env, NULL, "qrlhf native gemm: an operand lies outside the heap");
      return NULL;
    }
  }
  float *heap = (float *)hdata;
  const float *bp = packed >= 0 ? heap + packed : NULL;
  if (batch == 1) {
    Gemm g = make_gemm(heap, offs[0], offs[1], offs[2], m, n, k, (int)ta, (int)tb);
    g.bp = bp;
    gemm_one(g);
  } else if (batch > 1) {
    const double flops = 2.0 * (double)m * (double)n * (double)k;
    if (batch >= g_threads && flops * (double)batch >= g_min_parallel_flops && flops < 2e7) {
      Job J;
      memset(&J, 0, sizeof J);
      J.heap = heap;
      J.offs = offs;
      J.batch = batch;
      J.m = m;
      J.n = n;
      J.k = k;
      J.ta = (int)ta;
      J.tb = (int)tb;
      J.bp = bp;
      run_chunks(batch_chunk, &J, batch, 1);
    } else {
      for (long e = 0; e < batch; e++) {
        Gemm g = make_gemm(heap, offs[3 * e], offs[3 * e + 1], offs[3 * e + 2], m, n, k, (int)ta, (int)tb);
        g.bp = bp;
        gemm_one(g);
      }
    }
  }
  return NULL;
}

/* packB(heap, k, n, transB, bOffset, dstOffset): op(B) [k, n] into [ceil(n / NR)][k][NR] at dst;
 * returns the number of floats written (packedSize(k, n)) */
static napi_value js_pack_b(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_typedarray_type type;
  size_t hlen;
  void *hdata;
  long k, n, tb, bo, dst;
  if (argc < 6 || napi_get_typedarray_info(env, argv[0], &type, &hlen, &hdata, NULL, NULL) != napi_ok ||
      type != napi_float32_array || !get_long(env, argv[1], &k) || !get_long(env, argv[2], &n) ||
      !get_long(env, argv[3], &tb) || !get_long(env, argv[4], &bo) || !get_long(env, argv[5], &dst) || k < 0 ||
      n < 0 || bo < 0 || dst < 0 || k > QRLHF_MAX_DIM || n > QRLHF_MAX_DIM) {
    napi_throw_type_error(env, NULL, "qrlhf native packB: expected (Float32Array, k, n, transB, offset, dst)");
    return NULL;
  }
  const long size = packed_size(k, n);
  if (!within((size_t)bo, k, n, 1, hlen) || !within((size_t)dst, (size_t)size, 1, 1, hlen)) {
    napi_throw_range_error(env, NULL, "qrlhf native packB: an operand lies outside the heap");
    return NULL;
  }
  float *heap = (float *)hdata;
  Gemm g = make_gemm(heap, 0, (uint32_t)bo, 0, 1, n, k, 0, (int)tb);
  if (k > 0 && n > 0) pack_b(&g, 0, 0, k, n, heap + dst, g_arch.NR);
  napi_value v;
  NAPI_OK(napi_create_int64(env, size, &v));
  return v;
}

/* packedSize(k, n): floats packB() writes */
static napi_value js_packed_size(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  long k = 0, n = 0;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_long(env, argv[0], &k) || !get_long(env, argv[1], &n) || k < 0 || n < 0) {
    napi_throw_type_error(env, NULL, "qrlhf native packedSize: expected (k, n)");
    return NULL;
  }
  napi_value v;
  NAPI_OK(napi_create_int64(env, packed_size(k, n), &v));
  return v;
}

/* ----------------------------------------------------------------------------- block copies */
/* copyBlocks(heap, spec: Uint32Array [6 * count]): for every block (rows, src, srcStride, dst,
 * dstStride, width): row r of `width` floats from src + r * srcStride to dst + r * dstStride.
 * (Split and concatenation along any axis of 4-byte data are this with outer rows.) */
typedef struct {
  float *heap;
  const uint32_t *spec;
  long per;    /* rows per chunk */
  long *first; /* first chunk of every block (count + 1) */
} CopyJob;

static void copy_chunk(void *ctx, long chunk, int tid) {
  (void)tid;
  CopyJob *J = (CopyJob *)ctx;
  long b = 0;
  while (J->first[b + 1] <= chunk) b++;
  const uint32_t *s = J->spec + 6 * b;
  const long rows = s[0], width = s[5];
  const long r0 = (chunk - J->first[b]) * J->per, r1 = r0 + J->per < rows ? r0 + J->per : rows;
  const float *src = J->heap + s[1];
  float *dst = J->heap + s[3];
  const long ss = s[2], ds = s[4];
  if (ss == width && ds == width) {
    memcpy(dst + r0 * width, src + r0 * width, (size_t)(r1 - r0) * (size_t)width * sizeof(float));
    return;
  }
  for (long r = r0; r < r1; r++) memcpy(dst + r * ds, src + r * ss, (size_t)width * sizeof(float));
}

static napi_value js_copy_blocks(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_typedarray_type type;
  size_t hlen, slen;
  void *hdata, *sdata;
  if (argc < 2 || napi_get_typedarray_info(env, argv[0], &type, &hlen, &hdata, NULL, NULL) != napi_ok ||
      type != napi_float32_array || napi_get_typedarray_info(env, argv[1], &type, &slen, &sdata, NULL, NULL) != napi_ok ||
      type != napi_uint32_array || slen % 6 != 0) {
    napi_throw_type_error(env, NULL, "qrlhf native copyBlocks: expected (Float32Array, Uint32Array [6 * blocks])");
    return NULL;
  }
  const uint32_t *spec = (const uint32_t *)sdata;
  const long count = (long)(slen / 6);
  double bytes = 0;
  long rows_total = 0;
  for (long b = 0; b < count; b++) {
    const uint32_t *s = spec + 6 * b;
    const size_t rows = s[0], width = s[5];
    if (rows == 0 || width == 0) continue;
    if (!rows_within(s[1], rows, s[2], width, hlen) || !rows_within(s[3], rows, s[4], width, hlen)) {
      napi_throw_range_error(env, NULL, "qrlhf native copyBlocks: a block lies outside the heap");
      return NULL;
    }
    bytes += (double)rows * (double)width * 4.0;
    rows_total += (long)rows;
  }
  if (count == 0 || rows_total == 0) return NULL;
  long first_stack[65];
  long *first = count < 64 ? first_stack : malloc(sizeof(long) * (size_t)(count + 1));
  if (!first) {
    napi_throw_error(env, NULL, "qrlhf native copyBlocks: out of memory");
    return NULL;
  }
  /* Chunks of about 256 KB of the narrowest block (one rows-per-chunk for all blocks keeps the
   * chunk -> block lookup simple); copies under 1 MB run on the calling thread. */
  const int parallel = bytes >= 1 << 20;
  long per = 0;
  for (long b = 0; b < count; b++) {
    const uint32_t *s = spec + 6 * b;
    if (s[0] == 0 || s[5] == 0) continue;
    long p = parallel ? (long)((1 << 16) / s[5]) : (long)s[0];
    if (p < 1) p = 1;
    if (p > (long)s[0]) p = (long)s[0];
    if (per == 0 || p < per) per = p;
  }
  CopyJob J = {(float *)hdata, spec, per, first};
  long chunks = 0;
  for (long b = 0; b < count; b++) {
    const uint32_t *s = spec + 6 * b;
    first[b] = chunks;
    if (s[0] == 0 || s[5] == 0) continue;
    chunks += ((long)s[0] + per - 1) / per;
  }
  first[count] = chunks;
  run_chunks(copy_chunk, &J, chunks, parallel);
  if (first != first_stack) free(first);
  return NULL;
}

/* ----------------------------------------------------------------------------- decoding attention */
/* One decoding step of grouped-query attention for every row b and key/value head kh, on the
 * model's layout: qkv [B, Hkv, g + 2, hd] (g query heads, then the key, then the value of each kv
 * head; not yet rotated), rotary tables cos / sin [B, Hkv (g + 2) hd] (rotate-half with the sign
 * folded into sin, queries pre-scaled by 1/sqrt(hd), values with cos 1 and sin 0), the caches
 * K, V [B, Hkv, maxLen, hd] holding positions < past, and an additive bias [B, past + 1] (or
 * none). The step's rotated key and its value are written into the caches at position `past`;
 * out [B, Hkv, g, hd] = softmax(q·K^T + bias) · V over positions 0..past. */
typedef struct {
  float *heap;
  long B, Hkv, g, hd, maxLen, past;
  uint32_t qkv, cos, sin, bias, k, v, out;
  int has_bias;
  long scratch_len; /* floats of scratch per pair: (past + 1) + g * hd */
} AttnJob;

#if defined(__linux__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QRLHF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QRLHF_CLONES
#endif

/* e^x for x <= 0 (softmax arguments), within 3 ulp (measured over 1.6e8 inputs); 0 below -87 */
static inline float exp_neg(float x) {
  const float l2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  const float xc = x < -87.0f ? -87.0f : x;
  const float n = (float)(int)(xc * l2e - 0.5f); /* round to nearest for negative values */
  const float r = xc - n * ln2_hi - n * ln2_lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union { int32_t i; float f; } sc;
  sc.i = ((int32_t)n + 127) << 23;
  return x < -87.0f ? 0.0f : p * sc.f;
}

QRLHF_CLONES static void attn_pair(const AttnJob *J, long b, long kh, float *scratch) {
  const long g = J->g, hd = J->hd, total = J->past + 1, half = hd / 2;
  const long width = J->Hkv * (g + 2) * hd;
  const float *x = J->heap + J->qkv + b * width + kh * (g + 2) * hd;
  const float *cs = J->heap + J->cos + b * width + kh * (g + 2) * hd;
  const float *sn = J->heap + J->sin + b * width + kh * (g + 2) * hd;
  float *K = J->heap + J->k + (b * J->Hkv + kh) * J->maxLen * hd;
  float *V = J->heap + J->v + (b * J->Hkv + kh) * J->maxLen * hd;
  float *q = scratch + total; /* g * hd rotated queries */
  float *sc = scratch;
  /* rotate the queries and the key (rotate-half: partner of element e is e +- hd/2) */
  for (long s = 0; s <= g; s++) {
    const float *xs = x + s * hd, *c = cs + s * hd, *si = sn + s * hd;
    float *dst = s < g ? q + s * hd : K + J->past * hd;
    for (long e = 0; e < half; e++) dst[e] = xs[e] * c[e] + xs[e + half] * si[e];
    for (long e = half; e < hd; e++) dst[e] = xs[e] * c[e] + xs[e - half] * si[e];
  }
  memcpy(V + J->past * hd, x + (g + 1) * hd, (size_t)hd * sizeof(float));
  const float *bias = J->has_bias ? J->heap + J->bias + b * total : NULL;
  for (long j = 0; j < g; j++) {
    const float *qj = q + j * hd;
    float mx = -INFINITY;
    for (long t = 0; t < total; t++) {
      const float *kt = K + t * hd;
      float lanes[16] = {0};
      long e = 0;
      for (; e + 16 <= hd; e += 16)
        for (int l = 0; l < 16; l++) lanes[l] += qj[e + l] * kt[e + l];
      float d = 0.f;
      for (; e < hd; e++) d += qj[e] * kt[e];
      for (int l = 0; l < 16; l++) d += lanes[l];
      if (bias) d += bias[t];
      sc[t] = d;
      mx = d > mx ? d : mx;
    }
    float sum = 0.f;
    for (long t = 0; t < total; t++) {
      sc[t] = exp_neg(sc[t] - mx);
      sum += sc[t];
    }
    const float inv = 1.0f / sum;
    float *o = J->heap + J->out + ((b * J->Hkv + kh) * g + j) * hd;
    for (long e = 0; e < hd; e++) o[e] = 0.f;
    for (long t = 0; t < total; t++) {
      const float p = sc[t] * inv;
      const float *vt = V + t * hd;
      for (long e = 0; e < hd; e++) o[e] += p * vt[e];
    }
  }
}

static void attn_chunk(void *ctx, long chunk, int tid) {
  AttnJob *J = (AttnJob *)ctx;
  float *scratch = scratch_for(tid, (size_t)J->scratch_len);
  if (!scratch) {
    fprintf(stderr, "qrlhf native: out of memory for attention scratch\n");
    abort();
  }
  attn_pair(J, chunk / J->Hkv, chunk % J->Hkv, scratch);
}

/* decodeAttention(heap, dims [B, Hkv, g, hd, maxLen, past], offsets [qkv, cos, sin, bias, k, v, out])
 * (bias offset 0xFFFFFFFF: no bias) */
static napi_value js_decode_attention(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_typedarray_type type;
  size_t hlen, dlen, olen;
  void *hdata, *ddata, *odata;
  if (argc < 3 || napi_get_typedarray_info(env, argv[0], &type, &hlen, &hdata, NULL, NULL) != napi_ok ||
      type != napi_float32_array || napi_get_typedarray_info(env, argv[1], &type, &dlen, &ddata, NULL, NULL) != napi_ok ||
      type != napi_int32_array || dlen != 6 ||
      napi_get_typedarray_info(env, argv[2], &type, &olen, &odata, NULL, NULL) != napi_ok || type != napi_uint32_array ||
      olen != 7) {
    napi_throw_type_error(env, NULL, "qrlhf native decodeAttention: expected (Float32Array, Int32Array [6], Uint32Array [7])");
    return NULL;
  }
  const int32_t *d = (const int32_t *)ddata;
  const uint32_t *o = (const uint32_t *)odata;
  AttnJob J;
  memset(&J, 0, sizeof J);
  J.heap = (float *)hdata;
  J.B = d[0]; J.Hkv = d[1]; J.g = d[2]; J.hd = d[3]; J.maxLen = d[4]; J.past = d[5];
  J.qkv = o[0]; J.cos = o[1]; J.sin = o[2]; J.bias = o[3]; J.k = o[4]; J.v = o[5]; J.out = o[6];
  J.has_bias = o[3] != 0xFFFFFFFFu;
  if (J.B < 1 || J.Hkv < 1 || J.g < 1 || J.hd < 2 || J.hd % 2 || J.maxLen < 1 || J.past < 0 || J.past >= J.maxLen) {
    napi_throw_range_error(env, NULL, "qrlhf native decodeAttention: bad dimensions");
    return NULL;
  }
  const size_t total = (size_t)J.past + 1;
  size_t width = 0, bhkv = 0, out_len = 0;
  /* every dimension is a positive int32, so these products of two or three fit in 64 bits */
  width = (size_t)J.Hkv * (size_t)(J.g + 2) * (size_t)J.hd;
  bhkv = (size_t)J.B * (size_t)J.Hkv;
  out_len = (size_t)J.g * (size_t)J.hd;
  if (!within(J.qkv, J.B, width, 1, hlen) || !within(J.cos, J.B, width, 1, hlen) || !within(J.sin, J.B, width, 1, hlen) ||
      (J.has_bias && !within(J.bias, J.B, total, 1, hlen)) || !within(J.k, bhkv, (size_t)J.maxLen, (size_t)J.hd, hlen) ||
      !within(J.v, bhkv, (size_t)J.maxLen, (size_t)J.hd, hlen) || !within(J.out, bhkv, out_len, 1, hlen)) {
    napi_throw_range_error(env, NULL, "qrlhf native decodeAttention: an operand lies outside the heap");
    return NULL;
  }
  J.scratch_len = (long)total + J.g * J.hd + 16;
  const double work = 4.0 * (double)J.B * (double)J.Hkv * (double)J.g * (double)total * (double)J.hd;
  run_chunks(attn_chunk, &J, J.B * J.Hkv, work >= 2e5);
  return NULL;
}

static int start_threads(int want) {
  if (want < 1) want = 1;
  if (want > MAX_THREADS) want = MAX_THREADS;
  for (int t = 1; t < want; t++)
    if (!buffers_for(t)) {
      want = t > 0 ? t : 1;
      break;
    }
  for (int t = g_started; t < want; t++) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, worker_main, (void *)(intptr_t)t) != 0) {
      pthread_attr_destroy(&attr);
      break;
    }
    pthread_attr_destroy(&attr);
    g_started = t + 1;
  }
  g_threads = want < g_started ? want : g_started;
  return g_threads;
}

/* init(threads: number, spinMicroseconds: number) -> {arch, threads, mr, nr} ; threads only grow */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  long want = 1, spin = -1;
  if (argc >= 1 && !get_long(env, argv[0], &want)) want = 1;
  if (argc >= 2 && get_long(env, argv[1], &spin) && spin >= 0) g_spin_ns = spin * 1000;
  pthread_mutex_lock(&g_busy);
  int got = start_threads((int)want);
  pthread_mutex_unlock(&g_busy);
  napi_value out, v;
  NAPI_OK(napi_create_object(env, &out));
  NAPI_OK(napi_create_string_utf8(env, g_arch.name, NAPI_AUTO_LENGTH, &v));
  NAPI_OK(napi_set_named_property(env, out, "arch", v));
  NAPI_OK(napi_create_int32(env, got, &v));
  NAPI_OK(napi_set_named_property(env, out, "threads", v));
  NAPI_OK(napi_create_int32(env, g_arch.MR, &v));
  NAPI_OK(napi_set_named_property(env, out, "mr", v));
  NAPI_OK(napi_create_int32(env, g_arch.NR, &v));
  NAPI_OK(napi_set_named_property(env, out, "nr", v));
  return out;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void once_init(void) {
  pick_arch();
  pthread_key_create(&g_caller_key, free_caller_buffers);
}

NAPI_MODULE_INIT() {
  pthread_once(&g_once, once_init);
  napi_value fn;
  napi_create_function(env, "gemm", NAPI_AUTO_LENGTH, js_gemm, NULL, &fn);
  napi_set_named_property(env, exports, "gemm", fn);
  napi_create_function(env, "init", NAPI_AUTO_LENGTH, js_init, NULL, &fn);
  napi_set_named_property(env, exports, "init", fn);
  napi_create_function(env, "decodeAttention", NAPI_AUTO_LENGTH, js_decode_attention, NULL, &fn);
  napi_set_named_property(env, exports, "decodeAttention", fn);
  napi_create_function(env, "copyBlocks", NAPI_AUTO_LENGTH, js_copy_blocks, NULL, &fn);
  napi_set_named_property(env, exports, "copyBlocks", fn);
  napi_create_function(env, "packB", NAPI_AUTO_LENGTH, js_pack_b, NULL, &fn);
  napi_set_named_property(env, exports, "packB", fn);
  napi_create_function(env, "packedSize", NAPI_AUTO_LENGTH, js_packed_size, NULL, &fn);
  napi_set_named_property(env, exports, "packedSize", fn);
  return exports;
}
