package modelio

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/prolong-rl/prolong/tools/internal/clilog"
	"github.com/prolong-rl/prolong/tools/internal/outdir"
)

// Main is the main function of tools/convert and tools/export: it sets up the log and the
// signal handling of program prog, runs run with the command line, and exits 1 with the error
// logged (0 after --help; a signal's handler exits on its own).
func Main(prog string, run func(args []string, stdout, stderr io.Writer) error) {
	clilog.Setup(prog)
	outdir.HandleSignals(prog)
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if outdir.Stopping() {
			select {} // the signal handler exits
		}
		if !errors.Is(err, pflag.ErrHelp) {
			slog.Error(err.Error())
			os.Exit(1)
		}
	}
}

// ParseInOut parses args into fs, whose output is discarded (the errors are Main's to print),
// and checks the -i/--input and -o/--output every such program requires, given as in and
// out once parsed. --help prints the usage on stdout and returns pflag.ErrHelp.
func ParseInOut(fs *pflag.FlagSet, args []string, stdout io.Writer, in, out *string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
		}
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q (use -i and -o)", fs.Args())
	case *in == "":
		return errors.New("-i/--input is required (see --help)")
	case *out == "":
		return errors.New("-o/--output is required (see --help)")
	}
	return nil
}
