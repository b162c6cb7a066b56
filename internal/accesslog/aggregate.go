package accesslog

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/premirror/premirror/internal/textin"
)

// DefaultUnknown is the location of addresses no locator knows.
const DefaultUnknown = "unknown"

// Other is the location --top folds the remaining locations into.
const Other = "other"

// Counts aggregates requests into (bucket, location) counts: the access
// table the forecaster's CSV readers take (timestamp,location,value).
type Counts struct {
	step      time.Duration
	loc       Locator
	unknown   string
	index     map[string]int32 // location → column
	names     []string
	cells     map[cell]uint64
	minB      int64
	maxB      int64
	total     uint64
	unknown64 uint64
}

type cell struct {
	bucket int64
	loc    int32
}

// NewCounts aggregates into buckets of step, aligned to multiples of step
// since the Unix epoch (as forecast.Table.Series aligns them). loc may be
// nil (every request is unknown); unknown names the location of
// addresses loc does not know (empty: DefaultUnknown).
func NewCounts(step time.Duration, loc Locator, unknown string) (*Counts, error) {
	if step <= 0 {
		return nil, fmt.Errorf("bucket step %v is not positive", step)
	}
	if unknown == "" {
		unknown = DefaultUnknown
	}
	return &Counts{step: step, loc: loc, unknown: unknown, index: map[string]int32{}, cells: map[cell]uint64{}}, nil
}

// Add counts one request from client at t.
func (c *Counts) Add(client netip.Addr, t time.Time) {
	name, ok := "", false
	if c.loc != nil {
		name, ok = c.loc.Locate(client)
	}
	if !ok {
		name = c.unknown
		c.unknown64++
	}
	col, seen := c.index[name]
	if !seen {
		col = int32(len(c.names))
		c.index[name] = col
		c.names = append(c.names, name)
	}
	ns := t.UnixNano()
	b := ns / int64(c.step)
	if ns < 0 && ns%int64(c.step) != 0 {
		b-- // floor, not truncation, before 1970
	}
	if c.total == 0 || b < c.minB {
		c.minB = b
	}
	if c.total == 0 || b > c.maxB {
		c.maxB = b
	}
	c.cells[cell{b, col}]++
	c.total++
}

// Total is the number of requests counted (less those TrimStray left out).
func (c *Counts) Total() uint64 { return c.total }

// Stray is what TrimStray left out: requests before and after the rest,
// and the span of the buckets they fell in (zero times: none).
type Stray struct {
	Before, After uint64
	First, Last   time.Time // the first stray bucket before, the last after
}

// TrimStray leaves out the requests far before or after all the others
// (textin.StrayEnds over the buckets, weighted by their requests: at most
// 1% of the requests at either end, past a gap longer than the rest) — a
// typo'd year or a reset clock in a few lines, which would otherwise make
// every bucket between them and the rest a row of zeros in the CSV (a
// line dated 2105 in a log of 2015: 788,000 hourly rows). forecast's
// table reader leaves out stray rows by the same rule.
func (c *Counts) TrimStray() Stray {
	per := map[int64]uint64{}
	for k, v := range c.cells {
		per[k.bucket] += v
	}
	bs := make([]int64, 0, len(per))
	for b := range per {
		bs = append(bs, b)
	}
	slices.Sort(bs)
	n := make([]uint64, len(bs))
	for i, b := range bs {
		n[i] = per[b]
	}
	var st Stray
	lead, tail := textin.StrayEnds(bs, n)
	if lead == 0 && tail == 0 {
		return st
	}
	lo, hi := bs[lead], bs[len(bs)-1-tail]
	for k, v := range c.cells {
		switch {
		case k.bucket < lo:
			st.Before += v
		case k.bucket > hi:
			st.After += v
		default:
			continue
		}
		delete(c.cells, k)
	}
	if lead > 0 {
		st.First = c.bucketTime(bs[0])
	}
	if tail > 0 {
		st.Last = c.bucketTime(bs[len(bs)-1])
	}
	c.total -= st.Before + st.After
	c.minB, c.maxB = lo, hi
	return st
}

// bucketTime is the start of bucket b.
func (c *Counts) bucketTime(b int64) time.Time { return time.Unix(0, b*int64(c.step)).UTC() }

// Unknown is the number of requests whose address no locator knew, as
// read (TrimStray leaves it as it is, like the locators' own counts).
func (c *Counts) Unknown() uint64 { return c.unknown64 }

// LocationTotal is one location's request count.
type LocationTotal struct {
	Location string
	Requests uint64
}

// Locations returns every location with its total, most requests first
// (ties by name).
func (c *Counts) Locations() []LocationTotal {
	tot := make([]uint64, len(c.names))
	for k, v := range c.cells {
		tot[k.loc] += v
	}
	out := make([]LocationTotal, len(c.names))
	for i, n := range c.names {
		out[i] = LocationTotal{n, tot[i]}
	}
	slices.SortFunc(out, func(a, b LocationTotal) int {
		if a.Requests != b.Requests {
			return cmp.Compare(b.Requests, a.Requests)
		}
		return cmp.Compare(a.Location, b.Location)
	})
	return out
}

// maxCells bounds the rows WriteCSV writes (and the counts it holds in
// memory for them, 8 bytes each): ten years of one-minute buckets for a
// dozen locations.
const maxCells = 64 << 20

// ErrEmpty is returned when writing counts of no request.
var ErrEmpty = errors.New("no requests counted")

// WriteOptions shape the CSV WriteCSV writes.
type WriteOptions struct {
	// Top > 0 keeps the Top locations by total requests and sums the rest
	// into "other"; 0 keeps every location.
	Top int
	// Total writes timestamp,value (all locations summed) instead of
	// timestamp,location,value.
	Total bool
	// KeepPartial keeps the first and last buckets. By default they are
	// dropped: the log starts and ends inside them, so they hold only part
	// of a bucket's requests (forecast.Table.Series drops partial buckets
	// the same way).
	KeepPartial bool
}

// WriteCSV writes rows for every bucket from the first to the last
// request's and every location, zero counts included, so a quiet bucket
// is an observed zero, not a gap. Locations are sorted by name, "other"
// last.
func (c *Counts) WriteCSV(w io.Writer, o WriteOptions) error {
	top, total := o.Top, o.Total
	if c.total == 0 {
		return ErrEmpty
	}
	locs := c.Locations()
	keep := len(locs)
	if top > 0 && top < len(locs) {
		keep = top
	}
	// Output columns: the kept locations sorted by name, then "other"
	// for the rest (a real location named "other" shares its column).
	pos := map[string]int{}
	var names []string
	for _, l := range locs[:keep] {
		names = append(names, l.Location)
	}
	slices.Sort(names)
	if keep < len(locs) && !slices.Contains(names, Other) {
		names = append(names, Other)
	}
	for i, n := range names {
		pos[n] = i
	}
	colOut := make([]int, len(c.names))
	for i, n := range c.names {
		p, ok := pos[n]
		if !ok {
			p = pos[Other]
		}
		colOut[i] = p
	}
	nb := c.maxB - c.minB + 1
	if nb > maxCells/int64(len(names)) {
		return fmt.Errorf("the requests span %d buckets of %v (%s to %s) × %d locations, more than %d rows: a stray date in the log? (a longer --step, or fix those lines)",
			nb, c.step, c.bucketTime(c.minB).Format(time.DateTime), c.bucketTime(c.maxB).Format(time.DateTime), len(names), maxCells)
	}
	grid := make([]uint64, int(nb)*len(names))
	for k, v := range c.cells {
		grid[int(k.bucket-c.minB)*len(names)+colOut[k.loc]] += v
	}
	from, to := int64(0), nb
	if !o.KeepPartial {
		if nb < 3 {
			return fmt.Errorf("%w: the requests span %d bucket(s) of %v, all partial (use a shorter step or keep partial buckets)", ErrEmpty, nb, c.step)
		}
		from, to = 1, nb-1
	}
	bw := bufio.NewWriter(w)
	if total {
		bw.WriteString("timestamp,value\n")
	} else {
		bw.WriteString("timestamp,location,value\n")
	}
	var buf []byte
	for b := from; b < to; b++ {
		ts := c.bucketTime(c.minB + b).Format(time.DateTime)
		row := grid[int(b)*len(names) : int(b+1)*len(names)]
		if total {
			var s uint64
			for _, v := range row {
				s += v
			}
			buf = append(append(append(buf[:0], ts...), ','), strconv.FormatUint(s, 10)...)
			bw.Write(append(buf, '\n'))
			continue
		}
		for i, v := range row {
			buf = append(append(append(buf[:0], ts...), ','), names[i]...)
			buf = strconv.AppendUint(append(buf, ','), v, 10)
			bw.Write(append(buf, '\n'))
		}
	}
	return bw.Flush()
}
