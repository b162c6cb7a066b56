package control

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/atomicfile"
)

// cacheMagic starts a state cache: then come the payload's length (8
// bytes, big endian), its SHA-256 and the DesiredState protobuf. A bare
// protobuf cannot tell a file cut at a field boundary from a smaller
// state, and would apply it. Files without the magic are an older
// agent's bare protobuf (whose first byte is a field tag, never 'p').
var cacheMagic = []byte("pmstate1")

const cacheHeaderLen = 8 + 8 + sha256.Size

// LoadCache reads the state a Client with CacheFile last applied. A
// restarting agent applies it (and calls SetApplied) before any controller
// answers, so it never falls back to an older state. A missing file
// returns (nil, nil); a damaged one (cut short, corrupt, no version) an
// error naming the file and nothing to apply.
func LoadCache(path string) (*pb.DesiredState, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state cache: %w", err)
	}
	payload := b
	if bytes.HasPrefix(b, cacheMagic) {
		if len(b) < cacheHeaderLen {
			return nil, fmt.Errorf("state cache %s: cut short: %d bytes, the header alone is %d", path, len(b), cacheHeaderLen)
		}
		n := binary.BigEndian.Uint64(b[len(cacheMagic):])
		payload = b[cacheHeaderLen:]
		if n != uint64(len(payload)) {
			return nil, fmt.Errorf("state cache %s: cut short or extended: %d bytes of state, the header says %d", path, len(payload), n)
		}
		if sum := sha256.Sum256(payload); !bytes.Equal(sum[:], b[len(cacheMagic)+8:cacheHeaderLen]) {
			return nil, fmt.Errorf("state cache %s: checksum mismatch: the file is corrupt", path)
		}
	}
	st := &pb.DesiredState{}
	if err := proto.Unmarshal(payload, st); err != nil {
		return nil, fmt.Errorf("state cache %s: %w", path, err)
	}
	if st.GetVersion() == 0 {
		return nil, fmt.Errorf("state cache %s: no version", path)
	}
	return st, nil
}

// writeCache replaces path atomically, so a crash leaves the old or the new
// state, never half of one; the header catches what happens to the file
// afterwards.
func writeCache(path string, st *pb.DesiredState) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return err
	}
	hdr := make([]byte, 0, cacheHeaderLen)
	hdr = append(hdr, cacheMagic...)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(len(b)))
	sum := sha256.Sum256(b)
	hdr = append(hdr, sum[:]...)
	return atomicfile.WriteLocked(path, 0o600, hdr, b)
}
