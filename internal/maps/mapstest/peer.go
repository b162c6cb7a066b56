// Package mapstest provides stand-ins for the programs premirror runs
// beside, for tests of XDP chaining (maps.Router.SetNext, the agent's
// xdp_chain): a tiny "firewall" XDP program whose verdict and packet count
// a test can observe.
package mapstest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
)

// Peer is a minimal XDP firewall: it counts every packet it sees (and the
// IPv4 UDP ones apart) and drops
// IPv4 UDP datagrams to one destination port (untagged Ethernet, IPv4
// without options), passing everything else.
type Peer struct {
	Program *ebpf.Program
	seen    *ebpf.Map
}

// PeerOptions tune NewPeer.
type PeerOptions struct {
	// Frags loads the program with BPF_F_XDP_HAS_FRAGS (SEC("xdp.frags")),
	// which the kernel refuses in a chain slot created for our programs.
	Frags bool
	// LegacyAttachType loads the program with expected attach type 0
	// instead of BPF_XDP (what libbpf and cilium/ebpf set for SEC("xdp")),
	// as some older loaders do: the kernel refuses it in our chain slot.
	LegacyAttachType bool
	// Name is the program name (default "fw_udp_drop").
	Name string
}

// bpfFXDPHasFrags is BPF_F_XDP_HAS_FRAGS (include/uapi/linux/bpf.h).
const bpfFXDPHasFrags = 1 << 5

// NewPeer loads a Peer that drops UDP to port. Needs CAP_BPF.
func NewPeer(port uint16, opts PeerOptions) (*Peer, error) {
	seen, err := ebpf.NewMap(&ebpf.MapSpec{Name: "fw_seen", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		return nil, fmt.Errorf("create peer counter: %w", err)
	}
	// Loads of the frame are little-endian: network-order 0x0800 reads 0x0008.
	be16 := func(v uint16) int32 { return int32(v>>8 | v<<8&0xff00) }
	// R6 ctx, R7 "IPv4 UDP", R8 verdict: callee-saved across the helper calls.
	count := func(slot int32, skip string) asm.Instructions {
		return asm.Instructions{
			asm.StoreImm(asm.R10, -4, int64(slot), asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, seen.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, skip),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		}
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.Mov.Imm(asm.R7, 0),
		asm.Mov.Imm(asm.R8, xdpPass),
		// Ethernet (14) + IPv4 (20) + UDP ports (4).
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 38),
		asm.JGT.Reg(asm.R4, asm.R3, "count"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R5, be16(0x0800), "count"),
		asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte),
		asm.JNE.Imm(asm.R5, 0x45, "count"),
		asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte),
		asm.JNE.Imm(asm.R5, 17, "count"),
		asm.Mov.Imm(asm.R7, 1),
		asm.LoadMem(asm.R5, asm.R2, 36, asm.Half),
		asm.JNE.Imm(asm.R5, be16(port), "count"),
		asm.Mov.Imm(asm.R8, xdpDrop),
	}
	all := count(0, "udp")
	all[0] = all[0].WithSymbol("count")
	insns = append(insns, all...)
	insns = append(insns, asm.JEq.Imm(asm.R7, 0, "out").WithSymbol("udp"))
	insns = append(insns, count(1, "out")...)
	insns = append(insns, asm.Mov.Reg(asm.R0, asm.R8).WithSymbol("out"), asm.Return())
	name := opts.Name
	if name == "" {
		name = "fw_udp_drop"
	}
	spec := &ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns}
	if opts.Frags {
		spec.Flags = bpfFXDPHasFrags
	}
	if opts.LegacyAttachType {
		spec.AttachType = 0
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		seen.Close()
		return nil, fmt.Errorf("load peer program: %w", err)
	}
	return &Peer{Program: prog, seen: seen}, nil
}

// NewPeerT is NewPeer for tests: it fails tb on error and closes the peer
// when tb ends.
func NewPeerT(tb testing.TB, port uint16, opts PeerOptions) *Peer {
	tb.Helper()
	p, err := NewPeer(port, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// Seen is the number of packets the peer has run on.
func (p *Peer) Seen() (uint64, error) { return p.counter(0) }

// SeenUDP is the number of IPv4 UDP datagrams among them: what a test
// sends on a veth, while the kernel's own IPv6 and ARP chatter is not.
func (p *Peer) SeenUDP() (uint64, error) { return p.counter(1) }

func (p *Peer) counter(slot uint32) (uint64, error) {
	var n uint64
	if err := p.seen.Lookup(slot, &n); err != nil {
		return 0, fmt.Errorf("read peer counter: %w", err)
	}
	return n, nil
}

// Close releases the program and its counter.
func (p *Peer) Close() error { return errors.Join(p.Program.Close(), p.seen.Close()) }

// Root stands in for a root XDP program that dispatches to others through
// a program array, the way Katran's shared mode and DDoS filters in front
// of a load balancer do: it counts every packet, tail-calls Array[Key],
// and passes what that does not take (an empty slot).
type Root struct {
	Program *ebpf.Program
	Array   *ebpf.Map
	seen    *ebpf.Map
}

// NewRoot loads a Root with an 8-slot program array. Needs CAP_BPF.
func NewRoot(key uint32) (*Root, error) {
	seen, err := ebpf.NewMap(&ebpf.MapSpec{Name: "root_seen", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create root counter: %w", err)
	}
	arr, err := ebpf.NewMap(&ebpf.MapSpec{Name: "root_progs", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		seen.Close()
		return nil, fmt.Errorf("create root program array: %w", err)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, seen.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "call"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("call"),
		asm.LoadMapPtr(asm.R2, arr.FD()),
		asm.Mov.Imm(asm.R3, int32(key)),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, xdpPass),
		asm.Return(),
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "root_dispatch", Type: ebpf.XDP, AttachType: ebpf.AttachXDP,
		License: "GPL", Instructions: insns})
	if err != nil {
		seen.Close()
		arr.Close()
		return nil, fmt.Errorf("load root program: %w", err)
	}
	return &Root{Program: prog, Array: arr, seen: seen}, nil
}

// NewRootT is NewRoot for tests: it fails tb on error and closes the root
// when tb ends.
func NewRootT(tb testing.TB, key uint32) *Root {
	tb.Helper()
	r, err := NewRoot(key)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}

// Seen is the number of packets the root has run on.
func (r *Root) Seen() (uint64, error) {
	var v uint64
	err := r.seen.Lookup(uint32(0), &v)
	return v, err
}

// Close releases the root's program and maps (a pinned array stays).
func (r *Root) Close() error {
	return errors.Join(r.Program.Close(), r.Array.Close(), r.seen.Close())
}
