/* A target for kernel tests: calls work(int, const char *) and recurse(int) a known number of times
 * with known values on several threads, and prints what it did as JSON lines on stdout, one per call,
 * so a test can compare every record of the exporter with the truth.
 *
 * usage: calls THREADS CALLS_PER_THREAD RECURSION_DEPTH
 * Thread 0 renames itself to a comm with spaces and dashes. Strings hold spaces, quotes, '=', braces,
 * a newline and bytes that are not UTF-8; they are printed hex-encoded so nothing is lost here. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *STRINGS[] = {
    "hello world", "a \"quoted\" word", "key=value x=1", "trailing space ", "", "{braces},[1,2]",
    "n=5\" fake=1", "line one\nline two", "\xff\xfe not utf-8 \xc3(", "caf\xc3\xa9 \xe2\x82\xac",
};
#define NSTRINGS (sizeof(STRINGS) / sizeof(STRINGS[0]))

static int threads, calls, depth;
long work_calls; /* a data symbol: probing it must be refused */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline, noipa)) long work(int a, const char *s) {
  __atomic_add_fetch(&work_calls, 1, __ATOMIC_RELAXED);
  return (long)a * 3 + (long)strlen(s);
}

__attribute__((noinline, noipa)) int recurse(int n) {
  if (n <= 0) return 0;
  return 1 + recurse(n - 1);
}

static void hex(const char *s, char *out) {
  for (; *s; s++, out += 2) sprintf(out, "%02x", (unsigned char)*s);
  *out = 0;
}

static void *run(void *arg) {
  long index = (long)arg;
  char comm[16] = "";
  if (index == 0) prctl(PR_SET_NAME, "w-0 a-b c");
  prctl(PR_GET_NAME, comm);
  int tid = (int)syscall(SYS_gettid);
  char h[256];
  for (int i = 0; i < calls; i++) {
    int a = (int)index * 1000 + i - 7;
    const char *s = STRINGS[(index + i) % NSTRINGS];
    long ret = work(a, s);
    hex(s, h);
    pthread_mutex_lock(&out_lock);
    printf("{\"fn\":\"work\",\"pid\":%d,\"tid\":%d,\"comm_hex\":\"", getpid(), tid);
    char ch[40];
    hex(comm, ch);
    printf("%s\",\"a\":%d,\"s_hex\":\"%s\",\"ret\":%ld}\n", ch, a, h, ret);
    pthread_mutex_unlock(&out_lock);
  }
  if (depth > 0) {
    int r = recurse(depth);
    pthread_mutex_lock(&out_lock);
    printf("{\"fn\":\"recurse\",\"pid\":%d,\"tid\":%d,\"n\":%d,\"ret\":%d}\n", getpid(), tid, depth, r);
    pthread_mutex_unlock(&out_lock);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s THREADS CALLS_PER_THREAD RECURSION_DEPTH\n", argv[0]);
    return 2;
  }
  threads = atoi(argv[1]);
  calls = atoi(argv[2]);
  depth = atoi(argv[3]);
  pthread_t t[64];
  for (long i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, run, (void *)i);
  for (long i = 0; i < threads && i < 64; i++) pthread_join(t[i], NULL);
  fflush(stdout);
  return 0;
}
