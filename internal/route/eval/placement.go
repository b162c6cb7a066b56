package eval

import (
	"math"
)

// KMedoids places k mirrors among the candidate sites to minimize the mean
// RTT from every client to its nearest mirror (the k-median objective), by
// PAM: a greedy build, then swaps of a medoid for a non-medoid while any
// swap lowers the total. dist[c][s] is the RTT from client c to candidate s
// (+Inf when unknown). It is deterministic: ties go to the lower index.
func KMedoids(dist [][]float64, k int) []int {
	if len(dist) == 0 || k <= 0 {
		return nil
	}
	nS := len(dist[0])
	k = min(k, nS)
	chosen := make([]int, 0, k)
	in := make([]bool, nS)
	best := make([]float64, len(dist)) // each client's nearest chosen RTT
	for c := range best {
		best[c] = math.Inf(1)
	}
	total := func(extra int) float64 {
		t := 0.0
		for c := range dist {
			t += capInf(min(best[c], dist[c][extra]))
		}
		return t
	}
	// Build: add the site that lowers the total most.
	for len(chosen) < k {
		pick, pickCost := -1, math.Inf(1)
		for s := range nS {
			if in[s] {
				continue
			}
			if t := total(s); t < pickCost {
				pick, pickCost = s, t
			}
		}
		if pick < 0 {
			break
		}
		chosen = append(chosen, pick)
		in[pick] = true
		for c := range dist {
			best[c] = min(best[c], dist[c][pick])
		}
	}
	// Swap: first improvement, repeated until none; bounded for safety.
	// Each client's nearest and second-nearest chosen RTT make a swap's
	// cost O(clients) rather than O(clients·k); the sum runs over clients
	// in the same order with the same minima, so the result is what a full
	// recomputation gives.
	near := make([]int, len(dist)) // position in chosen of the nearest
	d1 := make([]float64, len(dist))
	d2 := make([]float64, len(dist))
	refresh := func() {
		for c := range dist {
			near[c], d1[c], d2[c] = -1, math.Inf(1), math.Inf(1)
			for p, s := range chosen {
				switch v := dist[c][s]; {
				case v < d1[c]:
					near[c], d1[c], d2[c] = p, v, d1[c]
				case v < d2[c]:
					d2[c] = v
				}
			}
		}
	}
	swapCost := func(i, s int) float64 {
		t := 0.0
		for c := range dist {
			other := d1[c]
			if near[c] == i {
				other = d2[c]
			}
			t += capInf(min(other, dist[c][s]))
		}
		return t
	}
	refresh()
	cur := 0.0
	for c := range dist {
		cur += capInf(d1[c])
	}
	for iter := 0; iter < 100; iter++ {
		improved := false
		for i := range chosen {
			for s := range nS {
				if in[s] {
					continue
				}
				if t := swapCost(i, s); t < cur-1e-9 {
					cur = t
					in[chosen[i]], in[s] = false, true
					chosen[i] = s
					refresh()
					improved = true
				}
			}
		}
		if !improved {
			break
		}
	}
	return chosen
}

// capInf keeps an unreachable client from making every placement +Inf.
func capInf(v float64) float64 {
	if math.IsInf(v, 1) {
		return 1e6
	}
	return v
}

// haversineKm is the great-circle distance between two sites.
func haversineKm(a, b Site) float64 {
	const r = 6371.0
	rad := math.Pi / 180
	dLat := (b.Lat - a.Lat) * rad
	dLon := (b.Lon - a.Lon) * rad
	h := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(a.Lat*rad)*math.Cos(b.Lat*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * r * math.Asin(math.Min(1, math.Sqrt(h)))
}

// ibmRegions are the city coordinates of IBM Cloud VPC regions (public city
// centres), so the geography baseline can run on the IBM file.
var ibmRegions = map[string][2]float64{
	"Dallas":        {32.7767, -96.7970},
	"Toronto":       {43.6532, -79.3832},
	"Washington DC": {38.9072, -77.0369},
	"Frankfurt":     {50.1109, 8.6821},
	"London":        {51.5072, -0.1276},
	"Madrid":        {40.4168, -3.7038},
	"Montreal":      {45.5019, -73.5674},
	"Chennai":       {13.0827, 80.2707},
	"Mumbai":        {19.0760, 72.8777},
	"Osaka":         {34.6937, 135.5023},
	"Sydney":        {-33.8688, 151.2093},
	"Tokyo":         {35.6762, 139.6503},
	"Sao Paulo":     {-23.5505, -46.6333},
}

// AddKnownGeo gives sites without coordinates the built-in ones of
// well-known region names (the IBM Cloud regions).
func AddKnownGeo(m *Matrix) {
	for i := range m.Sites {
		s := &m.Sites[i]
		if ll, ok := ibmRegions[s.Name]; ok && !s.HasGeo {
			s.Lat, s.Lon, s.HasGeo = ll[0], ll[1], true
		}
	}
}
