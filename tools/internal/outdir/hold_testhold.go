//go:build testhold

package outdir

import (
	"fmt"
	"os"
	"strings"
)

// holdEnv names the stage at which a program built with -tags testhold stops for good: the
// tests that interrupt or kill the tools mid-write (signal_test.go) set it to the start of a
// Stage's text ("reading", "copying tokenizer files").
const holdEnv = "PROLONG_TEST_HOLD"

// holdAt stops the calling goroutine for good when stage starts with $PROLONG_TEST_HOLD,
// after saying so on stderr ("holding at STAGE"), so that a test can signal or kill the
// program at a known point.
func holdAt(stage string) {
	if at := os.Getenv(holdEnv); at != "" && strings.HasPrefix(stage, at) {
		fmt.Fprintf(os.Stderr, "holding at %s\n", stage)
		select {}
	}
}
