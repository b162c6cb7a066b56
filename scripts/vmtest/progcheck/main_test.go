package main

import (
	"bytes"
	"errors"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
)

// TestHostKernel loads the real programs on the kernel running the test:
// both must be accepted, with the kernel's own statistics reported.
func TestHostKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs")
	}
	var out bytes.Buffer
	if err := run(&out, loaders); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, l := range loaders {
		re := regexp.MustCompile(`(?m)^VMTEST-PROG ` + l.name + ` OK verified_insns=[1-9][0-9]* jited_bytes=[1-9][0-9]*$`)
		if !re.Match(out.Bytes()) {
			t.Errorf("no OK line with statistics for %s in:\n%s", l.name, out.String())
		}
	}
}

// TestRejectedProgram: a verifier failure is reported with every log line
// and fails the run; the other programs are still checked.
func TestRejectedProgram(t *testing.T) {
	ve := &ebpf.VerifierError{Cause: syscall.EINVAL, Log: []string{"0: (b7) r0 = 0", "R1 invalid mem access 'scalar'"}}
	other := errors.New("map create: operation not permitted")
	var loaded []string
	mk := func(name string, err error) loader {
		return loader{name, func() (*ebpf.Program, func() error, error) {
			loaded = append(loaded, name)
			return nil, nil, err
		}}
	}
	var out bytes.Buffer
	err := run(&out, []loader{mk("a", ve), mk("b", other)})
	if !errors.Is(err, errRejected) {
		t.Fatalf("run: %v, want errRejected", err)
	}
	if strings.Join(loaded, ",") != "a,b" {
		t.Fatalf("loaded %v: a failure stopped the check", loaded)
	}
	want := []string{
		"VMTEST-PROG a FAIL ",
		"  verifier: 0: (b7) r0 = 0\n",
		"  verifier: R1 invalid mem access 'scalar'\n",
		"VMTEST-PROG b FAIL map create: operation not permitted\n",
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, out.String())
		}
	}
}
