/* A target for ordering tests: THREADS threads (more than the machine's cores) each call echo(x)
 * CALLS times with a value unique to the call (thread * 1000000 + call); echo sleeps 0-3 ms inside the
 * call (so threads migrate between CPUs inside calls) and returns x. It prints how many calls it made
 * and, for the masks 1, 3 and 7, how many had (x & mask) == 0: what a filter "!(x & 7)" keeps.
 * usage: echo THREADS CALLS */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int calls;

__attribute__((noinline, noipa)) int echo(int x) {
  unsigned r = (unsigned)x * 2654435761u;
  struct timespec ts = {0, (long)((r >> 16) % 4) * 1000000L}; /* 0, 1, 2 or 3 ms */
  if (ts.tv_nsec) nanosleep(&ts, NULL);
  return x;
}

static void *worker(void *arg) {
  int base = (int)(long)arg * 1000000;
  for (int i = 0; i < calls; i++) {
    if (echo(base + i) != base + i) abort();
  }
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 8;
  calls = argc > 2 ? atoi(argv[2]) : 3000;
  pthread_t t[256];
  if (threads > 256) threads = 256;
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(long)(i + 1));
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  long total = (long)threads * calls, kept[3] = {0, 0, 0};
  for (int i = 1; i <= threads; i++)
    for (int c = 0; c < calls; c++)
      for (int m = 0; m < 3; m++)
        if (((i * 1000000 + c) & ((2 << m) - 1)) == 0) kept[m]++;
  printf("{\"calls\":%ld,\"mask1\":%ld,\"mask3\":%ld,\"mask7\":%ld}\n", total, kept[0], kept[1], kept[2]);
  return 0;
}
