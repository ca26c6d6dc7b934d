// A Go target for the goroutine-aware pairing: every probed function returns (result, its argument), so
// each return record (%ax, %bx at the RET) names the call it ends. It prints what it did, one JSON line
// (no pid, no timing: the same output with and without probes).
//
//   - main.handle: GOROUTINES goroutines (more than cores) call it; it sleeps inside, so the goroutine
//     parks and resumes, often on another thread;
//   - main.deep: recursion DEPTH deep with 2 KiB frames, from fresh goroutines, so their stacks grow
//     (are copied) in the middle of calls, and runtime.morestack re-enters deep's first instruction;
//   - main.mayPanic: panics when x % 5 == 0, recovered by its caller main.safeCall;
//   - main.unwind: recursion whose innermost frame panics, recovered three frames up by unwind itself:
//     the frames in between never return, and the recovering frame's RET must not close their entries;
//   - main.greet(name string): a Go string (pointer in %ax, length in %bx), not NUL-terminated.
//
//   - main.park: with PARKED > 0, that many goroutines are inside it (blocked for good) when the program exits.
//
// usage: gocases GOROUTINES CALLS DEPTH [PARKED]
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var handleCalls, handleSum, deepCalls, panicCalls, panics, greetCalls, greetBytes, unwindCalls, unwindSum int64

const unwindDepth, recoverAt = 6, 3

//go:noinline
func handle(x int64) (int64, int64) {
	atomic.AddInt64(&handleCalls, 1)
	atomic.AddInt64(&handleSum, x)
	time.Sleep(200 * time.Microsecond)
	return x * 2, x
}

//go:noinline
func deep(n int64) (int64, int64) {
	atomic.AddInt64(&deepCalls, 1)
	var frame [2048]byte
	frame[n%2048] = byte(n)
	if n == 0 {
		return int64(frame[0]), n
	}
	r, _ := deep(n - 1)
	return r + int64(frame[n%2048]), n
}

//go:noinline
func mayPanic(x int64) (int64, int64) {
	atomic.AddInt64(&panicCalls, 1)
	if x%5 == 0 {
		panic(fmt.Sprintf("boom %d", x))
	}
	return x + 1, x
}

//go:noinline
func safeCall(x int64) (r int64) {
	defer func() {
		if recover() != nil {
			atomic.AddInt64(&panics, 1)
			r = -1
		}
	}()
	r, _ = mayPanic(x)
	return r
}

//go:noinline
func unwind(n int64) (r int64, x int64) {
	atomic.AddInt64(&unwindCalls, 1)
	if n == 0 {
		panic("bottom")
	}
	if n == recoverAt {
		defer func() {
			if recover() != nil {
				r, x = -1, n
			}
		}()
	}
	inner, _ := unwind(n - 1)
	return inner + 1, n
}

var parked int64

//go:noinline
func park(forever chan int) int {
	atomic.AddInt64(&parked, 1)
	return <-forever
}

//go:noinline
func greet(name string) int {
	atomic.AddInt64(&greetCalls, 1)
	atomic.AddInt64(&greetBytes, int64(len(name)))
	return len(name)
}

func main() {
	if len(os.Args) != 4 && len(os.Args) != 5 {
		fmt.Fprintf(os.Stderr, "usage: %s GOROUTINES CALLS DEPTH [PARKED]\n", os.Args[0])
		os.Exit(2)
	}
	goroutines, _ := strconv.Atoi(os.Args[1])
	calls, _ := strconv.Atoi(os.Args[2])
	depth, _ := strconv.Atoi(os.Args[3])
	if len(os.Args) == 5 {
		n, _ := strconv.Atoi(os.Args[4])
		forever := make(chan int)
		for i := 0; i < n; i++ {
			go park(forever)
		}
		for atomic.LoadInt64(&parked) < int64(n) {
			time.Sleep(time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	var doubled, deepSum, safeSum int64
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				r, _ := handle(int64(g*1000000 + i))
				atomic.AddInt64(&doubled, r)
				atomic.AddInt64(&safeSum, safeCall(int64(g*1000+i)))
				if i%10 == 0 {
					r, _ := unwind(unwindDepth)
					atomic.AddInt64(&unwindSum, r)
				}
			}
			done := make(chan int64)
			go func() { r, _ := deep(int64(depth)); done <- r }() // a fresh goroutine: a small stack to grow
			atomic.AddInt64(&deepSum, <-done)
		}(g)
	}
	wg.Wait()
	// literals lie back to back in the binary, with no NUL after each: read to a NUL, they run on
	names := []string{"gopher", "", "caf\u00e9 \"quoted\"", "x", "nul\x00inside", "\xff\xfe not utf-8",
		strings.Repeat("long", 20)}
	for i := 0; i < 2*len(names); i++ {
		greet(names[i%len(names)])
	}
	fmt.Printf("{\"handle\":%d,\"handle_sum\":%d,\"doubled\":%d,\"deep\":%d,\"deep_sum\":%d,\"may_panic\":%d,"+
		"\"panics\":%d,\"safe_sum\":%d,\"unwind\":%d,\"unwind_sum\":%d,\"greet\":%d,\"greet_bytes\":%d}\n",
		handleCalls, handleSum, doubled, deepCalls, deepSum, panicCalls, panics, safeSum, unwindCalls, unwindSum,
		greetCalls, greetBytes)
}
