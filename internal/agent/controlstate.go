package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// StateFromProto converts a desired state streamed by the controller into
// the agent's DesiredState, checking every reference it resolves (region,
// mirror and weight-set IDs); the result still goes through Compile before
// it reaches the maps. An error names the offending field, and the agent
// NACKs the version with it.
func StateFromProto(st *pb.DesiredState) (DesiredState, error) {
	var out DesiredState
	if st == nil {
		return out, errors.New("desired state: missing")
	}
	out.DefaultRegion = st.GetDefaultRegion()
	regionName := make(map[uint32]string, len(st.GetRegions()))
	for i, r := range st.GetRegions() {
		if _, dup := regionName[r.GetId()]; dup {
			return out, fmt.Errorf("regions[%d].id: %d used twice", i, r.GetId())
		}
		regionName[r.GetId()] = r.GetName()
		out.Regions = append(out.Regions, Region{Name: r.GetName(), ID: r.GetId(), Prefixes: r.GetPrefixes()})
	}
	mirrorName := make(map[uint32]string, len(st.GetMirrors()))
	for i, m := range st.GetMirrors() {
		if _, dup := mirrorName[m.GetId()]; dup {
			return out, fmt.Errorf("mirrors[%d].id: %d used twice", i, m.GetId())
		}
		state, err := mirrorStateName(m.GetState())
		if err != nil {
			return out, fmt.Errorf("mirrors[%d].state: %w", i, err)
		}
		encap, err := encapName(m.GetEncap())
		if err != nil {
			return out, fmt.Errorf("mirrors[%d].encap: %w", i, err)
		}
		if m.GetGuePort() > 65535 {
			return out, fmt.Errorf("mirrors[%d].gue_port: %d out of [1, 65535]", i, m.GetGuePort())
		}
		mirrorName[m.GetId()] = m.GetName()
		// Compile checks that GUE has a port and IPIP none.
		out.Mirrors = append(out.Mirrors, Mirror{Name: m.GetName(), ID: m.GetId(), Address: m.GetAddress(), State: state,
			Encap: encap, GUEPort: int(m.GetGuePort()), Node: m.GetNode(), Resources: m.GetResourceIds()})
	}
	// Weight sets are shared between routes: resolve each once.
	sets := make([]map[string]uint32, len(st.GetWeightSets()))
	for i, ws := range st.GetWeightSets() {
		w := make(map[string]uint32, len(ws.GetWeights()))
		for j, mw := range ws.GetWeights() {
			name, ok := mirrorName[mw.GetMirrorId()]
			if !ok {
				return out, fmt.Errorf("weight_sets[%d].weights[%d].mirror_id: %d is not a mirror", i, j, mw.GetMirrorId())
			}
			if _, dup := w[name]; dup {
				return out, fmt.Errorf("weight_sets[%d].weights[%d].mirror_id: %d listed twice", i, j, mw.GetMirrorId())
			}
			w[name] = mw.GetWeight()
		}
		sets[i] = w
	}
	for i, r := range st.GetResources() {
		f := fmt.Sprintf("resources[%d]", i)
		res := Resource{Name: r.GetName(), ID: r.GetId(), HashNoSrcPort: r.GetHashNoSrcPort()}
		for j, v := range r.GetVips() {
			s, err := vipString(v)
			if err != nil {
				return out, fmt.Errorf("%s.vips[%d]: %w", f, j, err)
			}
			res.VIPs = append(res.VIPs, s)
		}
		if a := r.GetAffinity(); a != nil && a.GetTimeoutSeconds() > 0 {
			res.Affinity = &Affinity{
				Timeout:  Duration(time.Duration(a.GetTimeoutSeconds()) * time.Second),
				PrefixV4: int(a.GetPrefixV4()),
				PrefixV6: int(a.GetPrefixV6()),
			}
		}
		regs, wsets := r.GetRouteRegions(), r.GetRouteWeightSets()
		if len(regs) != len(wsets) {
			return out, fmt.Errorf("%s.route_weight_sets: %d entries for %d route_regions", f, len(wsets), len(regs))
		}
		res.Routes = make(map[string]map[string]uint32, len(regs))
		for j, reg := range regs {
			region := "*"
			if reg != 0 {
				name, ok := regionName[reg]
				if !ok {
					return out, fmt.Errorf("%s.route_regions[%d]: %d is not a region", f, j, reg)
				}
				region = name
			}
			if _, dup := res.Routes[region]; dup {
				return out, fmt.Errorf("%s.route_regions[%d]: region %q routed twice", f, j, region)
			}
			if int(wsets[j]) >= len(sets) {
				return out, fmt.Errorf("%s.route_weight_sets[%d]: %d out of %d sets", f, j, wsets[j], len(sets))
			}
			res.Routes[region] = sets[wsets[j]]
		}
		out.Resources = append(out.Resources, res)
	}
	return out, nil
}

func mirrorStateName(s pb.MirrorState) (string, error) {
	switch s {
	case pb.MirrorState_MIRROR_STATE_UNSPECIFIED, pb.MirrorState_MIRROR_STATE_ACTIVE:
		return "active", nil
	case pb.MirrorState_MIRROR_STATE_DRAINING:
		return "draining", nil
	case pb.MirrorState_MIRROR_STATE_DOWN:
		return "down", nil
	}
	return "", fmt.Errorf("unknown state %d", int32(s))
}

func encapName(e pb.Encapsulation) (string, error) {
	switch e {
	case pb.Encapsulation_ENCAPSULATION_UNSPECIFIED, pb.Encapsulation_ENCAPSULATION_IPIP:
		return "", nil
	case pb.Encapsulation_ENCAPSULATION_GUE:
		return "gue", nil
	}
	return "", fmt.Errorf("unknown encapsulation %d", int32(e))
}

// vipString renders a VIP the way ParseVIP reads it.
func vipString(v *pb.VIP) (string, error) {
	addr, err := netip.ParseAddr(v.GetAddress())
	if err != nil {
		return "", fmt.Errorf("address: %w", err)
	}
	if v.GetPort() == 0 || v.GetPort() > 65535 {
		return "", fmt.Errorf("port: %d out of [1, 65535]", v.GetPort())
	}
	var proto string
	switch v.GetProtocol() {
	case pb.Protocol_PROTOCOL_TCP:
		proto = "tcp"
	case pb.Protocol_PROTOCOL_UDP:
		proto = "udp"
	default:
		return "", fmt.Errorf("protocol: %v is not tcp or udp", v.GetProtocol())
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(v.GetPort())).String() + "/" + proto, nil
}
