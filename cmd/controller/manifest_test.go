package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestShippedManifestFlags: the controller StatefulSet in deploy/ passes
// flags `controller run` accepts (deploy's own tests check the manifest's
// shape; only this package knows the flags).
func TestShippedManifestFlags(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kubernetes/controller.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var o struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct{ Args []string }
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		if o.Kind == "StatefulSet" {
			args = o.Spec.Template.Spec.Containers[0].Args
		}
	}
	if len(args) < 2 || args[0] != "run" {
		t.Fatalf("StatefulSet args %v: want run and its flags", args)
	}
	// Parsing stops at -h after every flag before it was accepted.
	err = ctlRun(context.Background(), append(args[1:], "-h"))
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("controller run %s: %v", strings.Join(args[1:], " "), err)
	}
}
