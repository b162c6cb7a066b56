// Package wire is the replicator's frame codec: versioned, length-prefixed,
// checksummed frames and the messages they carry.
//
// A frame is
//
//	offset size field
//	0      2    magic "PM"
//	2      1    frame format version (FrameVersion)
//	3      1    message type
//	4      4    reserved, must be zero
//	8      4    payload length, little endian, at most MaxPayload
//	12     n    payload
//	12+n   4    CRC-32C (Castagnoli) of bytes 0..12+n
//
// The frame checksum is CRC-32C because it runs in hardware at ~30 GB/s on
// the machines we target and detects every burst error up to 32 bits,
// which is what a flipped bit on a link looks like. Block payloads carry
// their own 64-bit xxHash (see BlockEntry) computed from the data as read
// from the source disk, so corruption between the two disks, not only on
// the wire, is caught; 64 bits also keep Merkle leaf collisions negligible.
//
// Every decoder is strict: trailing bytes, unknown kinds, lengths past the
// payload or past the limits are errors (ErrMalformed), and a frame whose
// checksum does not match is ErrCorrupt. Callers act on a message only after
// it decoded completely, so a rejected frame applies nothing. Each decoder
// has a fuzz target in fuzz_test.go.
//
// Protocol versions are negotiated in Hello/Welcome (MinProto..MaxProto);
// the frame layout above is frozen so that an old peer can always read a
// newer peer's Hello and answer with a clear Error.
package wire
