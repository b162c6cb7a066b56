package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// TestPrintStatusSaysWhy: the status names the mirrors the current
// version routes around and why, and the copies not served.
func TestPrintStatusSaysWhy(t *testing.T) {
	var buf bytes.Buffer
	ctlOut = &buf
	defer func() { ctlOut = os.Stdout }()
	st := &pb.StatusResponse{Leader: "c1", Version: 4, Routes: &pb.RouteSummary{Routes: 3,
		MirrorsDown: []*pb.MirrorDown{{Mirror: "m-us", Why: "probes"}, {Mirror: "m-ap", Why: "host: gue_port_is_probe_port"}},
		Unserved:    []*pb.UnservedCopy{{Mirror: "m-eu", Resource: "web"}}, Draining: []string{"m-core"}}}
	if err := printStatus(st, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"down:    mirror m-us (probes)", "down:    mirror m-ap (host: gue_port_is_probe_port)",
		"unserved: web on mirror m-eu (its host's service check fails)", "draining: mirror m-core (set by the operator"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, buf.String())
		}
	}
}
