package forecast

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// KindHoliday is the event kind that makes a day behave like a Sunday in
// every model (day type "holiday"). Other kinds are regressors whose
// effect is learnt.
const KindHoliday = "holiday"

// Event is one entry of the events calendar: a holiday, a launch, a match,
// a storm. It is active on [Start, End).
type Event struct {
	Start, End time.Time
	Name       string
	Kind       string
	Region     string // "" applies to every region
}

// Calendar is an immutable, sorted set of events. Safe for concurrent use.
type Calendar struct {
	events []Event
	kinds  []string // distinct non-holiday kinds, sorted
	maxDur time.Duration
}

// NewCalendar validates and indexes events.
func NewCalendar(events []Event) (*Calendar, error) {
	c := &Calendar{events: append([]Event(nil), events...)}
	seen := map[string]bool{}
	for i, e := range c.events {
		if e.Kind == "" {
			return nil, fmt.Errorf("%w: event %d (%q): empty kind", ErrBadInput, i, e.Name)
		}
		if !e.End.After(e.Start) {
			return nil, fmt.Errorf("%w: event %d (%q): end %v not after start %v", ErrBadInput, i, e.Name, e.End, e.Start)
		}
		if e.Kind != KindHoliday && !seen[e.Kind] {
			seen[e.Kind] = true
			c.kinds = append(c.kinds, e.Kind)
		}
		c.maxDur = max(c.maxDur, e.End.Sub(e.Start))
	}
	sort.Strings(c.kinds)
	sort.SliceStable(c.events, func(i, j int) bool { return c.events[i].Start.Before(c.events[j].Start) })
	return c, nil
}

// Events returns a copy of the calendar's events.
func (c *Calendar) Events() []Event {
	if c == nil {
		return nil
	}
	return append([]Event(nil), c.events...)
}

// Kinds lists the distinct non-holiday event kinds.
func (c *Calendar) Kinds() []string {
	if c == nil {
		return nil
	}
	return c.kinds
}

// each calls fn for every event active at t in region.
func (c *Calendar) each(t time.Time, region string, fn func(*Event)) {
	if c == nil || len(c.events) == 0 {
		return
	}
	// Events starting after t cannot be active; scan back while an
	// event could still cover t.
	i := sort.Search(len(c.events), func(i int) bool { return c.events[i].Start.After(t) })
	lim := t.Add(-c.maxDur)
	for j := i - 1; j >= 0 && !c.events[j].Start.Before(lim); j-- {
		e := &c.events[j]
		if t.Before(e.End) && (e.Region == "" || e.Region == region) {
			fn(e)
		}
	}
}

// Holiday reports whether t falls on a holiday for region.
func (c *Calendar) Holiday(t time.Time, region string) bool {
	h := false
	c.each(t, region, func(e *Event) {
		if e.Kind == KindHoliday {
			h = true
		}
	})
	return h
}

// Active reports whether an event of kind is active at t for region.
func (c *Calendar) Active(t time.Time, region, kind string) bool {
	a := false
	c.each(t, region, func(e *Event) {
		if e.Kind == kind {
			a = true
		}
	})
	return a
}

// ReadEvents parses an events calendar CSV:
//
//	start,end,name,kind[,region]
//
// start and end are timestamps or dates; a date-only end is inclusive
// (the event lasts through that day). A header row starting with "start"
// is skipped. Kind "holiday" marks days that behave like a Sunday.
func ReadEvents(r io.Reader) ([]Event, error) {
	cr, _, err := newCSVReader(r)
	if err != nil {
		return nil, err
	}
	cr.TrimLeadingSpace = true
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	var out []Event
	err = eachRow(cr, "events", 0, func(line int, row []string) error {
		if line == 1 && len(row) > 0 && strings.EqualFold(strings.TrimSpace(row[0]), "start") {
			return nil
		}
		if len(row) < 4 || len(row) > 5 {
			return fmt.Errorf("%w: events line %d: %d columns, want start,end,name,kind[,region]", ErrBadInput, line, len(row))
		}
		s, err := ParseTime(row[0])
		if err != nil {
			return fmt.Errorf("events line %d start: %w", line, err)
		}
		e, err := ParseTime(row[1])
		if err != nil {
			return fmt.Errorf("events line %d end: %w", line, err)
		}
		if len(strings.TrimSpace(row[1])) <= len("2006-01-02") {
			e = e.Add(24 * time.Hour) // a date-only end includes that day
		}
		ev := Event{Start: s, End: e, Name: strings.TrimSpace(row[2]), Kind: strings.ToLower(strings.TrimSpace(row[3]))}
		if len(row) == 5 {
			ev.Region = strings.TrimSpace(row[4])
		}
		if ev.Kind == "" {
			return fmt.Errorf("%w: events line %d: empty kind", ErrBadInput, line)
		}
		if !ev.End.After(ev.Start) {
			return fmt.Errorf("%w: events line %d: end before start", ErrBadInput, line)
		}
		out = append(out, ev)
		return nil
	})
	return out, err
}

// eachRow calls fn with every row of cr and its line number (counting
// from first+1); a CSV syntax error or fn's error stops it.
func eachRow(cr *csv.Reader, what string, first int, fn func(line int, row []string) error) error {
	line := first
	for {
		row, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		line++
		if err != nil {
			return fmt.Errorf("%w: %s line %d: %v", ErrBadInput, what, line, err)
		}
		if err := fn(line, row); err != nil {
			return err
		}
	}
}

// Covariates holds numeric external feeds (weather and the like) on a
// bucket grid, per name and optionally per region. Reads of a bucket with
// no value return the latest earlier value (persistence), which is what a
// model sees for future buckets when no forecast of the covariate was fed.
// Safe for concurrent use.
type Covariates struct {
	mu   sync.RWMutex
	step int64 // seconds
	data map[covKey]*covSeries
}

type covKey struct{ name, region string }

type covSeries struct {
	first int64     // bucket index of vals[0]
	vals  []float64 // NaN where nothing was set
}

// maxCovSpan bounds one covariate series (in buckets) so a stray
// timestamp cannot allocate without limit: ten years of 5-minute buckets.
const maxCovSpan = 10 * 366 * 288

// NewCovariates returns an empty feed store on the given bucket length.
func NewCovariates(step time.Duration) *Covariates {
	s := int64(step / time.Second)
	if s <= 0 {
		s = 3600
	}
	return &Covariates{step: s, data: map[covKey]*covSeries{}}
}

func (c *Covariates) bucket(t time.Time) int64 {
	u := t.Unix()
	b := u / c.step
	if u%c.step < 0 {
		b--
	}
	return b
}

// Set stores the value of covariate name for region ("" = every region)
// in the bucket containing t.
func (c *Covariates) Set(name, region string, t time.Time, v float64) error {
	if name == "" {
		return fmt.Errorf("%w: covariate with empty name", ErrBadInput)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("%w: covariate %s at %v: not finite", ErrBadInput, name, t)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := covKey{name, region}
	b := c.bucket(t)
	s := c.data[k]
	if s == nil {
		s = &covSeries{first: b}
		c.data[k] = s
	}
	switch {
	case b < s.first:
		if s.first-b+int64(len(s.vals)) > maxCovSpan {
			return fmt.Errorf("%w: covariate %s: span too long", ErrBadInput, name)
		}
		grow := make([]float64, s.first-b, int(s.first-b)+len(s.vals))
		for i := range grow {
			grow[i] = math.NaN()
		}
		s.vals = append(grow, s.vals...)
		s.first = b
	case b-s.first >= int64(len(s.vals)):
		if b-s.first+1 > maxCovSpan {
			return fmt.Errorf("%w: covariate %s: span too long", ErrBadInput, name)
		}
		for int64(len(s.vals)) <= b-s.first {
			s.vals = append(s.vals, math.NaN())
		}
	}
	s.vals[b-s.first] = v
	return nil
}

// At returns the covariate at t for region, falling back to the region-
// independent value and to the latest earlier bucket. ok is false when
// nothing at or before t is known.
func (c *Covariates) At(name, region string, t time.Time) (v float64, ok bool) {
	if c == nil {
		return 0, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	b := c.bucket(t)
	for _, r := range [2]string{region, ""} {
		s := c.data[covKey{name, r}]
		if s == nil {
			continue
		}
		i := min(b-s.first, int64(len(s.vals))-1)
		for ; i >= 0; i-- {
			if x := s.vals[i]; !math.IsNaN(x) {
				return x, true
			}
		}
		if r == "" {
			break
		}
	}
	return 0, false
}

// Names lists the distinct covariate names, sorted.
func (c *Covariates) Names() []string {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	seen := map[string]bool{}
	var out []string
	for k := range c.data {
		if !seen[k.name] {
			seen[k.name] = true
			out = append(out, k.name)
		}
	}
	sort.Strings(out)
	return out
}

// Prune forgets values in buckets before t (the models never look back
// further than their window).
func (c *Covariates) Prune(before time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.bucket(before)
	for _, s := range c.data {
		if d := b - s.first; d > 0 {
			// Keep the last known value so persistence still works.
			d = min(d, int64(len(s.vals))-1)
			if d > 0 {
				s.vals = append([]float64(nil), s.vals[d:]...)
				s.first += d
			}
		}
	}
}

// ReadCSV parses a wide covariate CSV into c:
//
//	timestamp[,region],name1,name2,...
//
// The header is required (it names the covariates); a region column is
// recognised by name (location, region, borough). Empty cells are skipped.
func (c *Covariates) ReadCSV(r io.Reader) error {
	cr, decComma, err := newCSVReader(r)
	if err != nil {
		return err
	}
	cr.TrimLeadingSpace = true
	head, err := cr.Read()
	if err != nil {
		return fmt.Errorf("%w: covariates header: %v", ErrBadInput, err)
	}
	names := make([]string, len(head))
	for i, h := range head {
		names[i] = strings.ToLower(strings.TrimSpace(h))
	}
	rcol := indexOf(names, locationNames)
	if len(head) < 2 || (rcol >= 0 && len(head) < 3) {
		return fmt.Errorf("%w: covariates header %v: no covariate column", ErrBadInput, names)
	}
	type cell struct {
		name, region string
		t            time.Time
		v            float64
	}
	var cells []cell
	err = eachRow(cr, "covariates", 1, func(line int, row []string) error {
		t, err := ParseTime(row[0])
		if err != nil {
			return fmt.Errorf("covariates line %d: %w", line, err)
		}
		region := ""
		if rcol >= 0 {
			region = strings.TrimSpace(row[rcol])
		}
		for i := 1; i < len(row); i++ {
			if i == rcol || isMissing(row[i]) {
				continue
			}
			if names[i] == "" {
				// Checked here, not by Set, so the file is refused
				// before any of it applies (a header's trailing comma
				// is fine while its column stays empty).
				return fmt.Errorf("%w: covariates line %d column %d: a value in a column with no name in the header", ErrBadInput, line, i+1)
			}
			v, err := parseNumber(row[i], decComma)
			if err != nil {
				return fmt.Errorf("covariates line %d column %d: %w", line, i+1, err)
			}
			cells = append(cells, cell{names[i], region, t, v})
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Apply only after the whole file parsed and every series' span is
	// known to fit: a bad file changes nothing.
	c.mu.RLock()
	span := map[covKey][2]int64{}
	for _, x := range cells {
		k, b := covKey{x.name, x.region}, c.bucket(x.t)
		r, ok := span[k]
		if !ok {
			r = [2]int64{b, b}
			if s := c.data[k]; s != nil {
				r = [2]int64{s.first, s.first + int64(len(s.vals)) - 1}
			}
		}
		span[k] = [2]int64{min(r[0], b), max(r[1], b)}
	}
	c.mu.RUnlock()
	for k, r := range span {
		if r[1]-r[0]+1 > maxCovSpan {
			return fmt.Errorf("%w: covariate %s: span too long", ErrBadInput, k.name)
		}
	}
	for _, x := range cells {
		if err := c.Set(x.name, x.region, x.t, x.v); err != nil {
			return err
		}
	}
	return nil
}

// Feeds bundles the external feeds models read: the events calendar and
// numeric covariates. Either may be nil.
type Feeds struct {
	Calendar   *Calendar
	Covariates *Covariates
}
