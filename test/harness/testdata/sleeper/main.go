// Command sleeper is a fixture for the harness's process tests: it prints
// "ready", then waits for SIGTERM (exit 3) or, with -ignore-term, for
// SIGKILL. It exits 0 by itself after -max.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM")
	maxWait := flag.Duration("max", time.Minute, "exit 0 after this long")
	flag.Parse()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	fmt.Println("ready", os.Getenv("SLEEPER_GREETING"))
	deadline := time.After(*maxWait)
	for {
		select {
		case <-sig:
			if *ignoreTerm {
				fmt.Println("ignoring SIGTERM")
				continue
			}
			fmt.Println("got SIGTERM")
			os.Exit(3)
		case <-deadline:
			return
		}
	}
}
