package probe

import (
	"bytes"
	"errors"
	"testing"
)

func TestPacketRoundTrip(t *testing.T) {
	for _, p := range []Packet{
		{Type: TypeRequest, Seq: 7, Nonce: 0xdeadbeefcafef00d, Sent: -5, Len: HeaderLen},
		{Type: TypeReply, Seq: 1, Nonce: 1, Sent: 1 << 62, Len: 200},
		{Type: TypeRequest, Len: MaxPacketLen},
	} {
		b, err := AppendPacket(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != p.Len {
			t.Fatalf("len %d, want %d", len(b), p.Len)
		}
		got, err := DecodePacket(b)
		if err != nil || got != p {
			t.Fatalf("decode = %+v, %v; want %+v", got, err, p)
		}
	}
}

func TestDecodePacketRejects(t *testing.T) {
	good, _ := AppendPacket(nil, Packet{Type: TypeRequest, Seq: 1, Nonce: 2, Len: 40})
	mut := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:HeaderLen-1]},
		{"too long", make([]byte, MaxPacketLen+1)},
		{"magic", mut(0, 'X')},
		{"version", mut(4, 2)},
		{"type zero", mut(5, 0)},
		{"type three", mut(5, 3)},
		{"reserved", mut(7, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodePacket(tt.b); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
	if _, err := AppendPacket(nil, Packet{Type: TypeRequest, Len: MaxPacketLen + 1}); err == nil {
		t.Fatal("oversized packet encoded")
	}
	if _, err := AppendPacket(nil, Packet{Type: 9}); err == nil {
		t.Fatal("unknown type encoded")
	}
}

// FuzzDecodePacket: decoding never panics, and whatever decodes re-encodes
// to the same header (padding is not interpreted).
func FuzzDecodePacket(f *testing.F) {
	good, _ := AppendPacket(nil, Packet{Type: TypeRequest, Seq: 3, Nonce: 9, Sent: 11, Len: 64})
	f.Add(good)
	f.Add(good[:HeaderLen])
	f.Add([]byte("PMPR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePacket(b)
		if err != nil {
			return
		}
		if p.Len != len(b) {
			t.Fatalf("Len %d for %d bytes", p.Len, len(b))
		}
		re, err := AppendPacket(nil, p)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(re[:HeaderLen], b[:HeaderLen]) {
			t.Fatalf("header changed: %x vs %x", re[:HeaderLen], b[:HeaderLen])
		}
	})
}
