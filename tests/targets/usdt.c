/* USDT target: <sys/sdt.h> probes with and without a semaphore, every argument form, one probe at two
 * sites, and nested enter/leave pairs. Prints its pid and the semaphore's address, then for each line
 * "go N" on stdin runs N rounds and prints one JSON line per probe it passed (with the values it gave
 * the probe), then "done"; EOF ends it. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

unsigned short t_sem_semaphore __attribute__((section(".probes"))) __attribute__((used));
unsigned short t_enter_semaphore __attribute__((section(".probes"))) __attribute__((used));
unsigned short t_leave_semaphore __attribute__((section(".probes"))) __attribute__((used));

static long tid(void) { return syscall(SYS_gettid); }

/* with a semaphore: fires only while a tracer holds it (the program checks, as CPython does) */
static void sem_probe(int round) {
    if (t_sem_semaphore) {
        int64_t twice = (int64_t)round * 2;
        DTRACE_PROBE2(t, sem, round, twice);
        printf("{\"probe\":\"sem\",\"tid\":%ld,\"round\":%d,\"twice\":%lld}\n", tid(), round, (long long)twice);
    }
}

/* a broken note: its semaphore is read-only (the kernel could not count tracers in it); never called */
const unsigned short t_ro_semaphore = 0;
void read_only_semaphore(void) { DTRACE_PROBE(t, ro); }

static void nested(int depth, int round) {
    if (t_enter_semaphore) DTRACE_PROBE2(t, enter, depth, round);
    printf("{\"probe\":\"enter\",\"tid\":%ld,\"depth\":%d,\"round\":%d}\n", tid(), depth, round);
    if (depth > 0) nested(depth - 1, round);
    usleep(1000 * (depth + 1));
    if (t_leave_semaphore) DTRACE_PROBE1(t, leave, depth);
    printf("{\"probe\":\"leave\",\"tid\":%ld,\"depth\":%d}\n", tid(), depth);
}

/* from here on: probes without a semaphore */
#undef _SDT_NOTE_SEMAPHORE_USE
#define _SDT_NOTE_SEMAPHORE_USE(provider, name)
#undef _SDT_SEMAPHORE
#define _SDT_SEMAPHORE(p, n) _SDT_ASM_1(_SDT_ASM_ADDR 0)

/* one probe, two sites: inlined into both callers */
static inline __attribute__((always_inline)) void multi(int site, long value) {
    DTRACE_PROBE2(t, multi, site, value);
    printf("{\"probe\":\"multi\",\"tid\":%ld,\"site\":%d,\"value\":%ld}\n", tid(), site, value);
}
static void __attribute__((noinline)) site_one(long v) { multi(1, v); }
static void __attribute__((noinline)) site_two(long v) { multi(2, v * 3); }

static void __attribute__((noinline)) args_probe(int round, const char *text) {
    volatile int32_t in_memory = -1000 - round;   /* -O0: a memory operand, -4@-20(%rbp) */
    uint8_t u8 = (uint8_t)(250 + round);
    int16_t s16 = (int16_t)(-300 - round);
    uint32_t u32 = 4000000000u + (uint32_t)round;
    int64_t s64 = -5000000000LL - round;
    /* "r": a register (u8/s16 in sub-registers), "m": memory, "n": a constant, a string pointer */
    __asm__ __volatile__("" ::: "memory");
    STAP_PROBE8(t, args, u8, s16, u32, s64, in_memory, 5, text, (uint64_t)round);
    /* expressions: registers, sub-registers included (1@%al, -2@%dx, 4@%ecx ...) */
    STAP_PROBE5(t, regs, (uint8_t)(round + 7), (int16_t)(-round - 9), (uint32_t)(round * 3u + 1),
                (int64_t)round - 11, (int8_t)(-round - 1));
    printf("{\"probe\":\"regs\",\"tid\":%ld,\"r8\":%u,\"r16\":%d,\"r32\":%u,\"r64\":%lld,\"s8\":%d}\n", tid(),
           (uint8_t)(round + 7), (int16_t)(-round - 9), (uint32_t)(round * 3u + 1), (long long)((int64_t)round - 11),
           (int8_t)(-round - 1));
    printf("{\"probe\":\"args\",\"tid\":%ld,\"u8\":%u,\"s16\":%d,\"u32\":%u,\"s64\":%lld,\"mem\":%d,\"const\":5,"
           "\"round\":%d,\"text\":\"", tid(), u8, s16, u32, (long long)s64, in_memory, round);
    for (const char *c = text; *c; c++) printf(*c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
    printf("\"}\n");
}

int main(void) {
    printf("{\"pid\":%d,\"semaphore\":%lu}\n", getpid(), (unsigned long)&t_sem_semaphore);
    fflush(stdout);
    char line[64];
    int round = 0;
    while (fgets(line, sizeof line, stdin)) {
        int n = 0;
        if (sscanf(line, "go %d", &n) != 1) continue;
        for (int i = 0; i < n; i++, round++) {
            char text[32];
            snprintf(text, sizeof text, "round %d \"q\"", round);
            args_probe(round, text);
            site_one(round);
            site_two(round);
            sem_probe(round);
            nested(2, round);
        }
        printf("done\n");
        fflush(stdout);
    }
    return 0;
}
