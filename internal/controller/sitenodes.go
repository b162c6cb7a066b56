package controller

import (
	"fmt"
	"iter"
	"maps"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// inventory is the sites' lists of their nodes (Site.nodes): a node a
// site lists belongs to that site alone, and a site that lists its nodes
// takes only those. Sites that list nobody take anyone (the node's word),
// so an inventory can be added site by site.
type inventory struct {
	home   map[string]string // node → the site that lists it
	listed map[string]bool   // sites that list their nodes
}

func newInventory(sites iter.Seq[*pb.Site]) inventory {
	inv := inventory{home: map[string]string{}, listed: map[string]bool{}}
	for s := range sites {
		for _, n := range s.GetNodes() {
			inv.home[n] = s.GetName()
		}
		if len(s.GetNodes()) > 0 {
			inv.listed[s.GetName()] = true
		}
	}
	return inv
}

// allows reports whether node may speak as a node of site.
func (inv inventory) allows(node, site string) error {
	home, ok := inv.home[node]
	switch {
	case ok && home != site:
		return fmt.Errorf("node %q belongs to site %q, not %q", node, home, site)
	case !ok && inv.listed[site]:
		return fmt.Errorf("site %q lists its nodes and %q is not one of them", site, node)
	}
	return nil
}

// siteAllows checks a node's site against the sites the view holds.
func (v *view) siteAllows(node, site string) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return newInventory(maps.Values(v.sites)).allows(node, site)
}
