package yamlstrict

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type dur time.Duration

func (d *dur) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	*d = dur(v)
	return err
}

type inner struct {
	Port   int    `yaml:"port"`
	Weight uint32 `yaml:"weight"`
}

type common struct {
	Slots int `yaml:"slots"`
}

type doc struct {
	Count   int                          `yaml:"count"`
	Ratio   float64                      `yaml:"ratio"`
	Name    string                       `yaml:"name"`
	Inner   *inner                       `yaml:"inner"`
	List    []inner                      `yaml:"list"`
	Ports   []int64                      `yaml:"ports"`
	Pair    [2]uint64                    `yaml:"pair"`
	Routes  map[string]map[string]uint32 `yaml:"routes"`
	Timeout dur                          `yaml:"timeout"`
	Hidden  int                          `yaml:"-"`
	common  `yaml:",inline"`
	Other   struct {
		Common2 common `yaml:",inline"`
	} `yaml:"other"`
}

func TestWholeNumbers(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"count: 3", ""},
		{"count: 1e3", ""},
		{"count: 3.0", ""},
		{"ratio: 0.5\nname: 1.5", ""},
		{"timeout: 1.5s", ""},
		{"count: 2.5", "count: 2.5 is not a whole number (line 1)"},
		{"inner: {port: 80.5}", "inner.port: 80.5 is not a whole number (line 1)"},
		{"list: [{weight: 1}, {weight: 0.5}]", "list[1].weight: 0.5 is not a whole number"},
		{"ports: [1, 2, 3.25]", "ports[2]: 3.25"},
		{"pair: [1, 1.5]", "pair[1]: 1.5"},
		{"routes: {eu: {paris: 3, dallas: 0.5}}", `routes["eu"]["dallas"]: 0.5`},
		{"slots: 4.5", "slots: 4.5"},
		{"other: {slots: 1.5}", "other.slots: 1.5"},
		{"a: &w 0.5\nroutes: {eu: {paris: *w}}", `routes["eu"]["paris"]: 0.5`},
		{"unknown: 1.5\ncount: [1.5]", ""},
	} {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(tc.in), &n); err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		err := WholeNumbers(&n, &doc{})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestCheckCustom(t *testing.T) {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("inner: {port: 1}\ntimeout: soon\n"), &n); err != nil {
		t.Fatal(err)
	}
	var seen []string
	err := Check(&n, &doc{}, func(path string, n *yaml.Node, typ reflect.Type) error {
		seen = append(seen, path+"="+n.Value+" "+typ.Name())
		return nil
	})
	if err != nil || !slices.Equal(seen, []string{"timeout=soon dur"}) {
		t.Fatalf("custom saw %v, %v", seen, err)
	}
}

// FuzzWholeNumbers: any document (aliases, cycles, wrong shapes) is
// walked without a panic.
func FuzzWholeNumbers(f *testing.F) {
	f.Add([]byte("count: 2.5\nroutes: {eu: {paris: 0.5}}\nlist: [{port: 1}]"))
	f.Add([]byte("a: &a [*a]\ninner: *a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var n yaml.Node
		if yaml.Unmarshal(b, &n) != nil {
			return
		}
		_ = WholeNumbers(&n, &doc{})
	})
}

func TestPaths(t *testing.T) {
	got := Paths(reflect.TypeFor[*doc]())
	want := []string{"count", "inner", "inner.port", "inner.weight", "list", "list[].port", "list[].weight", "name",
		"other", "other.slots", "pair", "ports", "ratio", "routes", "slots", "timeout"}
	if !slices.Equal(got, want) {
		t.Fatalf("paths\n%v\nwant\n%v", got, want)
	}
}
