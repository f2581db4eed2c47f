//go:build linux && amd64

package kern

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// arch_prctl codes of Linux's dynamically enabled XSTATE features (asm/prctl.h, Linux 5.16).
const (
	archGetXCompPerm = 0x1022
	archReqXCompPerm = 0x1023
)

// requestAMX asks Linux once for the AMX tile data state for the whole process, then reads the
// permitted features back.
func requestAMX() error {
	if _, _, e := syscall.Syscall(syscall.SYS_ARCH_PRCTL, archReqXCompPerm, xfeatureXTileData, 0); e != 0 {
		switch e {
		case syscall.EINVAL:
			return fmt.Errorf("%w (a kernel older than 5.16 does not know the request)", e)
		case syscall.ENOSPC:
			return fmt.Errorf("%w (a thread's signal stack is too small for the tile state)", e)
		}
		return e
	}
	var perm uint64
	if _, _, e := syscall.Syscall(syscall.SYS_ARCH_PRCTL, archGetXCompPerm, uintptr(unsafe.Pointer(&perm)), 0); e != 0 {
		return fmt.Errorf("ARCH_GET_XCOMP_PERM: %w", e)
	}
	if perm&(1<<xfeatureXTileData) == 0 {
		return errors.New("the request succeeded but XTILEDATA is not among the permitted features")
	}
	return nil
}
