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
 *  - few output rows (m <= 8, decoding): no packing, the right operand streamed once from memory;
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
#include <stdlib.h>
#include <string.h>
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

/* ----------------------------------------------------------------------------- portable */
static void ukr_c(long kc, const float *Ap, const float *Bp, float *C, long rsc, long csc, int acc,
                  long mr, long nr) {
  float t[4][8] = {{0}};
  for (long p = 0; p < kc; p++) {
    for (int i = 0; i < 4; i++) {
      float a = Ap[p * 4 + i];
      for (int j = 0; j < 8; j++) t[i][j] += a * Bp[p * 8 + j];
    }
  }
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) {
      float *d = C + i * rsc + j * csc;
      *d = acc ? *d + t[i][j] : t[i][j];
    }
}

#ifdef QRLHF_X86
/* ----------------------------------------------------------------------------- AVX-512 */
#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

__attribute__((target("avx512f"))) static void ukr_avx512(long kc, const float *Ap, const float *Bp,
                                                           float *C, long rsc, long csc, int acc,
                                                           long mr, long nr) {
#define DECL(i) __m512 c##i##a = _mm512_setzero_ps(), c##i##b = _mm512_setzero_ps();
  R12(DECL)
#undef DECL
  for (long p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
#define STEP(i)                                                                                    \
  {                                                                                                \
    const __m512 ai = _mm512_set1_ps(Ap[i]);                                                       \
    c##i##a = _mm512_fmadd_ps(ai, b0, c##i##a);                                                    \
    c##i##b = _mm512_fmadd_ps(ai, b1, c##i##b);                                                    \
  }
    R12(STEP)
#undef STEP
    Ap += 12;
    Bp += 32;
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
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) {
      float *d = C + i * rsc + j * csc;
      *d = acc ? *d + t[i * 32 + j] : t[i * 32 + j];
    }
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
    const __m256 b0 = _mm256_load_ps(Bp), b1 = _mm256_load_ps(Bp + 8);
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
  for (long i = 0; i < mr; i++)
    for (long j = 0; j < nr; j++) {
      float *d = C + i * rsc + j * csc;
      *d = acc ? *d + t[i * 16 + j] : t[i * 16 + j];
    }
}
#endif

static Arch g_arch = {"portable", 4, 8, ukr_c, 0};

static void pick_arch(void) {
#ifdef QRLHF_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
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
} Buffers;

static void gemm_packed(const Gemm *g, Buffers *buf) {
  const int MR = g_arch.MR, NR = g_arch.NR;
  const long MC = (long)MC_PANELS * MR;
  for (long jc = 0; jc < g->n; jc += NC) {
    long nc = g->n - jc < NC ? g->n - jc : NC;
    for (long pc = 0; pc < g->k; pc += KC) {
      long kc = g->k - pc < KC ? g->k - pc : KC;
      pack_b(g, pc, jc, kc, nc, buf->b, NR);
      for (long ic = 0; ic < g->m; ic += MC) {
        long mc = g->m - ic < MC ? g->m - ic : MC;
        pack_a(g, ic, pc, mc, kc, buf->a, MR);
        for (long jr = 0; jr < nc; jr += NR) {
          long nr = nc - jr < NR ? nc - jr : NR;
          for (long ir = 0; ir < mc; ir += MR) {
            long mr = mc - ir < MR ? mc - ir : MR;
            g_arch.ukr(kc, buf->a + ir * kc, buf->b + jr * kc, g->c + (ic + ir) * g->rsc + (jc + jr) * g->csc,
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

__attribute__((target("avx512f"))) static void rows_avx512(const Gemm *g, long j0, long j1) {
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
  return g->m <= 8 && g->csc == 1 && g_arch.simd == 2 && (g->csb == 1 || g->rsb == 1);
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
enum { MAX_THREADS = 64 };
typedef void (*JobFn)(void *ctx, int tid, int nthreads);
static int g_threads = 1; /* threads a product may use */
static int g_started = 1; /* workers started + the caller */
static Buffers g_buf[MAX_THREADS];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t g_busy = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint g_gen;
static atomic_int g_remaining;
static JobFn g_job;
static void *g_ctx;
static int g_pool_threads = 1; /* threads a job is split over (workers + caller) */
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

static void *worker_main(void *arg) {
  const int tid = (int)(intptr_t)arg;
  unsigned seen = atomic_load(&g_gen);
  for (;;) {
    unsigned gen = atomic_load_explicit(&g_gen, memory_order_acquire);
    if (gen == seen) {
      const uint64_t until = now_ns() + (uint64_t)g_spin_ns;
      int spins = 0;
      while ((gen = atomic_load_explicit(&g_gen, memory_order_acquire)) == seen) {
        cpu_relax();
        if (++spins % 64 == 0 && now_ns() > until) break;
      }
      if (gen == seen) {
        pthread_mutex_lock(&g_mu);
        while ((gen = atomic_load(&g_gen)) == seen) pthread_cond_wait(&g_cv, &g_mu);
        pthread_mutex_unlock(&g_mu);
      }
    }
    seen = gen;
    g_job(g_ctx, tid, g_pool_threads);
    atomic_fetch_sub_explicit(&g_remaining, 1, memory_order_acq_rel);
  }
  return NULL;
}

static int buffers_for(int tid) {
  if (g_buf[tid].a) return 1;
  const size_t asz = (size_t)MC_PANELS * 12 * KC * sizeof(float);
  const size_t bsz = (size_t)KC * (NC + 32) * sizeof(float);
  g_buf[tid].a = aligned_alloc(64, (asz + 63) & ~(size_t)63);
  g_buf[tid].b = aligned_alloc(64, (bsz + 63) & ~(size_t)63);
  return g_buf[tid].a && g_buf[tid].b;
}

/* Runs fn on `want` threads (the caller is thread 0); on one thread if the pool is busy. */
static void run_parallel(JobFn fn, void *ctx, int want) {
  if (want > g_threads) want = g_threads;
  if (want <= 1 || pthread_mutex_trylock(&g_busy) != 0) {
    fn(ctx, 0, 1);
    return;
  }
  g_job = fn;
  g_ctx = ctx;
  g_pool_threads = want;
  /* every worker runs the job; those with tid >= want return at once */
  atomic_store(&g_remaining, g_started - 1);
  pthread_mutex_lock(&g_mu);
  atomic_fetch_add_explicit(&g_gen, 1, memory_order_release);
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
  fn(ctx, 0, want);
  while (atomic_load_explicit(&g_remaining, memory_order_acquire) > 0) cpu_relax();
  pthread_mutex_unlock(&g_busy);
}

/* ----------------------------------------------------------------------------- parallel jobs */
typedef struct {
  Gemm g;          /* for a single product */
  int split;       /* 0: rows of C, 1: columns of C */
  long units;      /* number of MR- (rows) or NR- (cols) blocks */
  int rows_path;
  /* batch */
  float *heap;
  const uint32_t *offs;
  long batch;
  long m, n, k;
  int ta, tb;
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
  return g;
}

/* C^T = B^T A^T: same product, operands swapped, C written through its strides */
static Gemm swapped(const Gemm *g) {
  Gemm s;
  s.a = g->b; s.rsa = g->csb; s.csa = g->rsb;
  s.b = g->a; s.rsb = g->csa; s.csb = g->rsa;
  s.c = g->c; s.rsc = g->csc; s.csc = g->rsc;
  s.m = g->n; s.n = g->m; s.k = g->k;
  return s;
}

static long ceil_to(long x, long q) { return (x + q - 1) / q * q; }

/* The orientation with less padded work (ties: as given). */
static Gemm oriented(const Gemm *g) {
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
  gemm_packed(g, &g_buf[tid]);
}

static void single_job(void *ctx, int tid, int nt) {
  Job *J = (Job *)ctx;
  if (tid >= nt) return;
  const long per = (J->units + nt - 1) / nt;
  const long u0 = tid * per, u1 = u0 + per < J->units ? u0 + per : J->units;
  if (u0 >= u1) return;
  Gemm s = J->g;
  if (J->rows_path) {
    /* columns in multiples of 16 */
    const long j0 = u0 * 16, j1 = u1 * 16 < s.n ? u1 * 16 : s.n;
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
    s.c += j0 * s.csc;
    s.n = j1 - j0;
  }
  gemm_packed(&s, &g_buf[tid]);
}

static void batch_job(void *ctx, int tid, int nt) {
  Job *J = (Job *)ctx;
  if (tid >= nt) return;
  for (long e = tid; e < J->batch; e += nt) {
    Gemm g = make_gemm(J->heap, J->offs[3 * e], J->offs[3 * e + 1], J->offs[3 * e + 2], J->m, J->n, J->k, J->ta, J->tb);
    if (!use_rows_path(&g)) g = oriented(&g);
    serial(&g, tid);
  }
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
    J.units = (g.n + 15) / 16;
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
  int want = flops < g_min_parallel_flops ? 1 : g_threads;
  if (want > J.units) want = (int)J.units;
  if (want <= 1) {
    single_job(&J, 0, 1);
    return;
  }
  run_parallel(single_job, &J, want);
}

/* ----------------------------------------------------------------------------- N-API */
#define NAPI_OK(call)                                                                              \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      napi_throw_error(env, NULL, "qrlhf native: bad arguments");                   \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

static int get_long(napi_env env, napi_value v, long *out) {
  int64_t x;
  if (napi_get_value_int64(env, v, &x) != napi_ok) return 0;
  *out = (long)x;
  return 1;
}

/* gemm(heap: Float32Array, m, n, k, transA, transB, offsets: Uint32Array [3 * batch]) */
static napi_value js_gemm(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
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
      !get_long(env, argv[4], &ta) || !get_long(env, argv[5], &tb) || m < 0 || n < 0 || k < 0) {
    napi_throw_type_error(env, NULL, "qrlhf native gemm: m, n, k, transA, transB must be non-negative integers");
    return NULL;
  }
  NAPI_OK(napi_get_typedarray_info(env, argv[6], &type, &olen, &odata, NULL, NULL));
  if (type != napi_uint32_array || olen % 3 != 0) {
    napi_throw_type_error(env, NULL, "qrlhf native gemm: offsets must be a Uint32Array of 3 * batch");
    return NULL;
  }
  const uint32_t *offs = (const uint32_t *)odata;
  const long batch = (long)(olen / 3);
  /* every operand must lie inside the heap */
  for (long e = 0; e < batch; e++) {
    if ((size_t)offs[3 * e] + (size_t)m * (size_t)k > hlen || (size_t)offs[3 * e + 1] + (size_t)k * (size_t)n > hlen ||
        (size_t)offs[3 * e + 2] + (size_t)m * (size_t)n > hlen) {
      napi_throw_range_error(env, NULL, "qrlhf native gemm: an operand lies outside the heap");
      return NULL;
    }
  }
  float *heap = (float *)hdata;
  if (batch == 1) {
    gemm_one(make_gemm(heap, offs[0], offs[1], offs[2], m, n, k, (int)ta, (int)tb));
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
      run_parallel(batch_job, &J, g_threads);
    } else {
      for (long e = 0; e < batch; e++)
        gemm_one(make_gemm(heap, offs[3 * e], offs[3 * e + 1], offs[3 * e + 2], m, n, k, (int)ta, (int)tb));
    }
  }
  return NULL;
}

static int start_threads(int want) {
  if (want < 1) want = 1;
  if (want > MAX_THREADS) want = MAX_THREADS;
  for (int t = 0; t < want; t++)
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

/* setThreads(n): how many of the started threads a product may use (1 = calling thread only) */
static napi_value js_set_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  long want = 1;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc >= 1) get_long(env, argv[0], &want);
  pthread_mutex_lock(&g_busy);
  if (want < 1) want = 1;
  start_threads((int)want); /* started workers beyond this just idle */
  pthread_mutex_unlock(&g_busy);
  napi_value v;
  NAPI_OK(napi_create_int32(env, g_threads, &v));
  return v;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void once_init(void) {
  pick_arch();
  buffers_for(0);
}

NAPI_MODULE_INIT() {
  pthread_once(&g_once, once_init);
  napi_value fn;
  napi_create_function(env, "gemm", NAPI_AUTO_LENGTH, js_gemm, NULL, &fn);
  napi_set_named_property(env, exports, "gemm", fn);
  napi_create_function(env, "init", NAPI_AUTO_LENGTH, js_init, NULL, &fn);
  napi_set_named_property(env, exports, "init", fn);
  napi_create_function(env, "setThreads", NAPI_AUTO_LENGTH, js_set_threads, NULL, &fn);
  napi_set_named_property(env, exports, "setThreads", fn);
  return exports;
}
