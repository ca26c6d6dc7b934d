/* Benchmark target: calls a probed function in a tight loop for SECONDS (at most RATE calls a second
 * if given), then prints "<calls> <elapsed seconds>". MODE "push" calls work_push, whose first
 * instruction is `push` (the kernel emulates it: ~1 µs a hit); MODE "step" calls work_step, whose first
 * instruction is `lea` (the kernel single-steps it out of line: ~10 µs a hit).
 * usage: loop push|step SECONDS [RATE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

long work_push(long);
long work_step(long);
__asm__(".text\n"
        ".globl work_push\n.type work_push,@function\nwork_push:\n"
        "  push %rbp\n  mov %rsp,%rbp\n  lea 1(%rdi),%rax\n  pop %rbp\n  ret\n.size work_push,.-work_push\n"
        ".globl work_step\n.type work_step,@function\nwork_step:\n"
        "  lea 1(%rdi),%rax\n  ret\n.size work_step,.-work_step\n");

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: %s push|step SECONDS [RATE]\n", argv[0]);
    return 2;
  }
  long (*fn)(long) = strcmp(argv[1], "push") == 0 ? work_push : work_step;
  double seconds = atof(argv[2]), rate = argc == 4 ? atof(argv[3]) : 0, start = now(), elapsed = 0;
  long calls = 0, acc = 0;
  while (elapsed < seconds) {
    for (int i = 0; i < 256; i++) acc += fn(calls++);
    elapsed = now() - start;
    if (rate > 0 && calls / rate > elapsed) { /* ahead of schedule: sleep until the next batch is due */
      double ahead = calls / rate - elapsed;
      struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
      nanosleep(&ts, NULL);
      elapsed = now() - start;
    }
  }
  printf("%ld %.6f %ld\n", calls, elapsed, acc & 1);
  return 0;
}
