package harness

import (
	"errors"
	"syscall"
)

// sysProcAttr puts the child in its own process group, so signals meant for
// the test (a terminal's Ctrl-C) or for the child never cross over, and has
// the kernel SIGKILL it if the thread that started it dies (the test binary
// killed on timeout). Pdeathsig follows the starting OS thread, which Go
// keeps alive unless a goroutine exits while locked to it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// processAlive reports whether a process with this PID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
