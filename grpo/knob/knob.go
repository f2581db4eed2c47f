// Package knob defines a configuration's settings once, in struct tags, and derives from them
// the command-line flags (github.com/spf13/pflag), the defaults and the range checks.
//
// A field is a knob when it has a flag tag; its other tags say the rest:
//
//		KLCoef float64 `flag:"kl-coef" default:"1e-4" check:">=0" help:"beta, the weight of ..."`
//
//	  - flag: the flag's name; ",negate" after it makes a bool flag the field's negation
//	    (flag "no-dynamic-sampling" on the field DynamicSampling).
//	  - default: the value Defaults sets (parsed as the flag parses it); without it the field's
//	    zero value.
//	  - check: the range Check enforces (Range lists the forms); want: replaces the range's own
//	    words in the error; without check, it documents a rule that the configuration's
//	    Checker enforces in code (Knob.Range).
//	  - when: "Field=value": the knob is checked only when the sibling Field prints as value
//	    (a policy loss's own knobs).
//	  - help: the flag's usage text.
//
// Struct fields without a flag tag are walked into (nested configurations), in field order.
// Supported field types: bool, int, uint64, float64, float32, string and the string kinds,
// []string and time.Duration; a string kind whose pointer implements encoding.TextUnmarshaler
// is parsed by it when the flag is set (and keeps the given text as its flag value; a text
// it refuses is set as is, for Check's Checker to report).
package knob

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// A Knob is one tagged field of a configuration.
type Knob struct {
	// Name is the flag's name (kl-coef); Field the Go path of the field (Trainer.Loss.KLCoef).
	Name, Field string
	// Help is the usage text; Default the default tag ("" when none); Check and Want the range
	// and its override words; When the condition of the check.
	Help, Default, Check, Want, When string
	// Negate: the flag is the negation of the bool field.
	Negate bool

	v reflect.Value // the field (addressable)
}

// List returns the knobs of the struct that ptr points to, in field order, nested structs in
// place.
func List(ptr any) []Knob {
	v := reflect.ValueOf(ptr)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic(fmt.Sprintf("knob: %T is not a pointer to a struct", ptr))
	}
	var ks []Knob
	walk(v.Elem(), "", &ks)
	return ks
}

func walk(v reflect.Value, prefix string, ks *[]Knob) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, ok := f.Tag.Lookup("flag")
		if !ok {
			if f.Type.Kind() == reflect.Struct && f.IsExported() {
				walk(v.Field(i), prefix+f.Name+".", ks)
			}
			continue
		}
		name, opt, _ := strings.Cut(name, ",")
		*ks = append(*ks, Knob{
			Name: name, Field: prefix + f.Name, Help: f.Tag.Get("help"), Default: f.Tag.Get("default"),
			Check: f.Tag.Get("check"), Want: f.Tag.Get("want"), When: f.Tag.Get("when"),
			Negate: opt == "negate", v: v.Field(i),
		})
		if !f.IsExported() {
			panic("knob: field " + prefix + f.Name + " is not exported")
		}
	}
}

// Defaults sets every knob of the struct ptr points to that has a default tag to that value;
// the others keep theirs. A default that does not parse is a programming error: it panics.
func Defaults(ptr any) {
	for _, k := range List(ptr) {
		if k.Default == "" {
			continue
		}
		if err := k.value().Set(k.Default); err != nil {
			panic(fmt.Sprintf("knob: %s: default %q: %v", k.Field, k.Default, err))
		}
	}
}

// Bind declares a flag in fs for every knob of the struct ptr points to, in field order,
// bound to the field: its current value is the flag's default.
func Bind(fs *pflag.FlagSet, ptr any) {
	for _, k := range List(ptr) {
		val := k.value()
		f := fs.VarPF(val, k.Name, "", k.Help)
		if val.Type() == "bool" {
			f.NoOptDefVal = "true"
		}
	}
}

// value is the knob's field as a pflag.Value.
func (k Knob) value() pflag.Value {
	v := k.v
	if v.Kind() == reflect.String {
		if u, ok := v.Addr().Interface().(encoding.TextUnmarshaler); ok {
			return &textValue{u: u, v: v, text: v.String()}
		}
	}
	p := v.Addr().Interface()
	fs := pflag.NewFlagSet("", pflag.ContinueOnError) // borrows pflag's own values
	switch v.Kind() {
	case reflect.Bool:
		if k.Negate {
			return &negValue{p: p.(*bool)}
		}
		fs.BoolVar(p.(*bool), "x", *p.(*bool), "")
	case reflect.Int:
		fs.IntVar(p.(*int), "x", *p.(*int), "")
	case reflect.Int64:
		d, ok := p.(*time.Duration)
		if !ok {
			panic("knob: " + k.Field + ": unsupported type " + v.Type().String())
		}
		fs.DurationVar(d, "x", *d, "")
	case reflect.Uint64:
		fs.Uint64Var(p.(*uint64), "x", *p.(*uint64), "")
	case reflect.Float64:
		fs.Float64Var(p.(*float64), "x", *p.(*float64), "")
	case reflect.Float32:
		return (*float32Value)(p.(*float32))
	case reflect.String:
		sp := v.Addr().Convert(reflect.TypeFor[*string]()).Interface().(*string)
		fs.StringVar(sp, "x", *sp, "")
	case reflect.Slice:
		sp, ok := p.(*[]string)
		if !ok {
			panic("knob: " + k.Field + ": unsupported type " + v.Type().String())
		}
		fs.StringSliceVar(sp, "x", *sp, "")
	default:
		panic("knob: " + k.Field + ": unsupported type " + v.Type().String())
	}
	return fs.Lookup("x").Value
}

// float32Value is a float32 field as a flag that reads and prints as a float64 one ("float"):
// it parses as float64 and rounds to float32, and prints the shortest decimal of the float32
// (1.2, not 1.2000000476837158).
type float32Value float32

func (f *float32Value) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	*f = float32Value(v)
	return nil
}
func (f *float32Value) Type() string { return "float64" }
func (f *float32Value) String() string {
	return strconv.FormatFloat(float64(*f), 'g', -1, 32)
}

// negValue is a bool flag that sets its field to the negation.
type negValue struct{ p *bool }

func (n *negValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*n.p = !v
	return nil
}
func (n *negValue) Type() string     { return "bool" }
func (n *negValue) IsBoolFlag() bool { return true }
func (n *negValue) String() string   { return strconv.FormatBool(!*n.p) }

// textValue is a string-kind field parsed by its UnmarshalText (which may map a name to
// another: mse to k2); it prints the text given. A name that does not parse is kept in the
// field as given, for the configuration's own check to report with the other knobs out of
// range (all together, before any work).
type textValue struct {
	u    encoding.TextUnmarshaler
	v    reflect.Value
	text string
}

func (t *textValue) Set(s string) error {
	if err := t.u.UnmarshalText([]byte(s)); err != nil {
		t.v.SetString(s)
	}
	t.text = s
	return nil
}
func (t *textValue) Type() string   { return "string" }
func (t *textValue) String() string { return t.text }

// Error is a knob whose value is out of range: "--lr: must be a finite value >= 0, got -5e-05".
type Error struct {
	Flag, Want string
	Got        any
}

func (e *Error) Error() string { return fmt.Sprintf("--%s: %s, got %v", e.Flag, e.Want, e.Got) }

// Checker is a nested configuration that checks its own knobs (its ranges and the rules
// between them); Check calls it instead of walking into it.
type Checker interface{ CheckKnobs() error }

// Check checks every knob of the struct ptr points to that has a check tag (and whose when
// condition holds) and returns all those out of range, joined, each an *Error naming its flag.
// A nested struct that is a Checker (through its pointer) checks itself.
//
// The ranges (check tag) are, for ints: ">=N"; for floats: ">=0" and ">0" (finite), "finite",
// "[0,1)", "[0,1]", "(0,1]", "0|>1" (0 or a finite value above 1); for durations: ">0".
func Check(ptr any) error {
	v := reflect.ValueOf(ptr).Elem()
	ks := List(ptr)
	var errs []error
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if _, ok := f.Tag.Lookup("flag"); ok || !f.IsExported() || f.Type.Kind() != reflect.Struct {
			continue
		}
		if c, ok := v.Field(i).Addr().Interface().(Checker); ok {
			errs = append(errs, c.CheckKnobs())
		} else {
			errs = append(errs, Check(v.Field(i).Addr().Interface()))
		}
	}
	var own []error
	for _, k := range ks {
		if strings.Contains(k.Field, ".") || k.Check == "" || !k.holds(ks) {
			continue // nested knobs were checked above
		}
		ok, want := inRange(k.v, k.Check)
		if k.Want != "" {
			want = k.Want
		}
		if !ok {
			own = append(own, &Error{Flag: k.Name, Want: want, Got: k.v.Interface()})
		}
	}
	return errors.Join(append(own, errs...)...)
}

// Range says in words the range Check enforces on k ("" when none): the range tag's words (or
// its want tag) and, with a when tag, the flag and value it applies with
// ("must be in [0, 1) (with --policy-loss gspo)"). ks are the knobs k was listed with.
//
// A want tag without a check tag documents a rule the configuration's Checker enforces in code
// (a rule between knobs).
func (k Knob) Range(ks []Knob) string {
	want := k.Want
	if k.Check != "" && want == "" {
		_, want = inRange(k.v, k.Check)
	}
	if want == "" {
		return ""
	}
	if k.When != "" {
		field, value, _ := strings.Cut(k.When, "=")
		parent := k.Field[:strings.LastIndex(k.Field, ".")+1]
		for _, o := range ks {
			if o.Field == parent+field && o.v.Kind() != reflect.Bool { // a bool's want says it
				want += fmt.Sprintf(" (with --%s %s)", o.Name, value)
			}
		}
	}
	return want
}

// holds reports whether k's when condition holds: its sibling field prints as the value.
func (k Knob) holds(ks []Knob) bool {
	if k.When == "" {
		return true
	}
	field, want, _ := strings.Cut(k.When, "=")
	parent := k.Field[:strings.LastIndex(k.Field, ".")+1]
	for _, o := range ks {
		if o.Field == parent+field {
			return fmt.Sprint(o.v.Interface()) == want
		}
	}
	// The sibling is not a knob: find it in the struct holding k.
	panic("knob: " + k.Field + ": when names " + field + ", not a knob beside it")
}

// inRange checks v against the range spec and says the range in words.
func inRange(v reflect.Value, spec string) (bool, string) {
	if d, ok := v.Interface().(time.Duration); ok {
		if spec != ">0" {
			panic("knob: duration range " + spec)
		}
		return d > 0, "must be a positive duration"
	}
	if v.CanInt() {
		n, err := strconv.ParseInt(strings.TrimPrefix(spec, ">="), 10, 64)
		if err != nil || !strings.HasPrefix(spec, ">=") {
			panic("knob: int range " + spec)
		}
		return v.Int() >= n, fmt.Sprintf("must be >= %d", n)
	}
	if !v.CanFloat() {
		panic("knob: range on " + v.Type().String())
	}
	x := v.Float()
	fin := !math.IsNaN(x) && !math.IsInf(x, 0)
	switch spec {
	case ">=0":
		return x >= 0 && fin, "must be a finite value >= 0"
	case ">0":
		return x > 0 && fin, "must be a finite value > 0"
	case "finite":
		return fin, "must be a finite value"
	case "[0,1)":
		return x >= 0 && x < 1, "must be in [0, 1)"
	case "[0,1]":
		return x >= 0 && x <= 1, "must be in [0, 1]"
	case "(0,1]":
		return x > 0 && x <= 1, "must be in (0, 1]"
	case "0|>1":
		return x == 0 || x > 1 && fin, "must be 0 (off) or a finite value > 1"
	}
	panic("knob: float range " + spec)
}
