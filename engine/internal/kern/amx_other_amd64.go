//go:build !linux && amd64

package kern

import "errors"

// requestAMX: only Linux's arch_prctl grant is implemented.
func requestAMX() error {
	return errors.New("AMX is used on Linux only (arch_prctl(ARCH_REQ_XCOMP_PERM))")
}
