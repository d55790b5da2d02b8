//go:build unix && !linux

package pgtemp

import "syscall"

// procAttr runs postgres in its own process group, as cred (nil: as ourselves).
func procAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}
