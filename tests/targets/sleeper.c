/* A target for latency tests: sleeper(ms, depth, exit_inside) sleeps for known durations on several
 * threads, recursing `depth` times (each level sleeps ms after its inner call), and with exit_inside
 * the thread exits inside the call, so its return never comes. Prints one JSON line per completed
 * call with the duration it measured itself, and one per call that never returned.
 * usage: sleeper THREADS CALLS_PER_THREAD EXITING_THREADS */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const int DURATIONS_MS[] = {2, 7, 20, 70, 200};
#define NDURATIONS (sizeof(DURATIONS_MS) / sizeof(DURATIONS_MS[0]))
static int calls;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void report(const char *kind, int ms, int depth, long long ns) {
  pthread_mutex_lock(&out_lock);
  printf("{\"kind\":\"%s\",\"tid\":%ld,\"ms\":%d,\"depth\":%d,\"ns\":%lld}\n", kind, (long)syscall(SYS_gettid), ms,
         depth, ns);
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
}

__attribute__((noinline, noipa)) int sleeper(int ms, int depth, int exit_inside) {
  if (depth > 0) {
    long long t0 = now_ns();
    sleeper(ms, depth - 1, 0);
    report("call", ms, depth - 1, now_ns() - t0);
  }
  if (exit_inside) {
    report("never_returns", ms, depth, 0);
    pthread_exit(NULL);
  }
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  return ms;
}

static void *run(void *arg) {
  long index = (long)arg;
  for (int i = 0; i < calls; i++) {
    int ms = DURATIONS_MS[(index + i) % NDURATIONS];
    int depth = i % 3 == 2 ? 1 : 0; /* some calls recurse once: inner ms, outer 2*ms */
    if (depth && ms * 2 >= 100) depth = 0; /* keep 2*ms away from bucket bounds */
    long long t0 = now_ns();
    sleeper(ms, depth, 0);
    report("call", ms, depth, now_ns() - t0);
  }
  return NULL;
}

static void *run_exiting(void *arg) {
  (void)arg;
  sleeper(3, 0, 1);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s THREADS CALLS_PER_THREAD EXITING_THREADS\n", argv[0]);
    return 2;
  }
  int threads = atoi(argv[1]), exiting = atoi(argv[3]);
  calls = atoi(argv[2]);
  pthread_t t[128];
  int n = 0;
  for (long i = 0; i < threads && n < 128; i++) pthread_create(&t[n++], NULL, run, (void *)i);
  for (long i = 0; i < exiting && n < 128; i++) pthread_create(&t[n++], NULL, run_exiting, NULL);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  return 0;
}
