package accesslog

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/premirror/premirror/internal/geoip"
)

// ErrPrefixes marks a bad prefix table; the message names the entry.
var ErrPrefixes = errors.New("bad prefix table")

// Locator maps a client address to a location name; ok is false when it
// does not know the address.
type Locator interface {
	Locate(a netip.Addr) (location string, ok bool)
}

// Chain asks each locator in turn; the first that knows the address wins.
type Chain []Locator

// Locate implements Locator.
func (c Chain) Locate(a netip.Addr) (string, bool) {
	for _, l := range c {
		if loc, ok := l.Locate(a); ok {
			return loc, true
		}
	}
	return "", false
}

// PrefixTable is a longest-prefix match from client prefixes to regions,
// the lookup the data plane's client-region LPM tries do: IPv4 addresses
// match IPv4 prefixes only, IPv6 addresses IPv6 prefixes only, and the
// longest matching prefix wins.
type PrefixTable struct {
	v4, v6 lpm
	n      int
}

// lpm holds one family's prefixes by length, longest first.
type lpm struct {
	lens []int
	m    map[netip.Prefix]string
}

func (t *lpm) add(p netip.Prefix, region string) {
	if t.m == nil {
		t.m = map[netip.Prefix]string{}
	}
	t.m[p] = region
	i := sort.Search(len(t.lens), func(i int) bool { return t.lens[i] <= p.Bits() })
	if i < len(t.lens) && t.lens[i] == p.Bits() {
		return
	}
	t.lens = append(t.lens, 0)
	copy(t.lens[i+1:], t.lens[i:])
	t.lens[i] = p.Bits()
}

func (t *lpm) lookup(a netip.Addr) (string, bool) {
	for _, l := range t.lens {
		p, err := a.Prefix(l)
		if err != nil {
			continue
		}
		if r, ok := t.m[p]; ok {
			return r, true
		}
	}
	return "", false
}

// Add inserts prefix → region. A prefix with host bits set, a prefix
// listed twice or an empty region name is refused, as the controller
// refuses them in a site's client_prefixes.
func (t *PrefixTable) Add(prefix, region string) error {
	region = strings.TrimSpace(region)
	p, err := netip.ParsePrefix(strings.TrimSpace(prefix))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPrefixes, err)
	}
	if p.Masked() != p {
		return fmt.Errorf("%w: %s has host bits set (did you mean %s?)", ErrPrefixes, p, p.Masked())
	}
	if err := CheckLocation(region); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPrefixes, p, err)
	}
	p = netip.PrefixFrom(p.Addr().WithZone(""), p.Bits())
	fam := &t.v6
	if p.Addr().Is4() {
		fam = &t.v4
	}
	if other, dup := fam.m[p]; dup {
		return fmt.Errorf("%w: %s listed twice (regions %q and %q)", ErrPrefixes, p, other, region)
	}
	fam.add(p, region)
	t.n++
	return nil
}

// Len is the number of prefixes.
func (t *PrefixTable) Len() int { return t.n }

// Locate implements Locator.
func (t *PrefixTable) Locate(a netip.Addr) (string, bool) {
	a = a.Unmap()
	if a.Is4() {
		return t.v4.lookup(a)
	}
	return t.v6.lookup(a)
}

// ReadPrefixCSV reads prefix,region rows (an optional header row whose
// first field is "prefix", # comments) into a table.
func ReadPrefixCSV(r io.Reader, name string) (*PrefixTable, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = 2
	cr.TrimLeadingSpace = true
	t := &PrefixTable{}
	for row := 1; ; row++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrPrefixes, name, err)
		}
		if row == 1 && strings.EqualFold(strings.TrimSpace(rec[0]), "prefix") {
			continue
		}
		if err := t.Add(rec[0], rec[1]); err != nil {
			line, _ := cr.FieldPos(0)
			return nil, fmt.Errorf("%s line %d: %w", name, line, err)
		}
	}
	if t.n == 0 {
		return nil, fmt.Errorf("%w: %s has no prefixes", ErrPrefixes, name)
	}
	return t, nil
}

// CheckLocation refuses a location name the output CSV cannot carry
// unquoted: empty, or holding a comma, a quote or a control character.
func CheckLocation(name string) error {
	if name == "" {
		return errors.New("empty location name")
	}
	if i := strings.IndexFunc(name, func(r rune) bool { return r == ',' || r == '"' || r < ' ' || r == 0x7f }); i >= 0 {
		return fmt.Errorf("location name %q contains %q", name, name[i])
	}
	return nil
}

// GeoIP locates clients by country with legacy GeoIP country databases:
// V4 answers IPv4 clients, V6 IPv6 clients (either may be nil). The
// location is the two-letter country code ("US", or a pseudo-code such as
// "EU" or "A1"); an address the database does not list is unknown.
type GeoIP struct {
	V4, V6 *geoip.DB
}

// Locate implements Locator.
func (g GeoIP) Locate(a netip.Addr) (string, bool) {
	a = a.Unmap()
	db := g.V6
	if a.Is4() {
		db = g.V4
	}
	if db == nil {
		return "", false
	}
	return db.Country(a)
}
