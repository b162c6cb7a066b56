package agent

import (
	"cmp"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// edgeSource is one registered edge's outer source, as the controller
// lists them (DesiredState.edge_sources).
type edgeSource struct {
	node string
	addr netip.Addr
}

func (e edgeSource) String() string { return e.node + "=" + e.addr.String() }

// edgeSourcesFromProto reads the controller's list, skipping what does
// not parse (the list is informational: a bad entry must not NACK the
// routes it came with) and this node's own sources.
func edgeSourcesFromProto(es []*pb.EdgeSource, self string) []edgeSource {
	var out []edgeSource
	for _, e := range es {
		if e.GetNode() == self {
			continue
		}
		for _, s := range e.GetAddresses() {
			if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, edgeSource{node: e.GetNode(), addr: a.Unmap()})
			}
		}
	}
	// Sorted and without repeats: each is one metric series.
	slices.SortFunc(out, func(x, y edgeSource) int {
		return cmp.Or(strings.Compare(x.node, y.node), x.addr.Compare(y.addr))
	})
	return slices.Compact(out)
}

// unlistedEdges are the edges whose outer source no prefix of srcs
// holds: this host's decap would refuse their tunnel packets
// (drop_source). None when srcs is empty: the decap takes any source.
func unlistedEdges(edges []edgeSource, srcs []netip.Prefix) []edgeSource {
	if len(srcs) == 0 {
		return nil
	}
	var out []edgeSource
	for _, e := range edges {
		if !slices.ContainsFunc(srcs, func(p netip.Prefix) bool { return p.Contains(e.addr) }) {
			out = append(out, e)
		}
	}
	return out
}

// checkEdgeSources compares the registered edges' outer sources with
// this host's decap_sources after every apply (a controller version, a
// reload, an address change), so a missing edge is named before its
// first packet is refused; the log says when the set changes.
func (a *Agent) checkEdgeSources(prevCfg, cfg *Config) {
	if a.decap == nil {
		return
	}
	srcs := cfg.decapSources()
	a.mu.Lock()
	now := unlistedEdges(a.edgeSources, srcs)
	prev := a.unlisted
	a.unlisted = now
	a.mu.Unlock()
	// The controller routes no region through this host's mirrors while
	// an edge of it is unlisted: a new list must not wait for the next
	// report.
	if prevCfg != nil && !slices.Equal(prevCfg.decapSources(), srcs) && a.cp != nil && a.cp.client != nil {
		a.cp.client.ReportNow()
	}
	if slices.Equal(prev, now) {
		return
	}
	if len(now) == 0 {
		a.log.Info("decap_sources lists every registered edge's outer source")
		return
	}
	names := make([]string, len(now))
	for i, e := range now {
		names[i] = e.String()
	}
	a.log.Warn("decap_sources would refuse registered edges: add their outer sources or networks",
		slog.String("edges", strings.Join(names, ",")))
}

// noteOuterSources reports an edge's new outer source (a derived one
// followed its interface) to the controller at once: hosts whose lists
// leave it out drop its packets from now on, until its region is routed
// around them.
func (a *Agent) noteOuterSources() {
	if a.router == nil {
		return
	}
	outer := a.outerSources()
	a.mu.Lock()
	changed := !slices.Equal(outer, a.reportedOuter)
	a.reportedOuter = outer
	a.mu.Unlock()
	if changed && a.cp != nil && a.cp.client != nil {
		a.cp.client.ReportNow()
	}
}

// outerSources are the outer sources the router writes (nil without the
// router, or before its settings are set).
func (a *Agent) outerSources() []string {
	if a.router == nil {
		return nil
	}
	st, err := a.router.Settings()
	if err != nil {
		return nil
	}
	var out []string
	for _, ad := range []netip.Addr{st.OuterSourceV4, st.OuterSourceV6} {
		if ad.IsValid() {
			out = append(out, ad.String())
		}
	}
	return out
}

// decapSourcesReported are the prefixes of decap_sources in force (the
// last applied configuration's), for the controller.
func (a *Agent) decapSourcesReported() []string {
	a.mu.Lock()
	cfg := a.cfg
	a.mu.Unlock()
	if cfg == nil {
		return nil
	}
	var out []string
	for _, p := range cfg.decapSources() {
		out = append(out, p.String())
	}
	return out
}
