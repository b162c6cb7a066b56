package replicator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"
)

// Conflict is a losing write kept for inspection: two sites wrote a block
// and the other version won (by epoch, then hybrid clock, then site).
// Keeping the loser means a concurrent write is never silently discarded;
// an operator or application can merge it back.
type Conflict struct {
	Time   time.Time
	Block  uint64
	Winner Version
	Loser  Version
	Data   []byte // the losing block's content
}

// conflictLog appends conflicts to a file: records of
// [crc32c u32][len u32][unix-nanos u64][block u64][winner 16][loser 16][data].
type conflictLog struct {
	mu   sync.Mutex
	f    *os.File
	path string
	n    uint64
}

func openConflictLog(path string) (*conflictLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, ioError("open "+path, err)
	}
	cl := &conflictLog{f: f, path: path}
	cs, err := readConflicts(path, false)
	if err != nil {
		f.Close()
		return nil, err
	}
	cl.n = uint64(len(cs))
	return cl, nil
}

func putVer(b []byte, v Version) []byte {
	b = binary.LittleEndian.AppendUint32(b, v.Epoch)
	b = binary.LittleEndian.AppendUint64(b, v.Clock)
	return binary.LittleEndian.AppendUint32(b, v.Site)
}

func getVer(b []byte) Version {
	return Version{Epoch: binary.LittleEndian.Uint32(b), Clock: binary.LittleEndian.Uint64(b[4:]), Site: binary.LittleEndian.Uint32(b[12:])}
}

func (cl *conflictLog) add(c Conflict) error {
	rec := make([]byte, 8, 8+48+len(c.Data))
	rec = binary.LittleEndian.AppendUint64(rec, uint64(c.Time.UnixNano()))
	rec = binary.LittleEndian.AppendUint64(rec, c.Block)
	rec = putVer(rec, c.Winner)
	rec = putVer(rec, c.Loser)
	rec = append(rec, c.Data...)
	binary.LittleEndian.PutUint32(rec[4:], uint32(len(rec)-8))
	binary.LittleEndian.PutUint32(rec, crc32.Checksum(rec[4:], castagnoli))
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if _, err := cl.f.Write(rec); err != nil {
		return ioError("write "+cl.path, err)
	}
	if err := fdatasync(cl.f); err != nil {
		return ioError("sync "+cl.path, err)
	}
	cl.n++
	return nil
}

func (cl *conflictLog) count() uint64 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.n
}

func (cl *conflictLog) Close() error { return cl.f.Close() }

// ReadConflicts returns the conflicts recorded for the volume whose
// metadata is in metaDir.
func ReadConflicts(metaDir string) ([]Conflict, error) {
	return readConflicts(metaDir+"/conflicts.log", true)
}

func readConflicts(path string, data bool) ([]Conflict, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, ioError("open "+path, err)
	}
	defer f.Close()
	var out []Conflict
	hdr := make([]byte, 8)
	for {
		if _, err := io.ReadFull(f, hdr); err != nil {
			// A torn tail from a crash ends the log.
			return out, nil
		}
		n := binary.LittleEndian.Uint32(hdr[4:])
		if n < 48 || n > 48+64<<10 {
			return out, fmt.Errorf("%s: %w: record length %d", path, ErrCorrupt, n)
		}
		rec := make([]byte, 4+n)
		copy(rec, hdr[4:])
		if _, err := io.ReadFull(f, rec[4:]); err != nil {
			return out, nil
		}
		if crc32.Checksum(rec, castagnoli) != binary.LittleEndian.Uint32(hdr) {
			return out, nil
		}
		b := rec[4:]
		c := Conflict{Time: time.Unix(0, int64(binary.LittleEndian.Uint64(b))), Block: binary.LittleEndian.Uint64(b[8:]),
			Winner: getVer(b[16:]), Loser: getVer(b[32:])}
		if data {
			c.Data = b[48:]
		}
		out = append(out, c)
	}
}
