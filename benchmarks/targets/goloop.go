// Benchmark target (Go): calls main.work in a tight loop for SECONDS, then prints "<calls> <elapsed
// seconds>", like loop.c. usage: goloop go SECONDS
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

//go:noinline
func work(x int64) int64 {
	return x + 1
}

func main() {
	seconds, _ := strconv.ParseFloat(os.Args[2], 64)
	start := time.Now()
	var calls, acc int64
	for time.Since(start).Seconds() < seconds {
		for i := 0; i < 256; i++ {
			acc += work(calls)
			calls++
		}
	}
	if acc == 0 {
		fmt.Fprintln(os.Stderr, "impossible")
	}
	fmt.Printf("%d %.6f\n", calls, time.Since(start).Seconds())
}
