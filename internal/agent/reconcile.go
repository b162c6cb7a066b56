package agent

import (
	"fmt"
	"maps"
	"net/netip"

	"github.com/premirror/premirror/internal/chash"
	pmaps "github.com/premirror/premirror/internal/maps"
)

// Changes counts what one reconciliation wrote.
type Changes struct {
	Written int // entries created or updated
	Deleted int // entries removed
}

// Reconcile makes the router's maps hold exactly the compiled state,
// touching only entries that differ, so a restarted agent facing maps that
// already hold its state writes nothing. Order keeps every intermediate
// state forwardable: mirrors before the VIPs and routes that use them,
// stale routes and VIPs before the mirrors they referenced.
func Reconcile(r *pmaps.Router, want *Compiled, settings pmaps.Settings) (Changes, error) {
	var ch Changes
	cur, err := r.Settings()
	if err != nil {
		return ch, err
	}
	if cur != settings {
		if err := r.SetSettings(settings); err != nil {
			return ch, err
		}
		ch.Written++
	}

	haveMirrors, err := r.Mirrors()
	if err != nil {
		return ch, err
	}
	for id, m := range want.Mirrors {
		if haveMirrors[id] != m {
			if err := r.SetMirror(id, m); err != nil {
				return ch, err
			}
			ch.Written++
		}
	}

	havePrefixes, err := r.RegionPrefixes()
	if err != nil {
		return ch, err
	}
	for p, reg := range want.Prefixes {
		if got, ok := havePrefixes[p]; !ok || got != reg {
			if err := r.SetRegionPrefix(p, reg); err != nil {
				return ch, err
			}
			ch.Written++
		}
	}

	haveVIPs, err := r.VIPs()
	if err != nil {
		return ch, err
	}
	for v, o := range want.VIPs {
		if got, ok := haveVIPs[v]; !ok || !sameVIPOptions(got, o) {
			if err := r.SetVIP(v, o); err != nil {
				return ch, err
			}
			ch.Written++
		}
	}

	slots := r.Config().TableSlots
	haveRoutes := r.Routes()
	for k, w := range want.Routes {
		if have, ok := haveRoutes[k]; ok && sameShares(have.Shares, w, slots) {
			continue
		}
		if err := r.SetRoute(k.Resource, k.Region, w); err != nil {
			return ch, err
		}
		ch.Written++
	}
	for k := range haveRoutes {
		if _, ok := want.Routes[k]; !ok {
			if err := r.DeleteRoute(k.Resource, k.Region); err != nil {
				return ch, err
			}
			ch.Deleted++
		}
	}
	for v := range haveVIPs {
		if _, ok := want.VIPs[v]; !ok {
			if err := r.DeleteVIP(v); err != nil {
				return ch, err
			}
			ch.Deleted++
		}
	}
	for id := range haveMirrors {
		if _, ok := want.Mirrors[id]; !ok {
			if err := r.DeleteMirror(id); err != nil {
				return ch, err
			}
			ch.Deleted++
		}
	}
	for p := range havePrefixes {
		if _, ok := want.Prefixes[p]; !ok {
			if err := r.DeleteRegionPrefix(p); err != nil {
				return ch, err
			}
			ch.Deleted++
		}
	}
	return ch, nil
}

// sameVIPOptions compares options as the map stores them (prefix defaults
// filled in, timeouts in whole seconds).
func sameVIPOptions(have, want pmaps.VIPOptions) bool {
	norm := func(o pmaps.VIPOptions) pmaps.VIPOptions {
		if o.AffinityPrefixV4 == 0 {
			o.AffinityPrefixV4 = 32
		}
		if o.AffinityPrefixV6 == 0 {
			o.AffinityPrefixV6 = 64
		}
		o.AffinityTimeout = o.AffinityTimeout.Round(1e9)
		return o
	}
	return norm(have) == norm(want)
}

// sameShares reports whether a table already holds the quotas of w.
func sameShares(have map[pmaps.MirrorID]int, w map[pmaps.MirrorID]uint32, slots int) bool {
	raw := make(map[uint32]uint32, len(w))
	for id, v := range w {
		raw[uint32(id)] = v
	}
	q, err := chash.Quotas(raw, slots)
	if err != nil {
		return false
	}
	want := make(map[pmaps.MirrorID]int, len(q))
	for id, n := range q {
		if n > 0 {
			want[pmaps.MirrorID(id)] = n
		}
	}
	return maps.Equal(have, want)
}

// ReconcileDecap makes the decap program terminate exactly addrs.
func ReconcileDecap(d *pmaps.Decap, addrs []netip.Addr) (Changes, error) {
	var ch Changes
	have, err := d.Endpoints()
	if err != nil {
		return ch, err
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a.Unmap()] = true
	}
	got := map[netip.Addr]bool{}
	for _, a := range have {
		got[a] = true
		if !want[a] {
			if err := d.RemoveEndpoint(a); err != nil {
				return ch, err
			}
			ch.Deleted++
		}
	}
	for a := range want {
		if !got[a] {
			if err := d.AddEndpoint(a); err != nil {
				return ch, fmt.Errorf("decap endpoint %s: %w", a, err)
			}
			ch.Written++
		}
	}
	return ch, nil
}
