/* A shared library with one exported function, probed by path in the tests. */
__attribute__((noinline)) long shared_add(long a, long b) { return a + b; }
