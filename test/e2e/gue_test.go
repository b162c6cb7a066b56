package e2e

import (
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/testbed"
)

// TestGUEMirrors: mirrors configured with encap gue are reached over GUE
// (IPv4 outer to m-eu, IPv6 outer to m-core) through the real agents —
// the edge's static mirror config and the mirrors' decap_gue_port — beside
// an IPIP mirror (m-us), for TCP and UDP over IPv4 and IPv6, and a route
// change moves new flows between the two encapsulations.
func TestGUEMirrors(t *testing.T) {
	const guePort = 6635
	e := startWith(t, 1, webResource(map[string]map[string]uint32{
		"eu": {"m-eu": 1},
		"us": {"m-core": 1},
	}, nil), func(s *agent.DesiredState) {
		for i := range s.Mirrors {
			if n := s.Mirrors[i].Name; n == "m-eu" || n == "m-core" {
				s.Mirrors[i].Encap, s.Mirrors[i].GUEPort = "gue", guePort
			}
		}
	}, func(h *testbed.Host, c *agent.Config) error {
		if h.Role == testbed.RoleMirror {
			c.DecapGUEPort = guePort
		}
		return nil
	})
	check := func(want map[string]string) {
		t.Helper()
		for region, mirror := range want {
			c := e.tb.Clients(region)[0]
			for _, network := range []string{"tcp", "udp"} {
				for _, vip := range []netip.Addr{vip4, vip6} {
					if got := e.ask(c.Name, network, vip); got != mirror {
						t.Errorf("%s %s %s served by %s, want %s", c.Name, network, vip, got, mirror)
					}
				}
			}
		}
	}
	check(map[string]string{"eu": "m-eu", "us": "m-core"})
	for _, m := range []string{"m-eu", "m-core"} {
		if n := decapCount(t, e, m, "gue"); n == 0 {
			t.Errorf("%s decapsulated no GUE", m)
		}
	}
	// us moves to the IPIP mirror: new flows follow, encapsulated IPIP.
	e.setState(routes(map[string]map[string]uint32{"eu": {"m-eu": 1}, "us": {"m-us": 1}}))
	check(map[string]string{"us": "m-us"})
	if n := decapCount(t, e, "m-us", "gue"); n != 0 {
		t.Errorf("IPIP mirror m-us decapsulated %d GUE packets", n)
	}
	if n := decapCount(t, e, "m-us", "decap_v4") + decapCount(t, e, "m-us", "decap_v6"); n == 0 {
		t.Error("IPIP mirror m-us decapsulated nothing")
	}
}

var decapMetric = regexp.MustCompile(`(?m)^edge_decap_packets_total\{reason="([a-z0-9_]+)"\} (\d+)$`)

// decapCount reads a mirror agent's edge_decap_packets_total{reason}.
func decapCount(t *testing.T, e *env, host, reason string) uint64 {
	t.Helper()
	m, err := e.lab.Metrics(host)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range decapMetric.FindAllStringSubmatch(m, -1) {
		if g[1] == reason {
			n, _ := strconv.ParseUint(g[2], 10, 64)
			return n
		}
	}
	t.Fatalf("%s metrics lack edge_decap_packets_total{reason=%q}", host, reason)
	return 0
}

// TestDecapSources: a mirror host with decap_sources decapsulates only
// tunnel packets from the listed outer sources. m-eu lists the edge's
// outer addresses and serves; m-us lists another network, so the edge's
// packets to it are dropped and counted (drop_source) and its clients get
// no answer; m-core lists the edge's IPv6 network and serves over IPv6
// outer headers once routes move there.
func TestDecapSources(t *testing.T) {
	e := startWithTB(t, 1, webResource(map[string]map[string]uint32{
		"eu": {"m-eu": 1},
		"us": {"m-us": 1},
	}, nil), nil, func(tb *testbed.Testbed) func(*testbed.Host, *agent.Config) error {
		// A one-armed edge's tunnel packets leave from its only
		// interface (a two-armed one's from eth1, the lab's
		// outer_source_v4/v6).
		arm := tb.Host("edge1").Ifaces[0]
		return func(h *testbed.Host, c *agent.Config) error {
			switch h.Name {
			case "m-eu":
				c.DecapSources = []string{arm.V4.String(), arm.V6.String()}
			case "m-us":
				c.DecapSources = []string{"192.0.2.0/24", "2001:db8::/32"}
			case "m-core":
				c.DecapSources = []string{netip.PrefixFrom(arm.V6, 64).Masked().String()}
			}
			return nil
		}
	})
	for _, network := range []string{"tcp", "udp"} {
		for _, vip := range []netip.Addr{vip4, vip6} {
			if got := e.ask(e.tb.Clients("eu")[0].Name, network, vip); got != "m-eu" {
				t.Errorf("eu %s %s served by %s, want m-eu", network, vip, got)
			}
			if got := e.askQuick(e.tb.Clients("us")[0].Name, network, vip, time.Second); got != "" {
				t.Errorf("us %s %s served by %s through a mirror that does not list the edge", network, vip, got)
			}
		}
	}
	if n := decapCount(t, e, "m-us", "drop_source"); n == 0 {
		t.Error("m-us counted no drop_source")
	}
	if n := decapCount(t, e, "m-us", "decap_v4") + decapCount(t, e, "m-us", "decap_v6"); n != 0 {
		t.Errorf("m-us decapsulated %d packets from an unlisted source", n)
	}
	if n := decapCount(t, e, "m-eu", "drop_source"); n != 0 {
		t.Errorf("m-eu dropped %d packets of its listed edge", n)
	}
	e.setState(routes(map[string]map[string]uint32{"eu": {"m-eu": 1}, "us": {"m-core": 1}}))
	for _, network := range []string{"tcp", "udp"} {
		for _, vip := range []netip.Addr{vip4, vip6} {
			if got := e.ask(e.tb.Clients("us")[0].Name, network, vip); got != "m-core" {
				t.Errorf("us %s %s served by %s, want m-core", network, vip, got)
			}
		}
	}
}
