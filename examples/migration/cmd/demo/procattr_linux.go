package main

import "syscall"

// procAttr puts a child in its own process group and has the kernel
// SIGKILL it if the demo dies, so nothing is left running.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
