package wire

import (
	"bytes"
	"reflect"
	"testing"
)

// fuzzMessage checks one decoder: it never panics, and whatever it accepts
// re-encodes to a payload that decodes to the same message.
func fuzzMessage(f *testing.F, proto Message) {
	for _, m := range sampleMessages() {
		if m.Type() == proto.Type() {
			f.Add(m.AppendPayload(nil))
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		m := newOf(proto)
		if err := m.DecodePayload(p); err != nil {
			return
		}
		again := newOf(proto)
		if err := again.DecodePayload(m.AppendPayload(nil)); err != nil {
			t.Fatalf("re-decode of accepted payload: %v", err)
		}
		if !reflect.DeepEqual(normalize(again), normalize(m)) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", again, m)
		}
	})
}

func FuzzHello(f *testing.F)       { fuzzMessage(f, &Hello{}) }
func FuzzWelcome(f *testing.F)     { fuzzMessage(f, &Welcome{}) }
func FuzzError(f *testing.F)       { fuzzMessage(f, &Error{}) }
func FuzzBlocks(f *testing.F)      { fuzzMessage(f, &Blocks{}) }
func FuzzAck(f *testing.F)         { fuzzMessage(f, &Ack{}) }
func FuzzCycleBegin(f *testing.F)  { fuzzMessage(f, &CycleBegin{}) }
func FuzzManifest(f *testing.F)    { fuzzMessage(f, &Manifest{}) }
func FuzzNeed(f *testing.F)        { fuzzMessage(f, &Need{}) }
func FuzzCycleCommit(f *testing.F) { fuzzMessage(f, &CycleCommit{}) }
func FuzzFullBegin(f *testing.F)   { fuzzMessage(f, &FullBegin{}) }
func FuzzFullEnd(f *testing.F)     { fuzzMessage(f, &FullEnd{}) }
func FuzzMerkleReq(f *testing.F)   { fuzzMessage(f, &MerkleReq{}) }
func FuzzMerkleResp(f *testing.F)  { fuzzMessage(f, &MerkleResp{}) }
func FuzzReadReq(f *testing.F)     { fuzzMessage(f, &ReadReq{}) }
func FuzzPresent(f *testing.F)     { fuzzMessage(f, &Present{}) }

// FuzzFrame feeds arbitrary bytes to both frame parsers: they must agree,
// never panic, and a frame they accept must re-encode to the same bytes.
func FuzzFrame(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := AppendFrame(nil, m)
		f.Add(b)
	}
	f.Add([]byte("PM\x01\x04\x00\x00\x00\x00\xff\xff\xff\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := ParseFrame(b)
		r := NewReader(bytes.NewReader(b))
		fr2, err2 := r.Next()
		if (err == nil) != (err2 == nil) {
			t.Fatalf("parsers disagree: %v vs %v", err, err2)
		}
		if err != nil {
			return
		}
		if fr.Type != fr2.Type || !bytes.Equal(fr.Payload, fr2.Payload) {
			t.Fatal("parsers returned different frames")
		}
		start := 0
		re := BeginFrame(nil, fr.Type)
		re = append(re, fr.Payload...)
		re, err = EndFrame(re, start)
		if err != nil || !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encode differs: %v", err)
		}
	})
}

// FuzzPlain checks that decoding a block entry's data never panics and
// never returns a block that does not match its checksum.
func FuzzPlain(f *testing.F) {
	f.Add(uint8(KindRaw), bytes.Repeat([]byte{1}, 4096), uint64(0))
	f.Add(uint8(KindZstd), []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0x58, 0x11, 0, 0}, uint64(0))
	dec, err := NewDecoder()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte, sum uint64) {
		e := BlockEntry{Kind: Kind(kind), Data: data, Sum: sum}
		out, err := e.Plain(4096, dec, nil)
		if err == nil && out != nil && len(out) != 4096 {
			t.Fatalf("Plain returned %d bytes", len(out))
		}
	})
}
