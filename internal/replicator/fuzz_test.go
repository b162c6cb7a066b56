package replicator

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// FuzzJournalScan feeds arbitrary bytes to the journal's recovery scan:
// it must never panic, and whatever it accepts must be a well-formed
// prefix (scanning again finds the same records).
func FuzzJournalScan(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "seed")
	j, err := openJournal(path)
	if err != nil {
		f.Fatal(err)
	}
	c := &jcycle{cycle: 3, epoch: 1, entries: 1, index: map[uint64]int{}, digest: xxhash.New()}
	j.begin(c)
	j.manifest([]jentry{{ManifestEntry: wire.ManifestEntry{Block: 5, Version: Version{Epoch: 1, Clock: 9, Site: 2}}, src: srcNeed}})
	data := make([]byte, 4096)
	j.stage([]recvItem{{block: 5, ver: Version{Epoch: 1, Clock: 9, Site: 2}, data: data}}, []uint64{xxhash.Sum64(data)})
	j.commit(3, 1, c.digest.Sum64())
	j.Close()
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "j")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := openJournal(p)
		if err != nil {
			return
		}
		size, staged := j.size, len(j.staged)
		j.Close()
		j2, err := openJournal(p)
		if err != nil {
			t.Fatalf("reopen of a scanned journal: %v", err)
		}
		defer j2.Close()
		if j2.size != size || len(j2.staged) != staged {
			t.Fatalf("rescan differs: %d/%d bytes, %d/%d blocks", j2.size, size, len(j2.staged), staged)
		}
	})
}

// FuzzConflictLog feeds arbitrary bytes to the conflict log reader.
func FuzzConflictLog(f *testing.F) {
	dir := f.TempDir()
	cl, err := openConflictLog(filepath.Join(dir, "conflicts.log"))
	if err != nil {
		f.Fatal(err)
	}
	cl.add(Conflict{Block: 3, Winner: Version{Epoch: 2}, Loser: Version{Epoch: 1}, Data: []byte("loser")})
	cl.Close()
	seed, _ := os.ReadFile(filepath.Join(dir, "conflicts.log"))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "conflicts.log")
		os.WriteFile(p, b, 0o600)
		readConflicts(p, true)
	})
}
