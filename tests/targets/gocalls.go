// A Go target for kernel tests: goroutines call main.handle(x) a known number of times with known
// values and the program prints what it did (one JSON line), so a test can compare the exporter's
// records with the truth. Go's register ABI (Go >= 1.17, amd64) passes x in %ax.
//
// usage: gocalls GOROUTINES CALLS_PER_GOROUTINE
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
)

var calls, sum int64

//go:noinline
func handle(x int64) int64 {
	atomic.AddInt64(&calls, 1)
	atomic.AddInt64(&sum, x)
	return x * 2
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s GOROUTINES CALLS_PER_GOROUTINE\n", os.Args[0])
		os.Exit(2)
	}
	goroutines, _ := strconv.Atoi(os.Args[1])
	per, _ := strconv.Atoi(os.Args[2])
	var wg sync.WaitGroup
	var doubled int64
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				atomic.AddInt64(&doubled, handle(int64(g*1000000+i)))
				if i%64 == 0 {
					runtime.Gosched() // let goroutines move between threads
				}
			}
		}(g)
	}
	wg.Wait()
	fmt.Printf("{\"pid\":%d,\"calls\":%d,\"sum\":%d,\"doubled\":%d}\n", os.Getpid(), atomic.LoadInt64(&calls),
		atomic.LoadInt64(&sum), atomic.LoadInt64(&doubled))
}
