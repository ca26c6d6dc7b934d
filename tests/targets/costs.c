/* A target for the cost classes `symbols` and `check` print: pushes() begins with `push %rbp`, which the
 * kernel emulates; stepped() begins with `mov %rsp,%rax`, which it must single-step. main calls each
 * argv[1] times (0 by default). */
#include <stdlib.h>

__attribute__((naked, noinline)) long pushes(void) { __asm__("push %rbp\n\tpop %rbp\n\tmov $1, %eax\n\tret"); }
__attribute__((naked, noinline)) long stepped(void) { __asm__("mov %rsp, %rax\n\tmov $2, %eax\n\tret"); }

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 0, sum = 0;
  for (long i = 0; i < n; i++) sum += pushes() + stepped();
  return sum == 3 * n ? 0 : 1;
}
