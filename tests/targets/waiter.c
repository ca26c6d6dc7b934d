/* A target for discovery tests: waits for a line on stdin (so a test can start it, wait until the
 * exporter has found and probed it, then let it run), calls work(i) N times, prints how many calls it
 * made, and waits for a second line before it exits (unless N is negative: then it exits at once).
 *
 * usage: waiter N */
#include <stdio.h>
#include <stdlib.h>

static long calls;

__attribute__((noinline, noipa)) long work(long i) {
  calls++;
  return i * 2;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 10;
  char line[64];
  if (n >= 0 && !fgets(line, sizeof line, stdin)) return 1;
  long sum = 0;
  for (long i = 0; i < labs(n); i++) sum += work(i);
  printf("calls=%ld sum=%ld\n", calls, sum);
  fflush(stdout);
  if (n >= 0 && !fgets(line, sizeof line, stdin)) return 0;
  return 0;
}
