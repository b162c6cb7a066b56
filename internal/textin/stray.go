package textin

// StrayEnds finds the few samples far before or after all the others in
// a time-ordered input — a placeholder date (epoch zero), a typo'd year, a
// reset clock — that would otherwise stretch a series over decades of
// empty buckets. pos are the distinct positions (times), sorted
// ascending; weight[i] is how many samples pos[i] holds (nil: one each).
// At either end, the first lead (last tail) positions are stray when
// together they hold at most 1% of the samples and a gap longer than the
// span of the rest separates them from it. Strays at one end stretch the
// span the other end's gap is compared with, so the rule is re-applied to
// what is left until nothing more is stray.
func StrayEnds(pos []int64, weight []uint64) (lead, tail int) {
	w := func(i int) uint64 {
		if weight == nil {
			return 1
		}
		return weight[i]
	}
	for {
		rest := pos[lead : len(pos)-tail]
		m := len(rest)
		if m < 3 {
			return lead, tail
		}
		var total uint64
		for i := range rest {
			total += w(lead + i)
		}
		l, t := 0, 0
		var cum uint64
		for k := 1; k < m-1; k++ {
			if cum += w(lead + k - 1); cum*100 > total {
				break
			}
			if rest[k]-rest[k-1] > rest[m-1]-rest[k] {
				l = k
			}
		}
		cum = 0
		for k := 1; m-k-1 > l; k++ {
			if cum += w(lead + m - k); cum*100 > total {
				break
			}
			if rest[m-k]-rest[m-k-1] > rest[m-k-1]-rest[l] {
				t = k
			}
		}
		if l == 0 && t == 0 {
			return lead, tail
		}
		lead, tail = lead+l, tail+t
	}
}
