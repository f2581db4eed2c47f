package cuda

import "syscall"

// threadID identifies the calling OS thread: a decode step being recorded belongs to the thread
// its goroutine is locked to between BeginDecodeStep and EndDecodeStep.
func threadID() int { return syscall.Gettid() }
