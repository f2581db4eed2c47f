package knob

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// name is a string kind parsed by UnmarshalText: "b" is another spelling of "beta".
type name string

func (n *name) UnmarshalText(b []byte) error {
	switch string(b) {
	case "alpha", "beta":
		*n = name(b)
	case "b":
		*n = "beta"
	default:
		return fmt.Errorf("unknown name %q", b)
	}
	return nil
}

type inner struct {
	Mode  name    `flag:"mode" default:"alpha" help:"the mode"`
	Ratio float64 `flag:"ratio" default:"0.5" check:"(0,1]" when:"Mode=beta" help:"beta's ratio"`
}

type checked struct {
	N int `flag:"checked-n" check:">=1"`
}

// CheckKnobs adds a rule between knobs to the ranges.
func (c *checked) CheckKnobs() error {
	return errors.Join(Check(c), errors.New("checked rule"))
}

type config struct {
	Steps   int           `flag:"steps" default:"10" check:">=0" help:"steps in all"`
	Temp    float32       `flag:"temp" default:"1.2" check:">0" help:"a float32"`
	Dynamic bool          `flag:"no-dynamic,negate" default:"false" help:"a negated bool"`
	Seed    uint64        `flag:"seed" default:"7"`
	Wait    time.Duration `flag:"wait" default:"1m" check:">0"`
	Tags    []string      `flag:"tags"`
	Dual    float64       `flag:"dual" default:"3" check:"0|>1" want:"must be 0 or above 1"`
	In      inner
	Sub     checked
	Plain   int // not a knob
}

func TestDefaultsAndBind(t *testing.T) {
	var c config
	Defaults(&c)
	want := config{Steps: 10, Temp: 1.2, Dynamic: true, Seed: 7, Wait: time.Minute, Dual: 3, In: inner{Mode: "alpha", Ratio: 0.5}}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Fatalf("Defaults: %+v, want %+v", c, want)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.SortFlags = false // field order
	Bind(fs, &c)
	var names []string
	fs.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name+"="+f.DefValue+":"+f.Value.Type()) })
	if got, w := strings.Join(names, " "), "steps=10:int temp=1.2:float64 no-dynamic=false:bool seed=7:uint64 wait=1m0s:duration tags=[]:stringSlice dual=3:float64 mode=alpha:string ratio=0.5:float64 checked-n=0:int"; got != w {
		t.Errorf("flags\n got %s\nwant %s", got, w)
	}
	for _, tc := range []struct {
		args  []string
		check func(config) bool
	}{
		{[]string{"--steps", "3"}, func(c config) bool { return c.Steps == 3 }},
		{[]string{"--temp", "0.7"}, func(c config) bool { return c.Temp == float32(0.7) }},
		{[]string{"--no-dynamic"}, func(c config) bool { return !c.Dynamic }},
		{[]string{"--no-dynamic=false"}, func(c config) bool { return c.Dynamic }},
		{[]string{"--tags", "a,b", "--tags", "c"}, func(c config) bool { return fmt.Sprint(c.Tags) == "[a b c]" }},
		{[]string{"--mode", "b"}, func(c config) bool { return c.In.Mode == "beta" }},
		{[]string{"--mode", "gamma"}, func(c config) bool { return c.In.Mode == "gamma" }}, // kept for Check
	} {
		var c config
		Defaults(&c)
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		Bind(fs, &c)
		if err := fs.Parse(tc.args); err != nil || !tc.check(c) {
			t.Errorf("%v: %+v, %v", tc.args, c, err)
		}
		if tc.args[0] == "--mode" && fs.Lookup("mode").Value.String() != tc.args[1] {
			t.Errorf("%v: the flag prints %q, want the text given", tc.args, fs.Lookup("mode").Value.String())
		}
		if tc.args[0] == "--temp" && fs.Lookup("temp").Value.String() != "0.7" {
			t.Errorf("--temp 0.7 prints %q", fs.Lookup("temp").Value.String())
		}
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*config)
		want string // the errors, one a line, besides the Checker's own rule
	}{
		{"defaults", func(*config) {}, ""},
		{"int", func(c *config) { c.Steps = -1 }, "--steps: must be >= 0, got -1"},
		{"float32", func(c *config) { c.Temp = 0 }, "--temp: must be a finite value > 0, got 0"},
		{"inf", func(c *config) { c.Temp = float32(math.Inf(1)) }, "--temp: must be a finite value > 0, got +Inf"},
		{"duration", func(c *config) { c.Wait = 0 }, "--wait: must be a positive duration, got 0s"},
		{"want", func(c *config) { c.Dual = 1 }, "--dual: must be 0 or above 1, got 1"},
		{"when off", func(c *config) { c.In.Ratio = 2 }, ""},
		{"when on", func(c *config) { c.In.Mode, c.In.Ratio = "beta", 2 }, "--ratio: must be in (0, 1], got 2"},
		{"checker", func(c *config) { c.Sub.N = 0 }, "--checked-n: must be >= 1, got 0"},
		{"several", func(c *config) { c.Steps, c.Dual = -2, -1 }, "--steps: must be >= 0, got -2\n--dual: must be 0 or above 1, got -1"},
	} {
		var c config
		Defaults(&c)
		c.Sub.N = 1
		tc.mod(&c)
		want := "checked rule"
		if tc.want != "" {
			want = tc.want + "\n" + want
		}
		if err := Check(&c); err == nil || err.Error() != want {
			t.Errorf("%s: %v, want\n%s", tc.name, err, want)
		}
	}
}

func TestRangeWords(t *testing.T) {
	for _, tc := range []struct {
		spec string
		in   []float64
		out  []float64
	}{
		{">=0", []float64{0, 1e9}, []float64{-1e-12, math.NaN(), math.Inf(1)}},
		{">0", []float64{1e-12}, []float64{0, math.Inf(1)}},
		{"finite", []float64{-5, 5}, []float64{math.NaN(), math.Inf(-1)}},
		{"[0,1)", []float64{0, 0.999}, []float64{1, -0.1}},
		{"[0,1]", []float64{0, 1}, []float64{1.01}},
		{"(0,1]", []float64{1e-9, 1}, []float64{0}},
		{"0|>1", []float64{0, 1.0001}, []float64{1, 0.5, math.Inf(1)}},
	} {
		for _, v := range tc.in {
			var x float64 = v
			if ok, _ := inRange(reflectValue(&x), tc.spec); !ok {
				t.Errorf("%s refuses %v", tc.spec, v)
			}
		}
		for _, v := range tc.out {
			var x float64 = v
			if ok, _ := inRange(reflectValue(&x), tc.spec); ok {
				t.Errorf("%s accepts %v", tc.spec, v)
			}
		}
	}
}

// reflectValue is the value p points to, as Check sees a field.
func reflectValue(p *float64) reflect.Value { return reflect.ValueOf(p).Elem() }
