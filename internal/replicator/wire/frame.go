package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame layout constants.
const (
	// FrameVersion is the frame format version written in every header.
	FrameVersion = 1
	// HeaderSize is the size of the frame header.
	HeaderSize = 12
	// TrailerSize is the size of the CRC-32C trailer.
	TrailerSize = 4
	// MaxPayload bounds a frame's payload so a hostile length cannot make a
	// reader allocate without limit. A Blocks frame of 256 raw 64 KiB blocks
	// still fits.
	MaxPayload = 24 << 20
)

var magic = [2]byte{'P', 'M'}

// Sentinel errors of the codec; callers branch on them with errors.Is.
var (
	// ErrCorrupt: the frame checksum does not match its bytes.
	ErrCorrupt = errors.New("corrupt frame")
	// ErrMalformed: the bytes do not decode as the message they claim to be.
	ErrMalformed = errors.New("malformed frame")
	// ErrFrameVersion: the header names a frame format this build cannot read.
	ErrFrameVersion = errors.New("unsupported frame format version")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Type identifies the message a frame carries.
type Type uint8

// Message types.
const (
	THello       Type = 1
	TWelcome     Type = 2
	TError       Type = 3
	TBlocks      Type = 4
	TAck         Type = 5
	TCycleBegin  Type = 6
	TManifest    Type = 7
	TNeed        Type = 8
	TCycleCommit Type = 9
	TFullBegin   Type = 10
	TFullEnd     Type = 11
	TMerkleReq   Type = 12
	TMerkleResp  Type = 13
	TReadReq     Type = 14
	TPresent     Type = 15
	maxType      Type = 15
)

var typeNames = [...]string{
	THello: "hello", TWelcome: "welcome", TError: "error", TBlocks: "blocks",
	TAck: "ack", TCycleBegin: "cycle-begin", TManifest: "manifest", TNeed: "need",
	TCycleCommit: "cycle-commit", TFullBegin: "full-begin", TFullEnd: "full-end",
	TMerkleReq: "merkle-req", TMerkleResp: "merkle-resp", TReadReq: "read-req",
	TPresent: "present",
}

// String names the type for logs and errors.
func (t Type) String() string {
	if t == 0 || t > maxType {
		return fmt.Sprintf("type(%d)", uint8(t))
	}
	return typeNames[t]
}

// BeginFrame appends a frame header for type t with a zero length to dst
// and returns the extended slice; the caller appends the payload and then
// calls EndFrame with the offset where the header starts. Building in place
// avoids copying megabyte payloads.
func BeginFrame(dst []byte, t Type) []byte {
	return append(dst, magic[0], magic[1], FrameVersion, byte(t), 0, 0, 0, 0, 0, 0, 0, 0)
}

// EndFrame fills in the payload length of the frame starting at start and
// appends its checksum.
func EndFrame(dst []byte, start int) ([]byte, error) {
	n := len(dst) - start - HeaderSize
	if n < 0 {
		return dst, fmt.Errorf("%w: frame shorter than header", ErrMalformed)
	}
	if n > MaxPayload {
		return dst, fmt.Errorf("%w: payload %d bytes exceeds %d", ErrMalformed, n, MaxPayload)
	}
	binary.LittleEndian.PutUint32(dst[start+8:], uint32(n))
	sum := crc32.Checksum(dst[start:], castagnoli)
	return binary.LittleEndian.AppendUint32(dst, sum), nil
}

// Message is implemented by every message type.
type Message interface {
	// Type is the frame type carrying the message.
	Type() Type
	// AppendPayload appends the encoded message to dst.
	AppendPayload(dst []byte) []byte
	// DecodePayload replaces the receiver with the decoded payload p. Byte
	// slices in the result may alias p.
	DecodePayload(p []byte) error
}

// AppendFrame appends m as a complete frame.
func AppendFrame(dst []byte, m Message) ([]byte, error) {
	start := len(dst)
	dst = BeginFrame(dst, m.Type())
	dst = m.AppendPayload(dst)
	return EndFrame(dst, start)
}

// Frame is one decoded frame. Payload aliases the Reader's buffer (or the
// buffer passed to ParseFrame) and is valid until it is reused.
type Frame struct {
	Type    Type
	Payload []byte
}

// Decode decodes the frame's payload into m after checking the type.
func (f Frame) Decode(m Message) error {
	if f.Type != m.Type() {
		return fmt.Errorf("%w: got %s frame, want %s", ErrMalformed, f.Type, m.Type())
	}
	if err := m.DecodePayload(f.Payload); err != nil {
		return fmt.Errorf("decode %s: %w", f.Type, err)
	}
	return nil
}

func checkHeader(h []byte) (Type, int, error) {
	if h[0] != magic[0] || h[1] != magic[1] {
		return 0, 0, fmt.Errorf("%w: bad magic %#x%#x", ErrMalformed, h[0], h[1])
	}
	if h[2] != FrameVersion {
		return 0, 0, fmt.Errorf("%w: %d (this build reads %d)", ErrFrameVersion, h[2], FrameVersion)
	}
	t := Type(h[3])
	if t == 0 || t > maxType {
		return 0, 0, fmt.Errorf("%w: unknown message type %d", ErrMalformed, h[3])
	}
	if h[4]|h[5]|h[6]|h[7] != 0 {
		return 0, 0, fmt.Errorf("%w: reserved header bytes set", ErrMalformed)
	}
	n := binary.LittleEndian.Uint32(h[8:])
	if n > MaxPayload {
		return 0, 0, fmt.Errorf("%w: payload length %d exceeds %d", ErrMalformed, n, MaxPayload)
	}
	return t, int(n), nil
}

// ParseFrame decodes one frame from the start of b and returns it with the
// number of bytes consumed. It is the in-memory twin of Reader.Next.
func ParseFrame(b []byte) (Frame, int, error) {
	if len(b) < HeaderSize {
		return Frame{}, 0, fmt.Errorf("%w: %d bytes, header needs %d", ErrMalformed, len(b), HeaderSize)
	}
	t, n, err := checkHeader(b[:HeaderSize])
	if err != nil {
		return Frame{}, 0, err
	}
	total := HeaderSize + n + TrailerSize
	if len(b) < total {
		return Frame{}, 0, fmt.Errorf("%w: frame of %d bytes truncated to %d", ErrMalformed, total, len(b))
	}
	want := binary.LittleEndian.Uint32(b[HeaderSize+n:])
	if crc32.Checksum(b[:HeaderSize+n], castagnoli) != want {
		return Frame{}, 0, fmt.Errorf("%w: %s frame checksum mismatch", ErrCorrupt, t)
	}
	return Frame{Type: t, Payload: b[HeaderSize : HeaderSize+n]}, total, nil
}

// Reader reads frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r   io.Reader
	buf []byte
	// Count is the number of bytes read so far (frames and trailers).
	Count int64
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next reads the next frame. The payload is valid until the next call.
func (r *Reader) Next() (Frame, error) {
	return r.NextInto(&r.buf)
}

// NextInto reads the next frame into *buf (grown as needed), so a caller
// handing frames to another goroutine can rotate buffers.
func (r *Reader) NextInto(buf *[]byte) (Frame, error) {
	b := *buf
	if cap(b) < HeaderSize {
		b = make([]byte, HeaderSize, 64<<10)
	}
	b = b[:HeaderSize]
	if _, err := io.ReadFull(r.r, b); err != nil {
		*buf = b
		if err == io.ErrUnexpectedEOF {
			return Frame{}, fmt.Errorf("%w: stream ended inside a frame header", ErrMalformed)
		}
		return Frame{}, err
	}
	t, n, err := checkHeader(b)
	if err != nil {
		*buf = b
		return Frame{}, err
	}
	total := HeaderSize + n + TrailerSize
	if cap(b) < total {
		nb := make([]byte, total)
		copy(nb, b)
		b = nb
	}
	b = b[:total]
	*buf = b
	if _, err := io.ReadFull(r.r, b[HeaderSize:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return Frame{}, fmt.Errorf("%w: stream ended inside a %s frame", ErrMalformed, t)
		}
		return Frame{}, err
	}
	r.Count += int64(total)
	want := binary.LittleEndian.Uint32(b[HeaderSize+n:])
	if crc32.Checksum(b[:HeaderSize+n], castagnoli) != want {
		return Frame{}, fmt.Errorf("%w: %s frame checksum mismatch", ErrCorrupt, t)
	}
	return Frame{Type: t, Payload: b[HeaderSize : HeaderSize+n]}, nil
}

// Read reads the next frame and decodes it into m. A frame of another
// type is an error, except an Error frame, which is returned as *RemoteError.
func (r *Reader) Read(m Message) error {
	f, err := r.Next()
	if err != nil {
		return err
	}
	if f.Type == TError && m.Type() != TError {
		var e Error
		if err := f.Decode(&e); err != nil {
			return err
		}
		return &RemoteError{Code: e.Code, Msg: e.Msg}
	}
	return f.Decode(m)
}
