/* Calls getenv() from libc a known number of times with known names, and a function of our own
 * shared library (libshared.so, built from shared.c) with known values; prints its pid first.
 * usage: libcall N */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

long shared_add(long a, long b);

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 3;
  char name[64];
  long sum = 0;
  printf("%d\n", getpid());
  fflush(stdout);
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof(name), "UETEST_VAR_%d", i);
    if (getenv(name) != NULL) sum++;
    sum += shared_add(i, 100);
  }
  return sum == 0 ? 1 : 0;
}
