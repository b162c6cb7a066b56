package agent

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/chash"
	pmaps "github.com/premirror/premirror/internal/maps"
)

// Changes counts what one reconciliation wrote.
type Changes struct {
	Written int // entries created or updated
	Deleted int // entries removed
}

// Observed is what the router's maps hold, as far as reconciliation is
// concerned. ReadObserved reads it from the maps (at start, after a
// failed write, and before the first routing state after keepRouting,
// which a failure puts back: keptImage); after a successful Reconcile the
// agent keeps the Observed it just wrote, so a new version costs no map
// reads — with 1M client prefixes, reading the LPM tries back would take
// seconds.
type Observed struct {
	Settings pmaps.Settings
	Mirrors  map[pmaps.MirrorID]pmaps.Mirror
	Prefixes map[netip.Prefix]pmaps.RegionID
	VIPs     map[pmaps.VIP]pmaps.VIPOptions
	Shares   map[pmaps.RouteKey]map[pmaps.MirrorID]int
}

// ReadObserved reads the state the router's maps hold.
func ReadObserved(r *pmaps.Router) (*Observed, error) {
	o := &Observed{Shares: map[pmaps.RouteKey]map[pmaps.MirrorID]int{}}
	var err error
	if o.Settings, err = r.Settings(); err != nil {
		return nil, err
	}
	if o.Mirrors, err = r.Mirrors(); err != nil {
		return nil, err
	}
	if o.Prefixes, err = r.RegionPrefixes(); err != nil {
		return nil, err
	}
	if o.VIPs, err = r.VIPs(); err != nil {
		return nil, err
	}
	for k, rt := range r.Routes() {
		o.Shares[k] = rt.Shares
	}
	return o, nil
}

// observedAfter is what the maps hold once want and settings are applied.
func observedAfter(want *Compiled, settings pmaps.Settings, slots int) *Observed {
	o := &Observed{Settings: settings, Mirrors: want.Mirrors, Prefixes: want.Prefixes, VIPs: want.VIPs,
		Shares: make(map[pmaps.RouteKey]map[pmaps.MirrorID]int, len(want.Routes))}
	for k, w := range want.Routes {
		if t, ok := want.Tables[k]; ok {
			o.Shares[k] = tableShares(t)
			continue
		}
		o.Shares[k] = quotaShares(w, slots)
	}
	return o
}

// tableShares is the slot count per mirror of a table.
func tableShares(t []uint32) map[pmaps.MirrorID]int {
	out := map[pmaps.MirrorID]int{}
	for id, n := range chash.Counts(t) {
		out[pmaps.MirrorID(id)] = n
	}
	return out
}

// Reconcile makes the router's maps hold exactly the compiled state,
// touching only entries that differ from have (what the maps hold; nil
// reads it from them), so a restarted agent facing maps that already hold
// its state writes nothing. Order keeps every intermediate state
// forwardable: mirrors before the VIPs and routes that use them, routes
// before the client prefixes and default region that lead to them,
// prefixes moved or removed before the routes of the regions they left
// are deleted, stale routes and VIPs before the mirrors they referenced.
// A route of want.Tables gets that table slot for slot. On success it
// returns what the maps now hold.
func Reconcile(r *pmaps.Router, want *Compiled, settings pmaps.Settings, have *Observed) (Changes, *Observed, error) {
	var ch Changes
	if have == nil {
		var err error
		if have, err = ReadObserved(r); err != nil {
			return ch, nil, err
		}
	}
	lim := r.Config()
	// Stale entries go after the new ones are written, unless both would
	// not fit the map together: Compile only checks that the new state
	// fits, and a full map would refuse the new entries on every retry.
	// Those stale entries are leaving anyway: they go first.
	deleteVIPs := func() error { return deleteStale(have.VIPs, want.VIPs, r.DeleteVIP, &ch.Deleted) }
	deleteRoutes := func() error {
		return deleteStale(have.Shares, want.Routes, func(k pmaps.RouteKey) error { return r.DeleteRoute(k.Resource, k.Region) }, &ch.Deleted)
	}
	deletePrefixes := func() error { return deleteStale(have.Prefixes, want.Prefixes, r.DeleteRegionPrefix, &ch.Deleted) }
	vipsFirst := unionLen(have.VIPs, want.VIPs, nil) > lim.MaxVIPs
	routesFirst := unionLen(have.Shares, want.Routes, nil) > lim.MaxRoutes
	is4 := func(p netip.Prefix) bool { return p.Addr().Is4() }
	is6 := func(p netip.Prefix) bool { return !p.Addr().Is4() }
	prefixesFirst := unionLen(have.Prefixes, want.Prefixes, is4) > lim.MaxPrefixesV4 ||
		unionLen(have.Prefixes, want.Prefixes, is6) > lim.MaxPrefixesV6

	// The outer sources go first (a new mirror may need one); a new
	// default region only once its routes are in place.
	early := settings
	early.DefaultRegion = have.Settings.DefaultRegion
	if have.Settings != early {
		if err := r.SetSettings(early); err != nil {
			return ch, nil, err
		}
		ch.Written++
	}
	for id, m := range want.Mirrors {
		if have.Mirrors[id] != m {
			if err := r.SetMirror(id, m); err != nil {
				return ch, nil, err
			}
			ch.Written++
		}
	}
	if vipsFirst {
		if err := deleteVIPs(); err != nil {
			return ch, nil, err
		}
	}
	for v, o := range want.VIPs {
		if got, ok := have.VIPs[v]; !ok || !sameVIPOptions(got, o) {
			if err := r.SetVIP(v, o); err != nil {
				return ch, nil, err
			}
			ch.Written++
		}
	}
	if routesFirst {
		if err := deleteRoutes(); err != nil {
			return ch, nil, err
		}
	}
	slots := lim.TableSlots
	var tables map[pmaps.RouteKey][]uint32
	if len(want.Tables) > 0 {
		tables = r.RouteTables()
	}
	for k, w := range want.Routes {
		if t, ok := want.Tables[k]; ok {
			// Slot for slot: equal shares can hide moved slots.
			if sameSlots(tables[k], t) {
				continue
			}
			if err := r.SetRouteSlots(k.Resource, k.Region, t); err != nil {
				return ch, nil, err
			}
			ch.Written++
			continue
		}
		if got, ok := have.Shares[k]; ok && maps.Equal(got, quotaShares(w, slots)) {
			continue
		}
		if err := r.SetRoute(k.Resource, k.Region, w); err != nil {
			return ch, nil, err
		}
		ch.Written++
	}
	// Clients move to their new regions once those have routes, and
	// leave their old ones before those lose theirs.
	if prefixesFirst {
		if err := deletePrefixes(); err != nil {
			return ch, nil, err
		}
	}
	for p, reg := range want.Prefixes {
		if got, ok := have.Prefixes[p]; !ok || got != reg {
			if err := r.SetRegionPrefix(p, reg); err != nil {
				return ch, nil, err
			}
			ch.Written++
		}
	}
	if settings.DefaultRegion != early.DefaultRegion {
		if err := r.SetSettings(settings); err != nil {
			return ch, nil, err
		}
		if have.Settings == early {
			ch.Written++
		}
	}
	if !prefixesFirst {
		if err := deletePrefixes(); err != nil {
			return ch, nil, err
		}
	}
	if !routesFirst {
		if err := deleteRoutes(); err != nil {
			return ch, nil, err
		}
	}
	if !vipsFirst {
		if err := deleteVIPs(); err != nil {
			return ch, nil, err
		}
	}
	for id := range have.Mirrors {
		if _, ok := want.Mirrors[id]; !ok {
			if err := r.DeleteMirror(id); err != nil {
				return ch, nil, err
			}
			ch.Deleted++
		}
	}
	return ch, observedAfter(want, settings, slots), nil
}

// deleteStale deletes, with del, every key of have that want lacks,
// counting them in n.
func deleteStale[K comparable, A, B any](have map[K]A, want map[K]B, del func(K) error, n *int) error {
	for k := range have {
		if _, ok := want[k]; !ok {
			if err := del(k); err != nil {
				return err
			}
			*n++
		}
	}
	return nil
}

// sameSlots compares two route tables; one read from the router and
// not written since is the same slice (Router.RouteTables), which spares
// comparing 16K slots per route.
func sameSlots(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b)
}

// unionLen counts the keys of a and b (those for which keep holds, every
// key when keep is nil): the entries a map holds between writing b's and
// deleting a's others.
func unionLen[K comparable, A, B any](a map[K]A, b map[K]B, keep func(K) bool) int {
	n := 0
	for k := range a {
		if keep == nil || keep(k) {
			n++
		}
	}
	for k := range b {
		if _, dup := a[k]; !dup && (keep == nil || keep(k)) {
			n++
		}
	}
	return n
}

// sameVIPOptions compares options as the map stores them (prefix defaults
// filled in, timeouts in whole seconds rounded up).
func sameVIPOptions(have, want pmaps.VIPOptions) bool {
	norm := func(o pmaps.VIPOptions) pmaps.VIPOptions {
		if o.AffinityPrefixV4 == 0 {
			o.AffinityPrefixV4 = 32
		}
		if o.AffinityPrefixV6 == 0 {
			o.AffinityPrefixV6 = 64
		}
		// SetVIP keeps whole seconds, rounded up.
		if o.AffinityTimeout > 0 {
			o.AffinityTimeout = (o.AffinityTimeout + time.Second - 1).Truncate(time.Second)
		}
		return o
	}
	return norm(have) == norm(want)
}

// quotaShares is the slot count per mirror a table built from w holds.
func quotaShares(w map[pmaps.MirrorID]uint32, slots int) map[pmaps.MirrorID]int {
	raw := make(map[uint32]uint32, len(w))
	for id, v := range w {
		raw[uint32(id)] = v
	}
	q, err := chash.Quotas(raw, slots)
	if err != nil {
		return nil
	}
	out := make(map[pmaps.MirrorID]int, len(q))
	for id, n := range q {
		if n > 0 {
			out[pmaps.MirrorID(id)] = n
		}
	}
	return out
}

// ReconcileDecap makes the decap program terminate exactly the addresses
// of want, each also accepting GUE on its port (0: IPIP and IPv6 tunnels
// only), and taking tunnel packets only from the prefixes of
// pm_decap_sources when sourcesOnly.
func ReconcileDecap(d *pmaps.Decap, want map[netip.Addr]uint16, sourcesOnly bool) (Changes, error) {
	var ch Changes
	have, err := d.Endpoints()
	if err != nil {
		return ch, err
	}
	got := map[netip.Addr]bool{}
	for _, e := range have {
		port, ok := want[e.Addr]
		if !ok {
			if err := d.RemoveEndpoint(e.Addr); err != nil {
				return ch, err
			}
			ch.Deleted++
			continue
		}
		got[e.Addr] = e.GUEPort == port && e.SourcesOnly == sourcesOnly
	}
	for a, port := range want {
		if !got[a] {
			if err := d.SetEndpoint(pmaps.DecapEndpoint{Addr: a, GUEPort: port, SourcesOnly: sourcesOnly}); err != nil {
				return ch, fmt.Errorf("decap endpoint %s: %w", a, err)
			}
			ch.Written++
		}
	}
	return ch, nil
}

// Why a host does not report a mirror it serves up (MirrorHealth.reason).
// The GUE ones are DOWN: edges' GUE packets are not decapsulated, and the
// probes cannot tell (the decap program answers them either way). The
// others are UNKNOWN, left to the probes: a mirror's address may be a
// public address NATed to the host's own, which this host cannot see.
const (
	// The mirror's gue_port is this host's probe.port: decapsulating GUE
	// there would swallow the edges' probes, so the port is not opened.
	hostedGUEProbePort = "gue_port_is_probe_port"
	// Another mirror at the same address (the lowest ID) took the
	// address's one GUE port with a different gue_port.
	hostedGUEConflict = "gue_port_conflict"
	// The mirror names this host but its address is none of this host's
	// decap addresses.
	hostedNotDecapsulated = "address_not_decapsulated"
	// The mirror names this host, which runs no decap program (role edge).
	hostedNoDecap = "no_decap_program"
)

// hostedMirror is this host's verdict on a mirror it serves: one at a
// decap address of its, or one whose desired state names it as host.
type hostedMirror struct {
	health pb.Health
	reason string         // why not up
	other  pmaps.MirrorID // gue_port_conflict: the mirror whose port stands
}

var hostedUp = hostedMirror{health: pb.Health_HEALTH_UP}

func hostedDown(reason string) hostedMirror {
	return hostedMirror{health: pb.Health_HEALTH_DOWN, reason: reason}
}

func hostedUnknown(reason string) hostedMirror {
	return hostedMirror{health: pb.Health_HEALTH_UNKNOWN, reason: reason}
}

// planDecap decides the GUE port of each decap address and this host's
// verdict on every mirror it serves. An address accepts GUE on
// decap_gue_port (def), or on the port a GUE mirror at that address is
// reached on (the desired state's mirrors say how edges encapsulate
// toward this host, so its decap accepts exactly that; a static
// decap_gue_port that disagrees is overridden and reported). An address
// has one GUE port: mirrors are taken in ID order and the first one's
// port stands, a later mirror there with another port is down (so is a
// mirror whose port is probePort, 0 when probes are off). A mirror that
// names this node (from the controller) but is at none of addrs is
// unknown. Deterministic: map order never picks the port.
func planDecap(addrs []netip.Addr, def, probePort uint16, c *Compiled, node string, log *slog.Logger) (map[netip.Addr]uint16, map[pmaps.MirrorID]hostedMirror) {
	want := make(map[netip.Addr]uint16, len(addrs))
	for _, a := range addrs {
		want[a.Unmap()] = def
	}
	hosted := map[pmaps.MirrorID]hostedMirror{}
	if c == nil {
		return want, hosted
	}
	claimed := map[netip.Addr]pmaps.MirrorID{}
	for _, id := range slices.Sorted(maps.Keys(c.Mirrors)) {
		m := c.Mirrors[id]
		a := m.Addr.Unmap()
		p, local := want[a]
		switch {
		case !local:
			if node != "" && c.MirrorNodes[id] == node {
				hosted[id] = hostedUnknown(hostedNotDecapsulated)
			}
			continue
		case m.Encap != pmaps.EncapGUE:
			hosted[id] = hostedUp
			continue
		case probePort != 0 && m.GUEPort == probePort:
			hosted[id] = hostedDown(hostedGUEProbePort)
			continue
		}
		if first, ok := claimed[a]; ok {
			if p == m.GUEPort {
				hosted[id] = hostedUp
			} else {
				hosted[id] = hostedMirror{health: pb.Health_HEALTH_DOWN, reason: hostedGUEConflict, other: first}
			}
			continue
		}
		claimed[a] = id
		hosted[id] = hostedUp
		if p != m.GUEPort && p != 0 && log != nil {
			log.Warn("decap_gue_port overridden by the mirror's gue_port", "address", a, "mirror", c.MirrorNames[id], "decap_gue_port", p, "gue_port", m.GUEPort)
		}
		want[a] = m.GUEPort
	}
	return want, hosted
}

// hostedWithoutDecap is the verdict of a host without a decap program
// (role edge) on the mirrors that name it as their host.
func hostedWithoutDecap(c *Compiled, node string) map[pmaps.MirrorID]hostedMirror {
	hosted := map[pmaps.MirrorID]hostedMirror{}
	if c == nil || node == "" {
		return hosted
	}
	for id, n := range c.MirrorNodes {
		if n == node {
			hosted[id] = hostedUnknown(hostedNoDecap)
		}
	}
	return hosted
}

// logHosted logs the changes of this host's verdicts on its mirrors.
func logHosted(log *slog.Logger, prev, cur map[pmaps.MirrorID]hostedMirror, c *Compiled) {
	for _, id := range slices.Sorted(maps.Keys(cur)) {
		h, was := cur[id], prev[id]
		_, seen := prev[id]
		if seen && was == h {
			continue
		}
		name := c.MirrorNames[id]
		switch {
		case h.reason == hostedGUEConflict:
			log.Warn("mirror served by this host reported down: another mirror at its address took the GUE port",
				"mirror", name, "reason", h.reason, "gue_port", c.Mirrors[id].GUEPort,
				"kept", c.MirrorNames[h.other], "kept_gue_port", c.Mirrors[h.other].GUEPort)
		case h.health == pb.Health_HEALTH_DOWN:
			log.Warn("mirror served by this host reported down", "mirror", name, "reason", h.reason)
		case h.health == pb.Health_HEALTH_UNKNOWN:
			log.Warn("mirror names this host, which cannot vouch for it: left to the probes", "mirror", name, "reason", h.reason,
				"address", c.Mirrors[id].Addr)
		case seen:
			log.Info("mirror served by this host reported up again", "mirror", name)
		}
	}
}
