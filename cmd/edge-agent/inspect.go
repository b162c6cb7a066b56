package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/control"
	"github.com/premirror/premirror/internal/maps"
)

func init() {
	commands.Register(cli.Command{
		Name:    "inspect",
		Summary: "print resources, routes, mirrors, sessions and counters from the pinned maps (read-only)",
		Run: func(ctx context.Context, args []string) error {
			fs := cli.NewFlagSet("edge-agent", "inspect")
			pinDir := fs.String("pin-dir", maps.DefaultPinDir, "bpffs directory the agent pinned to")
			cfgPath := fs.String("config", "", "agent configuration, to print names instead of IDs")
			sessions := fs.Int("sessions", 10, "print up to this many sessions")
			if err := cli.ParseFlags(fs, args); err != nil {
				return err
			}
			var names *agent.Compiled
			if *cfgPath != "" {
				cfg, err := agent.LoadConfig(*cfgPath)
				if err != nil {
					return err
				}
				state := cfg.State
				// Under a controller the names are in the cached desired state.
				if c := cfg.Controller; c != nil && c.StateCache != "" {
					if st, err := control.LoadCache(c.StateCache); err == nil && st != nil {
						if ds, err := agent.StateFromProto(st); err == nil {
							state = ds
						}
					}
				}
				if names, err = state.Compile(cfg.MapsConfig()); err != nil {
					return err
				}
			}
			return inspect(os.Stdout, *pinDir, names, *sessions)
		},
	})
}

type namer struct{ c *agent.Compiled }

func (n namer) region(id maps.RegionID) string {
	if id == maps.RegionAny {
		return "*"
	}
	if n.c != nil && n.c.RegionNames[id] != "" {
		return fmt.Sprintf("%s(%d)", n.c.RegionNames[id], id)
	}
	return strconv.Itoa(int(id))
}

func (n namer) mirror(id maps.MirrorID) string {
	if n.c != nil && n.c.MirrorNames[id] != "" {
		return fmt.Sprintf("%s(%d)", n.c.MirrorNames[id], id)
	}
	return strconv.Itoa(int(id))
}

func (n namer) resource(id maps.ResourceID) string {
	if n.c != nil && n.c.ResourceNames[id] != "" {
		return fmt.Sprintf("%s(%d)", n.c.ResourceNames[id], id)
	}
	return strconv.Itoa(int(id))
}

// inspect prints the state pinned under pinDir: the router's (edges) and
// the decap program's (mirror hosts), whichever the node runs.
func inspect(out io.Writer, pinDir string, c *agent.Compiled, maxSessions int) error {
	_, rerr := os.Stat(filepath.Join(pinDir, "pm_sessions"))
	_, derr := os.Stat(filepath.Join(pinDir, "pm_decap_addrs"))
	if rerr != nil && derr != nil {
		return fmt.Errorf("no router or decap state under %s (is the agent running with this pin dir?)", pinDir)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	if rerr == nil {
		if err := inspectRouter(w, pinDir, namer{c}, maxSessions); err != nil {
			return err
		}
	} else if err := printNextPrograms(w, pinDir); err != nil {
		return err
	}
	if derr == nil {
		return inspectDecap(w, pinDir)
	}
	return nil
}

// printNextPrograms prints the programs xdp_chain runs after ours on what
// we pass untouched: the one for every interface, then each interface's
// own.
func printNextPrograms(w io.Writer, pinDir string) error {
	for _, s := range []struct{ prog, m string }{{"router", maps.RouterNextMap}, {"decap", maps.DecapNextMap}} {
		if _, err := os.Stat(filepath.Join(pinDir, s.m)); err != nil {
			continue // this node does not run that program
		}
		entries, err := maps.PinnedNextPrograms(pinDir, s.m, nil)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			fmt.Fprintf(w, "NEXT XDP PROGRAM\t%s\tnone (passed packets go to the stack)\n", s.prog)
		}
		for _, e := range entries {
			fmt.Fprintf(w, "NEXT XDP PROGRAM\t%s\t%s on %s\n", s.prog, e.Program, chainIfaceText(e.Ifindex))
		}
	}
	fmt.Fprintln(w)
	return nil
}

// inspectDecap prints the endpoints the decap program terminates and its
// packets by reason.
func inspectDecap(w io.Writer, pinDir string) error {
	d, err := maps.OpenPinnedDecap(pinDir)
	if err != nil {
		return fmt.Errorf("decap state under %s: %w", pinDir, err)
	}
	defer d.Close()
	eps, err := d.Endpoints()
	if err != nil {
		return err
	}
	slices.SortFunc(eps, func(a, b maps.DecapEndpoint) int { return a.Addr.Compare(b.Addr) })
	srcs, err := d.Sources()
	if err != nil {
		return err
	}
	slices.SortFunc(srcs, netip.Prefix.Compare)
	fmt.Fprintln(w, "\nDECAP ENDPOINT\tACCEPTS\tFROM")
	for _, e := range eps {
		acc := "ipip / ip6ip6"
		if e.GUEPort != 0 {
			acc += fmt.Sprintf(", gue udp/%d", e.GUEPort)
		}
		from := "any source"
		if e.SourcesOnly {
			from = "decap sources only"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", e.Addr, acc, from)
	}
	if len(srcs) > 0 {
		fmt.Fprintln(w, "\nDECAP SOURCE")
		for _, p := range srcs {
			fmt.Fprintln(w, p)
		}
	}
	st, err := d.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nDECAP VERDICT\tREASON\tPACKETS")
	for _, f := range st.Fields() {
		if f.Value > 0 {
			fmt.Fprintf(w, "%s\t%s\t%d\n", f.Verdict, f.Name, f.Value)
		}
	}
	return nil
}

// addrText is an address, or "none" for an unset one.
func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

// inspectRouter prints the router's maps.
func inspectRouter(w io.Writer, pinDir string, n namer, maxSessions int) error {
	r, err := maps.OpenPinnedRouter(pinDir)
	if err != nil {
		return fmt.Errorf("router state under %s: %w", pinDir, err)
	}
	defer r.Close()

	st, err := r.Settings()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "SETTINGS\tdefault region %s\touter source %s / %s\n", n.region(st.DefaultRegion), addrText(st.OuterSourceV4), addrText(st.OuterSourceV6))
	nh, err := r.NextHopCache()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "NEXT-HOP CACHE\t%s\n", nextHopText(nh))
	if err := printNextPrograms(w, pinDir); err != nil {
		return err
	}

	vips, err := r.VIPs()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "VIP\tRESOURCE\tAFFINITY")
	keys := slices.SortedFunc(func(yield func(maps.VIP) bool) {
		for v := range vips {
			if !yield(v) {
				return
			}
		}
	}, func(a, b maps.VIP) int { return cmp.Compare(a.String(), b.String()) })
	for _, v := range keys {
		o := vips[v]
		aff := "-"
		if o.AffinityTimeout > 0 {
			aff = fmt.Sprintf("%v per /%d (v4) /%d (v6)", o.AffinityTimeout, o.AffinityPrefixV4, o.AffinityPrefixV6)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", v, n.resource(o.Resource), aff)
	}

	ms, err := r.Mirrors()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nMIRROR\tADDRESS\tSTATE\tENCAP")
	for _, id := range slices.Sorted(func(yield func(maps.MirrorID) bool) {
		for id := range ms {
			if !yield(id) {
				return
			}
		}
	}) {
		encap := ms[id].Encap.String()
		if ms[id].Encap == maps.EncapGUE {
			encap = fmt.Sprintf("%s udp/%d", encap, ms[id].GUEPort)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", n.mirror(id), ms[id].Addr, ms[id].State, encap)
	}

	routes := r.Routes()
	fmt.Fprintf(w, "\nRESOURCE\tREGION\tTABLE\tSHARES (of %d slots)\n", r.Config().TableSlots)
	rkeys := make([]maps.RouteKey, 0, len(routes))
	for k := range routes {
		rkeys = append(rkeys, k)
	}
	slices.SortFunc(rkeys, func(a, b maps.RouteKey) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Region, b.Region))
	})
	for _, k := range rkeys {
		rt := routes[k]
		shares := ""
		for _, m := range slices.Sorted(func(yield func(maps.MirrorID) bool) {
			for m := range rt.Shares {
				if !yield(m) {
					return
				}
			}
		}) {
			shares += fmt.Sprintf("%s=%.1f%% ", n.mirror(m), 100*float64(rt.Shares[m])/float64(r.Config().TableSlots))
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", n.resource(k.Resource), n.region(k.Region), rt.Table, shares)
	}

	prefixes, err := r.RegionPrefixes()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nREGION PREFIXES\t%d\n", len(prefixes))

	count := 0
	fmt.Fprintln(w, "\nSESSION\tMIRROR\tREGION")
	err = r.Sessions(func(s maps.Session) bool {
		if count < maxSessions {
			fmt.Fprintf(w, "%s\t%s\t%s\n", s.Flow, n.mirror(s.Mirror), n.region(s.Region))
		}
		count++
		return true
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "sessions\t%d\n", count)

	cs, err := r.Counters()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nRESOURCE\tREGION\tMIRROR\tPACKETS\tBYTES\tNEW FLOWS")
	ckeys := make([]maps.CounterKey, 0, len(cs))
	for k := range cs {
		ckeys = append(ckeys, k)
	}
	slices.SortFunc(ckeys, func(a, b maps.CounterKey) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Region, b.Region), cmp.Compare(a.Mirror, b.Mirror))
	})
	for _, k := range ckeys {
		v := cs[k]
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\n", n.resource(k.Resource), n.region(k.Region), n.mirror(k.Mirror), v.Packets, v.Bytes, v.NewFlows)
	}

	stats, err := r.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nVERDICT\tREASON\tPACKETS")
	for _, f := range stats.Fields() {
		if f.Value > 0 {
			fmt.Fprintf(w, "%s\t%s\t%d\n", f.Verdict, f.Name, f.Value)
		}
	}
	return nil
}

// nextHopText is the next-hop cache's state as operators read it.
func nextHopText(nh maps.NextHopCache) string {
	if nh.TTL == 0 {
		return fmt.Sprintf("off (a FIB lookup per packet)\tgeneration %d", nh.Generation)
	}
	ratio := "no VIP packet yet"
	if t := nh.Hits + nh.Lookups; t > 0 {
		ratio = fmt.Sprintf("%.1f%% of VIP packets without a FIB lookup", 100*float64(nh.Hits)/float64(t))
	}
	return fmt.Sprintf("ttl %v, generation %d\t%d hits, %d FIB lookups (%s)", nh.TTL, nh.Generation, nh.Hits, nh.Lookups, ratio)
}

// chainIfaceText names the interface of a chain slot.
func chainIfaceText(ifindex int) string {
	if ifindex == maps.AllInterfaces {
		return "every interface without its own"
	}
	if ifc, err := net.InterfaceByIndex(ifindex); err == nil {
		return fmt.Sprintf("%s (ifindex %d)", ifc.Name, ifindex)
	}
	return fmt.Sprintf("ifindex %d (no such interface here)", ifindex)
}
