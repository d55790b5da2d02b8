//go:build unix

package main

import (
	"os/signal"
	"syscall"
)

// ignoreFileSizeSignal makes a write past the file size limit (RLIMIT_FSIZE)
// fail with EFBIG, as a full disk fails with ENOSPC, instead of killing the
// process: the store reports the error and the rollouts hold.
func ignoreFileSizeSignal() { signal.Ignore(syscall.SIGXFSZ) }
