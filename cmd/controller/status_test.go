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

// An agent's words (its NACK error, site, outer sources) reach the
// operator's terminal: control characters are shown escaped, never sent.
func TestPrintStatusEscapesAgentText(t *testing.T) {
	var buf bytes.Buffer
	ctlOut = &buf
	defer func() { ctlOut = os.Stdout }()
	st := &pb.StatusResponse{Leader: "c1", Version: 4, Agents: []*pb.AgentStatus{{Node: "edge-1", Site: "eu",
		NackedVersion: 4, NackError: "bad\x1b[2J\x1b]0;owned\x07\nversion"}}}
	if err := printStatus(st, nil); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `"bad\x1b[2J\x1b]0;owned\a\nversion"`) {
		t.Fatalf("agent text not escaped:\n%q", out)
	}
	if !strings.Contains(out, "edge-1") || strings.Contains(out, `"edge-1"`) {
		t.Fatalf("plain text altered:\n%s", out)
	}
}
