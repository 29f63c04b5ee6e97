/* The CPU backend's threads: one pool per backend (per replica), that runs
 * every parallel loop of the backend's ops. The caller's thread takes part;
 * the others wait for work spinning briefly, then asleep on a futex, so a
 * pool that is not working takes no CPU from its neighbours.
 *
 * Work is split into tasks by the op, from its shapes alone: which thread
 * runs a task never changes what it computes, and reductions combine the
 * tasks' partial results in task order, so an op gives bitwise the same
 * result with any number of threads. */
#ifndef TD_CPU_POOL_H
#define TD_CPU_POOL_H

#include <stddef.h>

typedef struct cpu_pool cpu_pool;

/* task runs once for every index in [0, n), on any thread of the pool. */
typedef void (*cpu_task)(void *arg, size_t index);

/* A pool of `threads` threads, the caller's included (threads - 1 are
 * started). NULL when out of memory or threads cannot be made. */
cpu_pool *cpu_pool_new(int threads);
void cpu_pool_free(cpu_pool *p);
int cpu_pool_threads(const cpu_pool *p);

/* Runs task(arg, i) for i in [0, n) and returns when all are done. One
 * caller at a time (the backend's). */
void cpu_pool_run(cpu_pool *p, size_t n, cpu_task task, void *arg);

/* The number of tasks for `work` units of which each task should have
 * at least `grain`, at most `max`: a function of the work alone. */
size_t cpu_tasks(size_t work, size_t grain, size_t max);

#endif
