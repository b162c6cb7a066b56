package control

import (
	"github.com/premirror/premirror/internal/atomicfile"

	"fmt"
	"os"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// LoadCache reads the state a Client with CacheFile last applied. A
// restarting agent applies it (and calls SetApplied) before any controller
// answers, so it never falls back to an older state. A missing file
// returns (nil, nil); a corrupt one an error and nothing to apply.
func LoadCache(path string) (*pb.DesiredState, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state cache: %w", err)
	}
	st := &pb.DesiredState{}
	if err := proto.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("state cache %s: %w", path, err)
	}
	if st.GetVersion() == 0 {
		return nil, fmt.Errorf("state cache %s: no version", path)
	}
	return st, nil
}

// writeCache replaces path atomically, so a crash leaves the old or the new
// state, never half of one.
func writeCache(path string, st *pb.DesiredState) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, 0o600, b)
}
