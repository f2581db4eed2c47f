package main

// Every flag is checked before the run does any work (opens the device, reads the model or the
// data, creates the run directory), and each error names its flag. The ranges are the knobs'
// own (their check tags, package grpo/knob): those of grpo.RunConfig's knobs are the very
// checks grpo.Run makes, so the two cannot drift.

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/prolong-rl/prolong/engine/cpu"
	"github.com/prolong-rl/prolong/grpo/knob"
)

// usageError marks an error of the command line: main prints it with "(see --help)" and exits
// with status 2, as for a flag that does not parse.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// validate checks every flag of o: the ranges of the knobs (knob.Check: the program's own and,
// through grpo.RunConfig.CheckKnobs, the run's), --overlap and --matmul-precision, the --freeze
// patterns and the flags that go together. It reads no file and opens no device. All the errors
// found are returned together, one line each.
func validate(o *options) error {
	errs := []error{knob.Check(o)}
	if _, err := overlapOn(*o); err != nil {
		errs = append(errs, err)
	}
	if _, err := cpu.ParsePrecision(o.MatmulPrecision); err != nil {
		errs = append(errs, fmt.Errorf("--matmul-precision: %w", err))
	}
	for _, f := range o.Run.Freeze {
		if _, err := regexp.Compile(f); err != nil {
			errs = append(errs, fmt.Errorf("--freeze %q: %w", f, err))
		}
	}
	switch {
	case (o.Model == "") != (o.Data == ""):
		errs = append(errs, errors.New("--model and --data go together: give both (or neither, for the default job)"))
	case o.Model != "" && o.SFTOnly:
		errs = append(errs, errors.New("--sft builds the default job's model; it does not apply with --model"))
	}
	switch {
	case o.RewardCmd != "" && o.RewardURL != "":
		errs = append(errs, errors.New("--reward-cmd and --reward-url: give one"))
	case len(o.RewardFor) > 0 && o.RewardCmd == "" && o.RewardURL == "":
		errs = append(errs, errors.New("--reward-for names the data_sources of --reward-cmd or --reward-url: give one of them"))
	}
	if err := errors.Join(errs...); err != nil {
		return usageError{err}
	}
	return nil
}
