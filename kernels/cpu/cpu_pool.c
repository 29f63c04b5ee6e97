/* The CPU backend's thread pool (see cpu_pool.h).
 *
 * A run is published as a ticket: the run's generation in the high 32 bits
 * and the next unclaimed task in the low 32. Threads claim tasks with a
 * compare-and-swap that also checks the generation, so a thread that is
 * late for a run can never take a task of the next one (a new run first
 * closes the old ticket, before it writes its task count). The generation also
 * has a 32-bit word of its own for the futex that sleeping workers wait on;
 * the caller waits for `done` the same way. */
#include "cpu_pool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Polls before sleeping (microseconds): longer than most gaps between two
 * ops of a step, far shorter than a scheduler's time slice. Next to a busy
 * process a waiting thread must give its core up soon, so that the thread
 * it waits for (queued behind the busy one) can move there: the reference
 * program's epoch on 2 cores with one busy process beside it took 2.4x its
 * quiet time with 4000 polls, 1.4x with 800, at the same
 * quiet time (bench/busy_neighbour.py; 1.1x with none, but 1.6x slower
 * when quiet). */
#define SPIN 800

struct cpu_pool {
  int threads;
  pthread_t *workers;
  int n_workers;
  _Atomic uint64_t ticket;   /* generation << 32 | next task */
  _Atomic uint32_t gen;      /* the generation, for the futex */
  _Atomic uint32_t done;     /* tasks of the current run finished */
  _Atomic int sleepers;      /* workers in (or entering) FUTEX_WAIT on gen */
  _Atomic int caller_sleeps; /* the caller in (or entering) FUTEX_WAIT on done */
  _Atomic int quit;
  /* The run, written before its ticket is published (release) and read
   * by a worker only after it claimed a task of that run. */
  _Atomic size_t n; /* read before a claim too (relaxed): a stale value only fails the claim */
  cpu_task task;
  void *arg;
};

static void futex_wait(_Atomic uint32_t *w, uint32_t v) {
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w) {
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Claims and runs tasks of generation g until none is left. */
static void work(cpu_pool *p, uint32_t g) {
  for (;;) {
    uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    if ((uint32_t)(t >> 32) != g)
      return;
    uint32_t i = (uint32_t)t;
    if (i >= atomic_load_explicit(&p->n, memory_order_relaxed))
      return;
    if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel,
                                               memory_order_acquire))
      continue;
    p->task(p->arg, i);
    uint32_t d = atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1;
    if (d == atomic_load_explicit(&p->n, memory_order_relaxed) && atomic_load(&p->caller_sleeps))
      futex_wake(&p->done);
  }
}

static void *worker_main(void *arg) {
  cpu_pool *p = arg;
  uint32_t seen = 0;
  for (;;) {
    uint32_t g;
    int spins = 0;
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&p->quit, memory_order_relaxed)) {
      if (spins++ < SPIN) {
        relax();
        continue;
      }
      atomic_fetch_add(&p->sleepers, 1);
      if (atomic_load(&p->gen) == seen && !atomic_load(&p->quit))
        futex_wait(&p->gen, seen);
      atomic_fetch_sub(&p->sleepers, 1);
    }
    if (atomic_load(&p->quit))
      return NULL;
    seen = g;
    work(p, g);
  }
}

cpu_pool *cpu_pool_new(int threads) {
  cpu_pool *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->threads = threads > 0 ? threads : 1;
  if (p->threads > 1 && !(p->workers = calloc((size_t)p->threads - 1, sizeof *p->workers))) {
    free(p);
    return NULL;
  }
  for (int i = 0; i < p->threads - 1; i++) {
    if (pthread_create(&p->workers[i], NULL, worker_main, p) != 0) {
      cpu_pool_free(p);
      return NULL;
    }
    p->n_workers++;
  }
  return p;
}

void cpu_pool_free(cpu_pool *p) {
  if (!p)
    return;
  atomic_store(&p->quit, 1);
  atomic_fetch_add(&p->gen, 1);
  futex_wake(&p->gen);
  for (int i = 0; i < p->n_workers; i++)
    pthread_join(p->workers[i], NULL);
  free(p->workers);
  free(p);
}

int cpu_pool_threads(const cpu_pool *p) { return p ? p->threads : 1; }

void cpu_pool_run(cpu_pool *p, size_t n, cpu_task task, void *arg) {
  if (n == 0)
    return;
  if (!p || p->n_workers == 0 || n == 1) {
    for (size_t i = 0; i < n; i++)
      task(arg, i);
    return;
  }
  uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
  /* First close the previous run's ticket: a thread that read it before
   * (all its tasks claimed) may still try to claim one more, seeing the
   * new n below; its compare-and-swap must fail. */
  atomic_store(&p->ticket, (uint64_t)g << 32 | UINT32_MAX);
  atomic_store_explicit(&p->n, n, memory_order_relaxed);
  p->task = task;
  p->arg = arg;
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  atomic_store_explicit(&p->ticket, (uint64_t)g << 32, memory_order_release);
  atomic_store(&p->gen, g); /* seq_cst: against a worker going to sleep */
  if (atomic_load(&p->sleepers))
    futex_wake(&p->gen);
  work(p, g);
  int spins = 0;
  uint32_t d;
  while ((d = atomic_load_explicit(&p->done, memory_order_acquire)) != n) {
    if (spins++ < SPIN) {
      relax();
      continue;
    }
    atomic_store(&p->caller_sleeps, 1);
    if ((d = atomic_load(&p->done)) != n)
      futex_wait(&p->done, d);
    atomic_store(&p->caller_sleeps, 0);
  }
}

size_t cpu_tasks(size_t work, size_t grain, size_t max) {
  size_t t = grain ? work / grain : 1;
  if (t < 1)
    t = 1;
  return t > max ? max : t;
}
