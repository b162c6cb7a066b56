package replicator

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/premirror/premirror/internal/replicator/wire"
)

// Sentinel errors. Callers branch on them with errors.Is; the peer's
// errors arrive as the same sentinels (see remoteError).
var (
	// ErrNoSpace: a disk the replicator writes to is full.
	ErrNoSpace = errors.New("disk full")
	// ErrPermission: the replicator may not open or write a file.
	ErrPermission = errors.New("permission denied")
	// ErrMirrorTooSmall: the mirror's image cannot hold the source volume.
	ErrMirrorTooSmall = errors.New("mirror smaller than source")
	// ErrIncompatible: the peer speaks no protocol version in common.
	ErrIncompatible = errors.New("incompatible peer version")
	// ErrFenced: an epoch newer than the writer's exists; the writer was
	// deposed and its writes are rejected.
	ErrFenced = errors.New("fenced by a newer epoch")
	// ErrCorrupt: a checksum did not match; nothing of the data was applied.
	ErrCorrupt = errors.New("corrupt data")
	// ErrProtocol: the peer sent an unexpected or malformed frame.
	ErrProtocol = errors.New("protocol violation")
	// ErrUnknownVolume: no volume of that name is configured.
	ErrUnknownVolume = errors.New("unknown volume")
	// ErrBusy: another replication session holds the volume.
	ErrBusy = errors.New("volume busy")
	// ErrGeometry: block sizes differ or an image is not a whole number of blocks.
	ErrGeometry = errors.New("volume geometry mismatch")
	// ErrLineage: the mirror holds another volume's data; a full copy is needed.
	ErrLineage = errors.New("mirror holds another volume")
	// ErrNotPrimary: a write was sent to a mirror.
	ErrNotPrimary = errors.New("volume is not a writable primary")
	// ErrNotMirror: a push targeted a primary of the same epoch (split brain).
	ErrNotMirror = errors.New("target volume is a primary")
	// ErrUnauthorized: the peer's certificate is not allowed for the volume.
	ErrUnauthorized = errors.New("peer not authorized")
	// ErrInconsistent: the volume's state does not allow the operation (for
	// example reading a mirror whose first copy is incomplete).
	ErrInconsistent = errors.New("volume inconsistent")
	// ErrNoQuorum: fewer copies than the quorum answered.
	ErrNoQuorum = errors.New("quorum not reached")
	// ErrUnknownPeer: no peer of that name is configured.
	ErrUnknownPeer = errors.New("peer not configured")
	// ErrClosed: the volume or node is closed.
	ErrClosed = errors.New("closed")
)

// ioError classifies an I/O error: disk full and permission failures get
// their sentinel so the operator sees the cause first.
func ioError(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%s: %w: %w", what, ErrNoSpace, err)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%s: %w: %w", what, ErrPermission, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

var codeSentinels = []struct {
	code wire.Code
	err  error
}{
	{wire.CodeIncompatible, ErrIncompatible},
	{wire.CodeFenced, ErrFenced},
	{wire.CodeTooSmall, ErrMirrorTooSmall},
	{wire.CodeNoSpace, ErrNoSpace},
	{wire.CodePermission, ErrPermission},
	{wire.CodeCorrupt, ErrCorrupt},
	{wire.CodeProtocol, ErrProtocol},
	{wire.CodeUnknownVolume, ErrUnknownVolume},
	{wire.CodeBusy, ErrBusy},
	{wire.CodeGeometry, ErrGeometry},
	{wire.CodeLineage, ErrLineage},
	{wire.CodeNotMirror, ErrNotMirror},
	{wire.CodeUnauthorized, ErrUnauthorized},
	{wire.CodeInconsistent, ErrInconsistent},
}

// codeOf maps a local error to the code sent to the peer.
func codeOf(err error) wire.Code {
	for _, cs := range codeSentinels {
		if errors.Is(err, cs.err) {
			return cs.code
		}
	}
	if errors.Is(err, wire.ErrCorrupt) || errors.Is(err, wire.ErrBlockChecksum) {
		return wire.CodeCorrupt
	}
	if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrFrameVersion) {
		return wire.CodeProtocol
	}
	return wire.CodeInternal
}

// remoteError turns an Error frame into the matching sentinel, so a
// caller checks errors.Is(err, ErrMirrorTooSmall) whichever side failed.
func remoteError(err error) error {
	var re *wire.RemoteError
	if !errors.As(err, &re) {
		return err
	}
	for _, cs := range codeSentinels {
		if cs.code == re.Code {
			return fmt.Errorf("%w: %s", cs.err, re.Error())
		}
	}
	return re
}

// wireError classifies a codec error from the peer's stream.
func wireError(err error) error {
	switch {
	case errors.Is(err, wire.ErrCorrupt), errors.Is(err, wire.ErrBlockChecksum):
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	case errors.Is(err, wire.ErrMalformed), errors.Is(err, wire.ErrFrameVersion):
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return remoteError(err)
}

// peerError turns an Error frame from the peer into the matching sentinel
// error (or a protocol error if the frame itself is bad).
func peerError(f wire.Frame) error {
	var e wire.Error
	if err := f.Decode(&e); err != nil {
		return wireError(err)
	}
	return remoteError(&wire.RemoteError{Code: e.Code, Msg: e.Msg})
}
