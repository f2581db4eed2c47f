package reward

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
)

// Host users of the runs. As root, each run slot runs as a host user of its own, so that the
// per-user process limit (RLIMIT_NPROC, which counts every process and thread of that user on
// the host) bounds that slot alone. Two sandboxes on one host (data-parallel ranks on one node,
// a trainer and a test) must then not share a user: each slot claims a uid from BaseUID up that
// no other process has claimed, by an exclusive lock on a file named after it, held for the
// sandbox's life.

// uidLockDir is where the claims live: one host-wide directory.
var uidLockDir = filepath.Join(os.TempDir(), "prolong-sandbox-uids")

// maxUIDSearch bounds the uids tried from BaseUID.
const maxUIDSearch = 1 << 16

// claimUIDs claims n uids from base up in dir. It returns them and the lock files to keep
// open; closing a file releases its uid.
func claimUIDs(dir string, base, n int) ([]int, []*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	var uids []int
	var files []*os.File
	release := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for u := base; len(uids) < n; u++ {
		if u >= base+maxUIDSearch {
			release()
			return nil, nil, fmt.Errorf("no free uid in [%d, %d) under %s", base, base+maxUIDSearch, dir)
		}
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("uid-%d.lock", u)), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			release()
			return nil, nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				continue // another sandbox runs as u
			}
			release()
			return nil, nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		uids = append(uids, u)
		files = append(files, f)
	}
	return uids, files, nil
}

// claimSlotUIDs gives every slot its own host uid (as root); on failure the slots take
// BaseUID+slot, as before claims, with a warning.
func (s *Sandbox) claimSlotUIDs() {
	if os.Geteuid() != 0 {
		return
	}
	uids, files, err := claimUIDs(uidLockDir, s.cfg.BaseUID, s.cfg.Concurrency)
	if err != nil {
		s.cfg.Logger.Warn("reward: sandbox users not claimed; slots run as BaseUID+slot, which another sandbox on this host may share",
			"base_uid", s.cfg.BaseUID, "err", err)
		return
	}
	s.uids = uids
	runtime.AddCleanup(s, func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}, files)
}

// uid is the host uid (and gid) of slot's runs, as root.
func (s *Sandbox) uid(slot int) int {
	if slot < len(s.uids) {
		return s.uids[slot]
	}
	return s.cfg.BaseUID + slot
}

// slotUIDs is the host uid of every slot.
func (s *Sandbox) slotUIDs() []int {
	out := make([]int, s.cfg.Concurrency)
	for i := range out {
		out[i] = s.uid(i)
	}
	return out
}
