/* A discovery test target that maps its library late: waits for a line, dlopen()s LIBRARY, waits for a
 * second line (the test waits until the exporter has found the library in its maps), calls
 * shared_add(i, 100) N times, prints how many calls it made, and waits for a third line to exit.
 * usage: dlwaiter LIBRARY N */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  long n = atol(argv[2]), calls = 0, sum = 0;
  char line[64];
  if (!fgets(line, sizeof line, stdin)) return 1;
  void *lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) return 3;
  long (*add)(long, long) = (long (*)(long, long))dlsym(lib, "shared_add");
  if (!add) return 4;
  printf("mapped\n");
  fflush(stdout);
  if (!fgets(line, sizeof line, stdin)) return 1;
  for (long i = 0; i < n; i++, calls++) sum += add(i, 100);
  printf("calls=%ld sum=%ld\n", calls, sum);
  fflush(stdout);
  if (!fgets(line, sizeof line, stdin)) return 0;
  return 0;
}
