package tasks

import (
	"fmt"
	"strings"
)

// SuiteFamily is one family of a task suite: the difficulty it trains on, and a harder one
// above it that is only ever evaluated.
type SuiteFamily struct {
	Name  string // the family's name (its data_source), the prefix of its held-out kinds
	Train string // spec of the training difficulty (New reads it)
	Above string // spec of the difficulty above training
}

// Held-out set names, the suffix of a suite's held-out kinds ("arith/in", "arith/above").
const (
	SetIn    = "in"
	SetAbove = "above"
)

// SuiteSet is one generated set of a suite: a family's tasks of one split and difficulty.
type SuiteSet struct {
	Kind  string // the family's name for the training set; "family/in" or "family/above" held out
	Tasks []Task
}

// SuiteConfig says how many problems GenerateSuite makes, per family, and from which seeds.
type SuiteConfig struct {
	TrainN, HeldN       int
	TrainSeed, HeldSeed uint64
}

// GenerateSuite draws each family's training set (TrainN problems of its Train spec's train
// split) and its two held-out sets (HeldN problems each of the held-out split, at the training
// difficulty and above it), in the suite's family order.
func GenerateSuite(suite []SuiteFamily, cfg SuiteConfig) (train, held []SuiteSet, err error) {
	for _, sf := range suite {
		tf, err := New(sf.Train)
		if err != nil {
			return nil, nil, fmt.Errorf("suite family %s: train: %w", sf.Name, err)
		}
		af, err := New(sf.Above)
		if err != nil {
			return nil, nil, fmt.Errorf("suite family %s: above: %w", sf.Name, err)
		}
		if tf.Name() != sf.Name || af.Name() != sf.Name {
			return nil, nil, fmt.Errorf("suite family %s: specs %q and %q must both be of family %s", sf.Name, sf.Train, sf.Above, sf.Name)
		}
		tr, err := Generate(tf, GenerateConfig{Split: Train, N: cfg.TrainN, Seed: cfg.TrainSeed})
		if err != nil {
			return nil, nil, err
		}
		in, err := Generate(tf, GenerateConfig{Split: HeldOut, N: cfg.HeldN, Seed: cfg.HeldSeed})
		if err != nil {
			return nil, nil, err
		}
		above, err := Generate(af, GenerateConfig{Split: HeldOut, N: cfg.HeldN, Seed: cfg.HeldSeed})
		if err != nil {
			return nil, nil, err
		}
		train = append(train, SuiteSet{Kind: sf.Name, Tasks: tr})
		held = append(held, SuiteSet{Kind: sf.Name + "/" + SetIn, Tasks: in}, SuiteSet{Kind: sf.Name + "/" + SetAbove, Tasks: above})
	}
	return train, held, nil
}

// KindFamily returns the family a suite kind belongs to: "arith/above" -> "arith".
func KindFamily(kind string) string {
	f, _, _ := strings.Cut(kind, "/")
	return f
}
