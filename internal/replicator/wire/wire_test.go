package wire

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// sampleMessages returns one valid instance of every message type; the
// round-trip test and the fuzz seed corpus use them.
func sampleMessages() []Message {
	blk := bytes.Repeat([]byte{7}, 4096)
	var lin [16]byte
	copy(lin[:], "lineage-0123456")
	return []Message{
		&Hello{MinProto: 1, MaxProto: 2, Op: OpDelta, Flags: HelloRestart, Node: "edge-a", Volume: "vm1", Lineage: lin, BlockSize: 4096, Blocks: 262144, Epoch: 3},
		&Welcome{Proto: 1, Flags: WelcomeInconsistent | WelcomeFullActive, Node: "edge-b", Lineage: lin, BlockSize: 4096, Blocks: 262144, Epoch: 3, Cycle: 9, FullNext: 77},
		&Error{Code: CodeTooSmall, Msg: "mirror is 1 MiB, source is 2 MiB"},
		&Blocks{Seq: 5, Entries: []BlockEntry{
			{Kind: KindZeroRange, Block: 0, Count: 10},
			{Kind: KindRaw, Block: 10, Version: Version{Epoch: 1, Clock: 1 << 20, Site: 2}, Sum: xxhash.Sum64(blk), Data: blk},
			{Kind: KindZero, Block: 11, Version: Version{Clock: 5, Site: 1}},
			{Kind: KindAbsent, Block: 12, Count: 3},
		}},
		&Ack{Kind: AckData, Seq: 4, Value: 100},
		&CycleBegin{Cycle: 8, Epoch: 2, Entries: 3, Flags: CycleRepair},
		&Manifest{Chunk: 1, Last: true, Entries: []ManifestEntry{
			{Block: 3, Version: Version{Clock: 9, Site: 1}},
			{Block: 4, Version: Version{Clock: 10, Site: 1}, Flags: ManifestProbe, Hash: 0xabcdef},
		}},
		&Need{Chunk: 1, Count: 10, Bits: []byte{0x81, 0x02}},
		&CycleCommit{Cycle: 8, Entries: 3, Digest: 0x1234},
		&FullBegin{Session: 11, Start: 0, End: 100, Flags: FullSelective, Extents: []Extent{{0, 10}, {50, 5}}},
		&FullEnd{Session: 11, Next: 100, Sent: 15},
		&MerkleReq{Level: 2, Indices: []uint64{0, 5, 9}},
		&MerkleResp{Level: 2, Hashes: []uint64{1, 2, 3}},
		&ReadReq{Block: 1000, Count: 16},
		&ReadReq{Block: 1000, Count: 16, Flags: ReadHeld},
		&Present{Start: 64, Count: 12, Last: true, Bits: []byte{0xff, 0x0f}},
	}
}

func newOf(m Message) Message { return reflect.New(reflect.TypeOf(m).Elem()).Interface().(Message) }

func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(m.Type().String(), func(t *testing.T) {
			frame, err := AppendFrame(nil, m)
			if err != nil {
				t.Fatal(err)
			}
			f, n, err := ParseFrame(frame)
			if err != nil || n != len(frame) {
				t.Fatalf("parse: n=%d err=%v", n, err)
			}
			got := newOf(m)
			if err := f.Decode(got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(m)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
			}
			// The stream reader decodes the same frame.
			r := NewReader(bytes.NewReader(frame))
			got2 := newOf(m)
			if err := r.Read(got2); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Next(); err != io.EOF {
				t.Fatalf("after last frame: %v, want EOF", err)
			}
		})
	}
}

// normalize turns nil and empty slices into the same value for DeepEqual.
func normalize(m Message) Message {
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		if f.Kind() == reflect.Slice && f.Len() == 0 {
			f.Set(reflect.Zero(f.Type()))
		}
	}
	return m
}

func TestEveryBitFlipDetected(t *testing.T) {
	for _, m := range sampleMessages() {
		frame, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		for bit := 0; bit < len(frame)*8; bit++ {
			c := bytes.Clone(frame)
			c[bit/8] ^= 1 << (bit % 8)
			if _, _, err := ParseFrame(c); err == nil {
				t.Fatalf("%s: flipped bit %d not detected", m.Type(), bit)
			}
		}
	}
}

func TestRejects(t *testing.T) {
	good, _ := AppendFrame(nil, &Ack{Kind: AckData, Seq: 1})
	cases := []struct {
		name  string
		frame func() []byte
		want  error
	}{
		{"bad magic", func() []byte { c := bytes.Clone(good); c[0] = 'X'; return c }, ErrMalformed},
		{"future format", func() []byte {
			c := bytes.Clone(good[:len(good)-4])
			c[2] = 9
			c, _ = EndFrame(c, 0)
			return c
		}, ErrFrameVersion},
		{"unknown type", func() []byte {
			c := bytes.Clone(good[:len(good)-4])
			c[3] = 200
			c, _ = EndFrame(c, 0)
			return c
		}, ErrMalformed},
		{"huge length", func() []byte {
			c := bytes.Clone(good)
			c[11] = 0x7f
			return c
		}, ErrMalformed},
		{"truncated", func() []byte { return good[:len(good)-1] }, ErrMalformed},
		{"bad checksum", func() []byte { c := bytes.Clone(good); c[len(c)-1] ^= 1; return c }, ErrCorrupt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseFrame(tc.frame())
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseFrame: %v, want %v", err, tc.want)
			}
			_, err = NewReader(bytes.NewReader(tc.frame())).Next()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Reader.Next: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodersRejectBadPayloads(t *testing.T) {
	cases := []struct {
		name string
		m    Message
		p    []byte
	}{
		{"hello empty", &Hello{}, nil},
		{"hello bad range", &Hello{}, (&Hello{MinProto: 3, MaxProto: 2, Op: OpFull, Volume: "v"}).AppendPayload(nil)},
		{"hello unknown op", &Hello{}, (&Hello{MinProto: 1, MaxProto: 1, Op: 99, Volume: "v"}).AppendPayload(nil)},
		{"hello no volume", &Hello{}, (&Hello{MinProto: 1, MaxProto: 1, Op: OpFull}).AppendPayload(nil)},
		{"trailing", &Ack{}, append((&Ack{Kind: AckData}).AppendPayload(nil), 0)},
		{"ack kind", &Ack{}, (&Ack{Kind: 77}).AppendPayload(nil)},
		{"error code", &Error{}, (&Error{Code: 999, Msg: "x"}).AppendPayload(nil)},
		{"blocks order", &Blocks{}, (&Blocks{Entries: []BlockEntry{{Kind: KindZero, Block: 5}, {Kind: KindZero, Block: 5}}}).AppendPayload(nil)},
		{"blocks empty range", &Blocks{}, (&Blocks{Entries: []BlockEntry{{Kind: KindZeroRange, Block: 5}}}).AppendPayload(nil)},
		{"blocks kind", &Blocks{}, (&Blocks{Entries: []BlockEntry{{Kind: 9, Block: 5}}}).AppendPayload(nil)},
		{"blocks huge count", &Blocks{}, putU32(putU64(nil, 1), 1<<30)},
		{"blocks overflow", &Blocks{}, (&Blocks{Entries: []BlockEntry{{Kind: KindZeroRange, Block: ^uint64(0), Count: 2}}}).AppendPayload(nil)},
		{"blocks data short", &Blocks{}, (&Blocks{Entries: []BlockEntry{{Kind: KindRaw, Block: 1, Data: []byte{1, 2}}}}).AppendPayload(nil)[:13+37-1+1]},
		{"blocks data extra", &Blocks{}, append((&Blocks{Entries: []BlockEntry{{Kind: KindRaw, Block: 1, Data: []byte{1, 2}}}}).AppendPayload(nil), 9)},
		{"need padding", &Need{}, (&Need{Count: 3, Bits: []byte{0xff}}).AppendPayload(nil)},
		{"manifest flags", &Manifest{}, (&Manifest{Entries: []ManifestEntry{{Flags: 0x80}}}).AppendPayload(nil)},
		{"full overlap", &FullBegin{}, (&FullBegin{Flags: FullSelective, End: 9, Extents: []Extent{{0, 5}, {3, 2}}}).AppendPayload(nil)},
		{"full start>end", &FullBegin{}, (&FullBegin{Start: 5, End: 2}).AppendPayload(nil)},
		{"read zero", &ReadReq{}, (&ReadReq{Block: 1}).AppendPayload(nil)},
		{"read flags zero", &ReadReq{}, append((&ReadReq{Block: 1, Count: 1}).AppendPayload(nil), 0)},
		{"read flags unknown", &ReadReq{}, (&ReadReq{Block: 1, Count: 1, Flags: 0x80}).AppendPayload(nil)},
		{"blocks empty absent", &Blocks{}, (&Blocks{Entries: []BlockEntry{{Kind: KindAbsent, Block: 5}}}).AppendPayload(nil)},
		{"present unaligned", &Present{}, (&Present{Start: 3, Count: 1, Bits: []byte{1}}).AppendPayload(nil)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.m.DecodePayload(tc.p); !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodePayload: %v, want ErrMalformed", err)
			}
		})
	}
}

func TestPlain(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	blk := make([]byte, 4096)
	for i := range blk[:2048] {
		blk[i] = byte(rng.UintN(4))
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	defer enc.Close()
	dec, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	sum := xxhash.Sum64(blk)
	comp := enc.EncodeAll(blk, nil)
	big := enc.EncodeAll(make([]byte, 8192), nil)
	cases := []struct {
		name string
		e    BlockEntry
		want error
	}{
		{"raw", BlockEntry{Kind: KindRaw, Sum: sum, Data: blk}, nil},
		{"zstd", BlockEntry{Kind: KindZstd, Sum: sum, Data: comp}, nil},
		{"raw bad sum", BlockEntry{Kind: KindRaw, Sum: sum ^ 1, Data: blk}, ErrBlockChecksum},
		{"raw short", BlockEntry{Kind: KindRaw, Sum: sum, Data: blk[:100]}, ErrMalformed},
		{"zstd garbage", BlockEntry{Kind: KindZstd, Sum: sum, Data: []byte{1, 2, 3}}, ErrMalformed},
		{"zstd too big", BlockEntry{Kind: KindZstd, Sum: sum, Data: big}, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tc.e.Plain(4096, dec, make([]byte, 0, 4096))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Plain: %v, want %v", err, tc.want)
			}
			if err == nil && !bytes.Equal(out, blk) {
				t.Fatal("Plain returned other bytes")
			}
		})
	}
}

func TestBuilderMatchesMessage(t *testing.T) {
	m := sampleMessages()[3].(*Blocks)
	want, _ := AppendFrame(nil, m)
	var bb BlocksBuilder
	bb.Reset(nil, m.Seq)
	for i := range m.Entries {
		bb.Add(&m.Entries[i])
	}
	got, err := bb.FinishFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("builder frame differs from AppendFrame")
	}
	// Adjacent data slices are merged, others kept apart.
	buf := bytes.Repeat([]byte{1, 2, 3, 4}, 3*1024)
	bb.Reset(nil, 1)
	for i, blk := range []uint64{0, 1, 5} {
		d := buf[i*4096 : (i+1)*4096]
		if blk == 5 {
			d = bytes.Clone(d)
		}
		bb.Add(&BlockEntry{Kind: KindRaw, Block: blk, Sum: xxhash.Sum64(d), Data: d})
	}
	head, data, trailer, err := bb.Finish()
	if err != nil || len(data) != 2 || len(data[0]) != 8192 {
		t.Fatalf("Finish: %v, %d data slices", err, len(data))
	}
	frame := append(append(append(append([]byte(nil), head...), data[0]...), data[1]...), trailer...)
	f, _, err := ParseFrame(frame)
	if err != nil {
		t.Fatal(err)
	}
	var dec Blocks
	if err := f.Decode(&dec); err != nil || len(dec.Entries) != 3 || !bytes.Equal(dec.Entries[2].Data, buf[8192:]) {
		t.Fatalf("decode built frame: %v", err)
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 4096, 4097, 65536} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Fatalf("IsZero(%d zeros) = false", n)
		}
		if n > 0 {
			b[n-1] = 1
			if IsZero(b) {
				t.Fatalf("IsZero(%d bytes, last set) = true", n)
			}
		}
	}
}

func TestRemoteError(t *testing.T) {
	frame, _ := AppendFrame(nil, &Error{Code: CodeFenced, Msg: "epoch 2 < 3"})
	err := NewReader(bytes.NewReader(frame)).Read(&Ack{})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeFenced {
		t.Fatalf("Read: %v, want RemoteError fenced", err)
	}
}
