//go:build unix && !linux

package harness

import (
	"errors"
	"syscall"
)

// sysProcAttr puts the child in its own process group, so signals meant for
// the test (a terminal's Ctrl-C) or for the child never cross over.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// processAlive reports whether a process with this PID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
