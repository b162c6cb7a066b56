package control

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

func cachedState() *pb.DesiredState {
	return &pb.DesiredState{Version: 41, DefaultRegion: "eu",
		Regions: []*pb.RegionState{{Name: "eu", Id: 1, Prefixes: []string{"10.1.0.0/16"}}},
		Mirrors: []*pb.MirrorEndpoint{{Name: "paris", Id: 1, Address: "192.0.2.10"}},
		Resources: []*pb.ResourceState{
			{Name: "disk", Id: 7, Vips: []*pb.VIP{{Address: "203.0.113.5", Port: 443, Protocol: pb.Protocol_PROTOCOL_TCP}}},
			{Name: "web", Id: 8, Vips: []*pb.VIP{{Address: "203.0.113.6", Port: 80, Protocol: pb.Protocol_PROTOCOL_TCP}}},
		},
		WeightSets: []*pb.WeightSet{{Weights: []*pb.MirrorWeight{{MirrorId: 1, Weight: 1}}}},
		TableSlots: 1024}
}

// TestCacheDamageRefused: a state cache cut short (a disk that lost the
// file's tail, a copy interrupted by an operator) or with a flipped byte
// is refused with the file named, never applied. The cache was the bare
// protobuf, and a protobuf cut at a field boundary decodes: the agent
// started on a state with fewer resources — their VIPs withdrawn, their
// traffic passed to the stack — for as long as no controller answered.
func TestCacheDamageRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.pb")
	want := cachedState()
	if err := writeCache(path, want); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := LoadCache(path); err != nil || !proto.Equal(st, want) {
		t.Fatalf("intact cache: %v %v", st, err)
	}
	damaged := map[string][]byte{}
	for n := 0; n < len(full); n++ {
		damaged["cut at "+itoa(n)] = full[:n]
	}
	for i := 0; i < len(full); i++ {
		b := append([]byte(nil), full...)
		b[i] ^= 0x01
		damaged["byte "+itoa(i)+" flipped"] = b
	}
	for name, b := range damaged {
		p := filepath.Join(dir, "damaged.pb")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := LoadCache(p)
		if err == nil && !proto.Equal(st, want) {
			t.Fatalf("%s: applied a different state (version %d, %d resources) without error",
				name, st.GetVersion(), len(st.GetResources()))
		}
		if err == nil && len(b) != len(full) {
			t.Fatalf("%s: accepted", name)
		}
		if err != nil && !strings.Contains(err.Error(), p) {
			t.Fatalf("%s: error %q does not name the file", name, err)
		}
	}
}

// TestCacheFromOlderAgent: a cache an older agent wrote (the bare
// protobuf) still loads after an upgrade.
func TestCacheFromOlderAgent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.pb")
	want := cachedState()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err := LoadCache(p); err != nil || !proto.Equal(st, want) {
		t.Fatalf("older cache: %v %v", st, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
