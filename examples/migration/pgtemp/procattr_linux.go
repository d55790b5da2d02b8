package pgtemp

import "syscall"

// procAttr runs postgres in its own process group, as cred (nil: as
// ourselves), and has the kernel SIGKILL it if its parent dies.
func procAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
}
