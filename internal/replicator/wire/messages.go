package wire

import (
	"encoding/binary"
	"fmt"
)

// Protocol versions this build speaks. Hello carries a range; the server
// picks the highest common version or answers CodeIncompatible.
//
// Version 2 adds ReadReq.Flags (ReadHeld) and KindAbsent block entries, so
// a quorum read learns which blocks a selective mirror holds instead of
// making it fetch them. A client sends either only on a version 2 session.
const (
	MinProto uint16 = 1
	MaxProto uint16 = 2
)

// Limits enforced by the decoders.
const (
	MaxName      = 255      // node and volume names
	MaxErrorText = 4096     // Error.Msg
	MaxBlockSize = 64 << 10 // largest block size a volume may use
	MaxEntries   = 1 << 20  // entries, indices, extents per message
)

// Op is what a session does; it is chosen by the client in Hello.
type Op uint8

// Session operations.
const (
	OpFull      Op = 1 // stream every non-zero block, resumable
	OpDelta     Op = 2 // ship one or more change cycles
	OpSelective Op = 3 // stream named extents only
	OpVerify    Op = 4 // Merkle comparison (and repair through a cycle)
	OpRead      Op = 5 // read blocks (read-through, quorum reads)
	OpStatus    Op = 6 // Welcome only
	OpSyncWrite Op = 7 // synchronous writes of the quorum write path
	maxOp       Op = 7
)

var opNames = [...]string{OpFull: "full", OpDelta: "delta", OpSelective: "selective",
	OpVerify: "verify", OpRead: "read", OpStatus: "status", OpSyncWrite: "sync-write"}

// String names the op.
func (o Op) String() string {
	if o == 0 || o > maxOp {
		return fmt.Sprintf("op(%d)", uint8(o))
	}
	return opNames[o]
}

// Version orders writes of one block: the primary epoch it was written
// under, a hybrid logical clock (48 bits of Unix milliseconds, 16 bits of
// logical counter) and the site that wrote. The zero Version is a block
// never written.
type Version struct {
	Epoch uint32
	Clock uint64
	Site  uint32
}

// Less orders versions by epoch, then clock, then site, so every node
// resolves a conflict the same way and a write made under a deposed
// primary's epoch always loses to the new primary's.
func (v Version) Less(o Version) bool {
	if v.Epoch != o.Epoch {
		return v.Epoch < o.Epoch
	}
	if v.Clock != o.Clock {
		return v.Clock < o.Clock
	}
	return v.Site < o.Site
}

// IsZero reports whether v is the version of a never-written block.
func (v Version) IsZero() bool { return v == Version{} }

// String formats v as epoch:clock@site.
func (v Version) String() string { return fmt.Sprintf("%d:%d@%d", v.Epoch, v.Clock, v.Site) }

// VersionSize is the encoded size of a Version.
const VersionSize = 16

// --- encoding helpers -------------------------------------------------------

type cursor struct {
	b   []byte
	err error
}

func (c *cursor) fail(format string, a ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
	}
}

func (c *cursor) take(n int, what string) []byte {
	if c.err != nil {
		return nil
	}
	if n < 0 || len(c.b) < n {
		c.fail("%s: need %d bytes, %d left", what, n, len(c.b))
		return nil
	}
	v := c.b[:n:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) u8(what string) uint8 {
	if b := c.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (c *cursor) u16(what string) uint16 {
	if b := c.take(2, what); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (c *cursor) u32(what string) uint32 {
	if b := c.take(4, what); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (c *cursor) u64(what string) uint64 {
	if b := c.take(8, what); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (c *cursor) version(what string) Version {
	return Version{Epoch: c.u32(what), Clock: c.u64(what), Site: c.u32(what)}
}

func (c *cursor) str(what string, max int) string {
	n := int(c.u16(what))
	if c.err == nil && n > max {
		c.fail("%s: %d bytes exceeds %d", what, n, max)
		return ""
	}
	return string(c.take(n, what))
}

// count reads a u32 element count and checks that count elements of at
// least minSize bytes can fit in what is left, so a hostile count cannot
// force a large allocation.
func (c *cursor) count(what string, minSize int) int {
	n := c.u32(what)
	if c.err != nil {
		return 0
	}
	if n > MaxEntries {
		c.fail("%s: %d exceeds %d", what, n, MaxEntries)
		return 0
	}
	if uint64(n)*uint64(minSize) > uint64(len(c.b)) {
		c.fail("%s: %d elements cannot fit in %d bytes", what, n, len(c.b))
		return 0
	}
	return int(n)
}

func (c *cursor) boolean(what string) bool {
	v := c.u8(what)
	if v > 1 {
		c.fail("%s: %d is not a boolean", what, v)
	}
	return v == 1
}

func (c *cursor) end() error {
	if c.err == nil && len(c.b) != 0 {
		c.fail("%d trailing bytes", len(c.b))
	}
	return c.err
}

func putU16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }
func putU32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func putU64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }
func putVersion(b []byte, v Version) []byte {
	return putU32(putU64(putU32(b, v.Epoch), v.Clock), v.Site)
}
func putStr(b []byte, s string) []byte {
	return append(putU16(b, uint16(len(s))), s...)
}
func putBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// --- Hello / Welcome / Error -----------------------------------------------

// Hello opens a session (client → server).
type Hello struct {
	MinProto, MaxProto uint16
	Op                 Op
	Flags              uint8
	Node               string   // client node name (informational; identity is the certificate)
	Volume             string   // volume name at the server
	Lineage            [16]byte // identity of the source volume's data
	BlockSize          uint32
	Blocks             uint64 // source size in blocks
	Epoch              uint64 // sender's epoch, for fencing
}

// Hello flags.
const (
	// HelloRestart asks for a full copy from block 0 even if one can resume.
	HelloRestart uint8 = 1 << 0
	helloFlags         = HelloRestart
)

// Type implements Message.
func (*Hello) Type() Type { return THello }

// AppendPayload implements Message.
func (m *Hello) AppendPayload(b []byte) []byte {
	b = putU16(b, m.MinProto)
	b = putU16(b, m.MaxProto)
	b = append(b, byte(m.Op), m.Flags)
	b = putStr(b, m.Node)
	b = putStr(b, m.Volume)
	b = append(b, m.Lineage[:]...)
	b = putU32(b, m.BlockSize)
	b = putU64(b, m.Blocks)
	return putU64(b, m.Epoch)
}

// DecodePayload implements Message.
func (m *Hello) DecodePayload(p []byte) error {
	c := cursor{b: p}
	*m = Hello{}
	m.MinProto = c.u16("min proto")
	m.MaxProto = c.u16("max proto")
	m.Op = Op(c.u8("op"))
	m.Flags = c.u8("flags")
	m.Node = c.str("node", MaxName)
	m.Volume = c.str("volume", MaxName)
	copy(m.Lineage[:], c.take(16, "lineage"))
	m.BlockSize = c.u32("block size")
	m.Blocks = c.u64("blocks")
	m.Epoch = c.u64("epoch")
	if c.err == nil {
		switch {
		case m.MinProto == 0 || m.MinProto > m.MaxProto:
			c.fail("protocol range %d..%d", m.MinProto, m.MaxProto)
		case m.Op == 0 || m.Op > maxOp:
			c.fail("unknown op %d", m.Op)
		case m.Flags&^helloFlags != 0:
			c.fail("unknown flags %#x", m.Flags)
		case m.Volume == "":
			c.fail("empty volume name")
		}
	}
	return c.end()
}

// Welcome answers Hello with the negotiated version and the server
// volume's replication state (server → client).
type Welcome struct {
	Proto     uint16
	Flags     uint32
	Node      string
	Lineage   [16]byte // source lineage of the data the volume holds; zero when empty
	BlockSize uint32
	Blocks    uint64 // capacity in blocks
	Epoch     uint64
	Cycle     uint64 // last delta cycle committed from the source
	FullNext  uint64 // first block a resumed full copy must send (WelcomeFullActive)
}

// Welcome flags.
const (
	WelcomeInconsistent uint32 = 1 << 0 // a full copy is incomplete or no cycle committed since
	WelcomeFullActive   uint32 = 1 << 1 // a full/selective copy can resume at FullNext
	WelcomeSelective    uint32 = 1 << 2 // the volume holds only some blocks
	WelcomePrimary      uint32 = 1 << 3 // the volume is a writable primary here
	WelcomeEmpty        uint32 = 1 << 4 // the volume holds no replicated data yet
	welcomeFlags               = 1<<5 - 1
)

// Type implements Message.
func (*Welcome) Type() Type { return TWelcome }

// AppendPayload implements Message.
func (m *Welcome) AppendPayload(b []byte) []byte {
	b = putU16(b, m.Proto)
	b = putU32(b, m.Flags)
	b = putStr(b, m.Node)
	b = append(b, m.Lineage[:]...)
	b = putU32(b, m.BlockSize)
	b = putU64(b, m.Blocks)
	b = putU64(b, m.Epoch)
	b = putU64(b, m.Cycle)
	return putU64(b, m.FullNext)
}

// DecodePayload implements Message.
func (m *Welcome) DecodePayload(p []byte) error {
	c := cursor{b: p}
	*m = Welcome{}
	m.Proto = c.u16("proto")
	m.Flags = c.u32("flags")
	m.Node = c.str("node", MaxName)
	copy(m.Lineage[:], c.take(16, "lineage"))
	m.BlockSize = c.u32("block size")
	m.Blocks = c.u64("blocks")
	m.Epoch = c.u64("epoch")
	m.Cycle = c.u64("cycle")
	m.FullNext = c.u64("full next")
	if c.err == nil && m.Flags&^welcomeFlags != 0 {
		c.fail("unknown flags %#x", m.Flags)
	}
	return c.end()
}

// Code classifies an Error so the peer can map it to a sentinel.
type Code uint16

// Error codes.
const (
	CodeInternal      Code = 1
	CodeIncompatible  Code = 2  // no common protocol version
	CodeFenced        Code = 3  // sender's epoch is older than the volume's
	CodeTooSmall      Code = 4  // mirror smaller than source
	CodeNoSpace       Code = 5  // disk full
	CodePermission    Code = 6  // permission denied
	CodeCorrupt       Code = 7  // checksum mismatch
	CodeProtocol      Code = 8  // unexpected or malformed frame
	CodeUnknownVolume Code = 9  // no such volume
	CodeBusy          Code = 10 // another session holds the volume
	CodeGeometry      Code = 11 // block size mismatch
	CodeLineage       Code = 12 // mirror holds another volume's data
	CodeNotMirror     Code = 13 // volume is a primary at the same epoch
	CodeUnauthorized  Code = 14 // peer not allowed for the volume
	CodeInconsistent  Code = 15 // volume state does not allow the op
	maxCode           Code = 15
)

// Error reports a failure and ends the session.
type Error struct {
	Code Code
	Msg  string
}

// Type implements Message.
func (*Error) Type() Type { return TError }

// AppendPayload implements Message.
func (m *Error) AppendPayload(b []byte) []byte {
	msg := m.Msg
	if len(msg) > MaxErrorText {
		msg = msg[:MaxErrorText]
	}
	return putStr(putU16(b, uint16(m.Code)), msg)
}

// DecodePayload implements Message.
func (m *Error) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Code = Code(c.u16("code"))
	m.Msg = c.str("message", MaxErrorText)
	if c.err == nil && (m.Code == 0 || m.Code > maxCode) {
		c.fail("unknown error code %d", m.Code)
	}
	return c.end()
}

// RemoteError is an Error frame received from the peer.
type RemoteError struct {
	Code Code
	Msg  string
}

func (e *RemoteError) Error() string { return "peer: " + e.Msg }

// --- acknowledgements and cycles ---------------------------------------------

// AckKind says what an Ack acknowledges.
type AckKind uint8

// Ack kinds.
const (
	AckData    AckKind = 1 // Blocks frames up to Seq are durable at the receiver
	AckCommit  AckKind = 2 // cycle Value is committed and applied
	AckFull    AckKind = 3 // full copy is durable up to block Value
	AckFullEnd AckKind = 4 // full copy session finished
	AckWrite   AckKind = 5 // synchronous write Seq is durable
	maxAck     AckKind = 5
)

// Ack acknowledges durable progress (receiver → sender).
type Ack struct {
	Kind  AckKind
	Seq   uint64
	Value uint64
}

// Type implements Message.
func (*Ack) Type() Type { return TAck }

// AppendPayload implements Message.
func (m *Ack) AppendPayload(b []byte) []byte {
	return putU64(putU64(append(b, byte(m.Kind)), m.Seq), m.Value)
}

// DecodePayload implements Message.
func (m *Ack) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Kind = AckKind(c.u8("kind"))
	m.Seq = c.u64("seq")
	m.Value = c.u64("value")
	if c.err == nil && (m.Kind == 0 || m.Kind > maxAck) {
		c.fail("unknown ack kind %d", m.Kind)
	}
	return c.end()
}

// CycleBegin starts a delta cycle; its manifest follows.
type CycleBegin struct {
	Cycle   uint64
	Epoch   uint64
	Entries uint64 // manifest entries that follow
	Flags   uint8
}

// CycleBegin flags.
const (
	// CycleRepair marks a cycle built by verify: entries are forced.
	CycleRepair uint8 = 1 << 0
	cycleFlags        = CycleRepair
)

// Type implements Message.
func (*CycleBegin) Type() Type { return TCycleBegin }

// AppendPayload implements Message.
func (m *CycleBegin) AppendPayload(b []byte) []byte {
	return append(putU64(putU64(putU64(b, m.Cycle), m.Epoch), m.Entries), m.Flags)
}

// DecodePayload implements Message.
func (m *CycleBegin) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Cycle = c.u64("cycle")
	m.Epoch = c.u64("epoch")
	m.Entries = c.u64("entries")
	m.Flags = c.u8("flags")
	if c.err == nil && m.Flags&^cycleFlags != 0 {
		c.fail("unknown flags %#x", m.Flags)
	}
	return c.end()
}

// ManifestEntry names one block of a cycle with the version it will have.
type ManifestEntry struct {
	Block   uint64
	Version Version
	Flags   uint8
	Hash    uint64 // xxh64 of the block, present with ManifestProbe
}

// Manifest entry flags.
const (
	// ManifestProbe: the sender's version may be stale (the block was in an
	// active extent at a crash); the receiver compares Hash with its copy.
	ManifestProbe uint8 = 1 << 0
	// ManifestForce: the receiver must take the data whatever its version
	// (verify found the receiver's copy differs).
	ManifestForce uint8 = 1 << 1
	manifestFlags       = ManifestProbe | ManifestForce
)

// Manifest is one chunk of a cycle's manifest.
type Manifest struct {
	Chunk   uint32
	Last    bool
	Entries []ManifestEntry
}

// Type implements Message.
func (*Manifest) Type() Type { return TManifest }

// AppendPayload implements Message.
func (m *Manifest) AppendPayload(b []byte) []byte {
	b = putBool(putU32(b, m.Chunk), m.Last)
	b = putU32(b, uint32(len(m.Entries)))
	for _, e := range m.Entries {
		b = putVersion(putU64(b, e.Block), e.Version)
		b = append(b, e.Flags)
		if e.Flags&ManifestProbe != 0 {
			b = putU64(b, e.Hash)
		}
	}
	return b
}

// DecodePayload implements Message.
func (m *Manifest) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Chunk = c.u32("chunk")
	m.Last = c.boolean("last")
	n := c.count("entries", 25)
	m.Entries = m.Entries[:0]
	for i := 0; i < n && c.err == nil; i++ {
		e := ManifestEntry{Block: c.u64("block"), Version: c.version("version"), Flags: c.u8("flags")}
		if e.Flags&^manifestFlags != 0 {
			c.fail("entry %d: unknown flags %#x", i, e.Flags)
		}
		if e.Flags&ManifestProbe != 0 {
			e.Hash = c.u64("hash")
		}
		m.Entries = append(m.Entries, e)
	}
	return c.end()
}

// Need answers a Manifest chunk: bit i set means entry i must be sent.
type Need struct {
	Chunk uint32
	Count uint32
	Bits  []byte
}

// Type implements Message.
func (*Need) Type() Type { return TNeed }

// AppendPayload implements Message.
func (m *Need) AppendPayload(b []byte) []byte {
	return append(putU32(putU32(b, m.Chunk), m.Count), m.Bits...)
}

// DecodePayload implements Message.
func (m *Need) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Chunk = c.u32("chunk")
	m.Count = c.u32("count")
	if c.err == nil && m.Count > MaxEntries {
		c.fail("count %d exceeds %d", m.Count, MaxEntries)
	}
	nb := int(m.Count+7) / 8
	m.Bits = c.take(nb, "bits")
	if c.err == nil && m.Count%8 != 0 && m.Bits[nb-1]>>(m.Count%8) != 0 {
		c.fail("padding bits set")
	}
	return c.end()
}

// Has reports whether entry i is needed.
func (m *Need) Has(i int) bool { return m.Bits[i/8]&(1<<(i%8)) != 0 }

// CycleCommit ends a cycle: the receiver applies it atomically once every
// needed block is staged and the digest of the manifest matches.
type CycleCommit struct {
	Cycle   uint64
	Entries uint64
	Digest  uint64
}

// Type implements Message.
func (*CycleCommit) Type() Type { return TCycleCommit }

// AppendPayload implements Message.
func (m *CycleCommit) AppendPayload(b []byte) []byte {
	return putU64(putU64(putU64(b, m.Cycle), m.Entries), m.Digest)
}

// DecodePayload implements Message.
func (m *CycleCommit) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Cycle = c.u64("cycle")
	m.Entries = c.u64("entries")
	m.Digest = c.u64("digest")
	return c.end()
}

// --- full and selective copies ----------------------------------------------

// Extent is a run of blocks.
type Extent struct {
	Start uint64
	Count uint64
}

// FullBegin starts or resumes a full (or selective) copy.
type FullBegin struct {
	Session uint64
	Start   uint64 // first block sent
	End     uint64 // one past the last block
	Flags   uint8
	Extents []Extent // selective copies: the extents, sorted, disjoint
}

// FullBegin flags.
const (
	FullSelective uint8 = 1 << 0
	fullFlags           = FullSelective
)

// Type implements Message.
func (*FullBegin) Type() Type { return TFullBegin }

// AppendPayload implements Message.
func (m *FullBegin) AppendPayload(b []byte) []byte {
	b = append(putU64(putU64(putU64(b, m.Session), m.Start), m.End), m.Flags)
	b = putU32(b, uint32(len(m.Extents)))
	for _, e := range m.Extents {
		b = putU64(putU64(b, e.Start), e.Count)
	}
	return b
}

// DecodePayload implements Message.
func (m *FullBegin) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Session = c.u64("session")
	m.Start = c.u64("start")
	m.End = c.u64("end")
	m.Flags = c.u8("flags")
	n := c.count("extents", 16)
	m.Extents = m.Extents[:0]
	var prev uint64
	for i := 0; i < n && c.err == nil; i++ {
		e := Extent{Start: c.u64("extent start"), Count: c.u64("extent count")}
		switch {
		case c.err != nil:
		case e.Count == 0 || e.Start+e.Count < e.Start:
			c.fail("extent %d: bad count %d", i, e.Count)
		case i > 0 && e.Start < prev:
			c.fail("extent %d: not sorted or overlapping", i)
		}
		prev = e.Start + e.Count
		m.Extents = append(m.Extents, e)
	}
	if c.err == nil {
		switch {
		case m.Flags&^fullFlags != 0:
			c.fail("unknown flags %#x", m.Flags)
		case m.Start > m.End:
			c.fail("start %d after end %d", m.Start, m.End)
		case m.Flags&FullSelective == 0 && len(m.Extents) > 0:
			c.fail("extents without the selective flag")
		}
	}
	return c.end()
}

// FullEnd closes a full copy after its last Blocks frame.
type FullEnd struct {
	Session uint64
	Next    uint64 // one past the last block covered
	Sent    uint64 // data blocks sent in this session (statistics)
}

// Type implements Message.
func (*FullEnd) Type() Type { return TFullEnd }

// AppendPayload implements Message.
func (m *FullEnd) AppendPayload(b []byte) []byte {
	return putU64(putU64(putU64(b, m.Session), m.Next), m.Sent)
}

// DecodePayload implements Message.
func (m *FullEnd) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Session = c.u64("session")
	m.Next = c.u64("next")
	m.Sent = c.u64("sent")
	return c.end()
}

// --- verify and reads -----------------------------------------------------

// MerkleReq asks for the hashes of some nodes of one tree level.
type MerkleReq struct {
	Level   uint8
	Indices []uint64
}

// Type implements Message.
func (*MerkleReq) Type() Type { return TMerkleReq }

// AppendPayload implements Message.
func (m *MerkleReq) AppendPayload(b []byte) []byte {
	b = putU32(append(b, m.Level), uint32(len(m.Indices)))
	for _, i := range m.Indices {
		b = putU64(b, i)
	}
	return b
}

// DecodePayload implements Message.
func (m *MerkleReq) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Level = c.u8("level")
	n := c.count("indices", 8)
	m.Indices = m.Indices[:0]
	for i := 0; i < n && c.err == nil; i++ {
		m.Indices = append(m.Indices, c.u64("index"))
	}
	return c.end()
}

// MerkleResp returns the hashes asked for, in request order.
type MerkleResp struct {
	Level  uint8
	Hashes []uint64
}

// Type implements Message.
func (*MerkleResp) Type() Type { return TMerkleResp }

// AppendPayload implements Message.
func (m *MerkleResp) AppendPayload(b []byte) []byte {
	b = putU32(append(b, m.Level), uint32(len(m.Hashes)))
	for _, h := range m.Hashes {
		b = putU64(b, h)
	}
	return b
}

// DecodePayload implements Message.
func (m *MerkleResp) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Level = c.u8("level")
	n := c.count("hashes", 8)
	m.Hashes = m.Hashes[:0]
	for i := 0; i < n && c.err == nil; i++ {
		m.Hashes = append(m.Hashes, c.u64("hash"))
	}
	return c.end()
}

// ReadReq asks for Count blocks from Block; the answer is a Blocks frame.
type ReadReq struct {
	Block uint64
	Count uint32
	Flags uint8 // protocol 2; encoded only when non-zero (protocol 1 layout otherwise)
}

// ReadReq flags.
const (
	// ReadHeld asks for the blocks the volume holds only: a selective
	// mirror answers the others as KindAbsent instead of fetching them
	// from its upstream (quorum reads; protocol 2).
	ReadHeld     uint8 = 1 << 0
	readReqFlags       = ReadHeld
)

// Type implements Message.
func (*ReadReq) Type() Type { return TReadReq }

// AppendPayload implements Message.
func (m *ReadReq) AppendPayload(b []byte) []byte {
	b = putU32(putU64(b, m.Block), m.Count)
	if m.Flags != 0 {
		b = append(b, m.Flags)
	}
	return b
}

// DecodePayload implements Message.
func (m *ReadReq) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Block = c.u64("block")
	m.Count = c.u32("count")
	m.Flags = 0
	if c.err == nil && len(c.b) > 0 {
		// A flags byte is present only when some flag is set, so every
		// request has one encoding.
		m.Flags = c.u8("flags")
		if m.Flags == 0 || m.Flags&^readReqFlags != 0 {
			c.fail("flags %#x", m.Flags)
		}
	}
	if c.err == nil && (m.Count == 0 || m.Count > 4096) {
		c.fail("count %d out of 1..4096", m.Count)
	}
	return c.end()
}

// Present carries a run of a selective volume's presence bitmap, so verify
// compares only blocks the mirror holds.
type Present struct {
	Start uint64 // block of bit 0; a multiple of 8
	Count uint32 // bits
	Last  bool
	Bits  []byte
}

// Type implements Message.
func (*Present) Type() Type { return TPresent }

// AppendPayload implements Message.
func (m *Present) AppendPayload(b []byte) []byte {
	b = putBool(putU32(putU64(b, m.Start), m.Count), m.Last)
	return append(b, m.Bits...)
}

// DecodePayload implements Message.
func (m *Present) DecodePayload(p []byte) error {
	c := cursor{b: p}
	m.Start = c.u64("start")
	m.Count = c.u32("count")
	m.Last = c.boolean("last")
	if c.err == nil && m.Start%8 != 0 {
		c.fail("start %d not byte aligned", m.Start)
	}
	if c.err == nil && m.Count > 8*MaxPayload {
		c.fail("count %d too large", m.Count)
	}
	nb := int((uint64(m.Count) + 7) / 8)
	m.Bits = c.take(nb, "bits")
	if c.err == nil && m.Count%8 != 0 && m.Bits[nb-1]>>(m.Count%8) != 0 {
		c.fail("padding bits set")
	}
	return c.end()
}
