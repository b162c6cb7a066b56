package replicator

import (
	"github.com/premirror/premirror/internal/atomicfile"

	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Role is what a volume does on this node.
type Role string

// Roles.
const (
	// RolePrimary volumes take writes and ship them to mirrors.
	RolePrimary Role = "primary"
	// RoleMirror volumes receive copies; local writes are rejected.
	RoleMirror Role = "mirror"
)

// volState is the volume's small, rarely changing state, kept as JSON and
// replaced atomically (write temp, fsync, rename, fsync dir).
type volState struct {
	Format    int      `json:"format"`
	Lineage   string   `json:"lineage"` // hex; identity of this volume's data
	BlockSize int      `json:"block_size"`
	Blocks    uint64   `json:"blocks"`
	Role      Role     `json:"role"`
	Epoch     uint64   `json:"epoch"`
	Fenced    bool     `json:"fenced,omitempty"` // a newer epoch exists: writes rejected
	Peers     []string `json:"peers,omitempty"`  // downstream peers with change tracking

	// Mirror side: what the volume holds from its source.
	SourceLineage string `json:"source_lineage,omitempty"`
	Cycle         uint64 `json:"cycle,omitempty"`        // last committed delta cycle
	Inconsistent  bool   `json:"inconsistent,omitempty"` // a copy is incomplete or no cycle since
	Empty         bool   `json:"empty,omitempty"`        // created, nothing received yet
	// ZeroImage: createMirror made the image itself (a new, sparse file),
	// so it is known all zero until the first copy writes to it. An image
	// or device that already existed may hold anything.
	ZeroImage   bool   `json:"zero_image,omitempty"`
	FullActive  bool   `json:"full_active,omitempty"` // a full/selective copy can resume
	FullSession uint64 `json:"full_session,omitempty"`
	FullNext    uint64 `json:"full_next,omitempty"`
	Selective   bool   `json:"selective,omitempty"`
	// CycleAsOf is when the newest applied (non-repair) cycle's snapshot
	// was taken at the source, in Unix nanoseconds on this node's clock.
	CycleAsOf int64 `json:"cycle_as_of_unix_nano,omitempty"`
}

const stateFile = "state.json"

func newLineage() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

func lineageBytes(s string) [16]byte {
	var out [16]byte
	b, err := hex.DecodeString(s)
	if err == nil {
		copy(out[:], b)
	}
	return out
}

func lineageString(b [16]byte) string {
	if b == ([16]byte{}) {
		return ""
	}
	return hex.EncodeToString(b[:])
}

func loadState(dir string) (volState, error) {
	var st volState
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w: %v", filepath.Join(dir, stateFile), ErrCorrupt, err)
	}
	if st.Format != 1 {
		return st, fmt.Errorf("%s: unsupported format %d", filepath.Join(dir, stateFile), st.Format)
	}
	return st, nil
}

func saveState(dir string, st volState) error {
	st.Format = 1
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, stateFile)
	return ioError("write "+path, atomicfile.Write(path, 0o644, append(b, '\n')))
}
