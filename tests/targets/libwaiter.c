/* A discovery test target that calls shared_add() of libshared.so (shared.c): waits for a line on stdin
 * (the test waits until the exporter has found it), calls shared_add(i, 100) N times, prints how many
 * calls it made, and waits for a second line before it exits.
 * usage: libwaiter N */
#include <stdio.h>
#include <stdlib.h>

long shared_add(long a, long b);

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 3, calls = 0, sum = 0;
  char line[64];
  if (!fgets(line, sizeof line, stdin)) return 1;
  for (long i = 0; i < n; i++, calls++) sum += shared_add(i, 100);
  printf("calls=%ld sum=%ld\n", calls, sum);
  fflush(stdout);
  if (!fgets(line, sizeof line, stdin)) return 0;
  return 0;
}
