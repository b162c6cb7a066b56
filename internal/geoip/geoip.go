package geoip

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// ErrCorrupt marks a file that is not a well-formed legacy GeoIP country
// database; the message says what is wrong and where.
var ErrCorrupt = errors.New("corrupt GeoIP database")

// ErrUnsupported marks a well-formed legacy database of an edition this
// reader does not read (city, region, ISP, organisation, ASN …).
var ErrUnsupported = errors.New("unsupported GeoIP database edition")

// Edition is the database type byte of the structure info.
type Edition uint8

// The two editions this package reads.
const (
	CountryV4 Edition = 1  // GeoIP Country Edition (GeoIP.dat)
	CountryV6 Edition = 12 // GeoIP Country V6 Edition (GeoIPv6.dat)
)

const (
	// countryBegin is the record value of country ID 0: records at or
	// above it are leaves, records below it are node indices.
	countryBegin = 16776960 // 0xFFFF00
	recordLen    = 3        // bytes per record (standard record length)
	nodeLen      = 2 * recordLen
	// structureInfoMax is how far back from the end the 0xFFFFFF marker
	// may start (libGeoIP's STRUCTURE_INFO_MAX_SIZE).
	structureInfoMax = 20
	// databaseInfoMax is how far back from the end the description may
	// start (libGeoIP's DATABASE_INFO_MAX_SIZE).
	databaseInfoMax = 100
)

// DB is a parsed legacy GeoIP country database. It is immutable and safe
// for concurrent use.
type DB struct {
	data    []byte // the node array (and whatever follows it)
	edition Edition
	bits    int // 32 for IPv4, 128 for IPv6
	info    string
	nodes   int // nodes reachable from the root
}

// Open reads and validates the database at path.
func Open(path string) (*DB, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("open geoip database: %w", err)
	}
	db, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return db, nil
}

// Parse validates b as a legacy country database and returns it. Every
// node reachable from the root is checked once: each record is a leaf
// (country ID) or the index of a later node inside the file, and no path
// is longer than the address (32 or 128 bits), so lookups never read out
// of bounds or loop.
func Parse(b []byte) (*DB, error) {
	if len(b) < nodeLen+4 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrCorrupt, len(b))
	}
	// The structure info: 0xFF 0xFF 0xFF then the edition byte, found by
	// stepping back one byte at a time from 3 bytes before the end.
	var ed Edition
	found := false
	for i := 0; i < structureInfoMax; i++ {
		p := len(b) - 3 - i
		if p < 0 {
			break
		}
		if b[p] == 0xff && b[p+1] == 0xff && b[p+2] == 0xff {
			if p+3 >= len(b) {
				return nil, fmt.Errorf("%w: structure marker at offset %d has no edition byte", ErrCorrupt, p)
			}
			ed = Edition(b[p+3])
			if ed >= 106 { // databases from before April 2003 add 105
				ed -= 105
			}
			found = true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: no structure marker (0xFFFFFF) in the last %d bytes", ErrCorrupt, structureInfoMax+3)
	}
	db := &DB{data: b, edition: ed}
	switch ed {
	case CountryV4:
		db.bits = 32
	case CountryV6:
		db.bits = 128
	default:
		return nil, fmt.Errorf("%w: edition %d (only country editions %d and %d are read)", ErrUnsupported, ed, CountryV4, CountryV6)
	}
	db.info = databaseInfo(b)
	n, err := db.validate()
	if err != nil {
		return nil, err
	}
	db.nodes = n
	return db, nil
}

// databaseInfo returns the description libGeoIP prints with -v: the text
// after the last three zero bytes within the file's last 100 bytes.
func databaseInfo(b []byte) string {
	lo := max(len(b)-3-databaseInfoMax, 0)
	tail := b[lo:]
	i := bytes.LastIndex(tail, []byte{0, 0, 0})
	if i < 0 {
		return ""
	}
	s := tail[i+3:]
	if j := bytes.Index(s, []byte{0xff, 0xff, 0xff}); j >= 0 {
		s = s[:j]
	}
	s = bytes.TrimRight(s, "\x00")
	for _, c := range s {
		if c < ' ' || c > '~' {
			return ""
		}
	}
	return string(s)
}

func (db *DB) record(node uint32, bit uint) uint32 {
	p := int(node)*nodeLen + int(bit)*recordLen
	return uint32(db.data[p]) | uint32(db.data[p+1])<<8 | uint32(db.data[p+2])<<16
}

// validate walks every node reachable from the root and returns how many
// there are.
func (db *DB) validate() (int, error) {
	maxNodes := len(db.data) / nodeLen
	seen := make([]bool, maxNodes)
	type item struct {
		node  uint32
		depth int
	}
	stack := []item{{0, 0}}
	seen[0] = true
	count := 0
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		count++
		for bit := uint(0); bit < 2; bit++ {
			x := db.record(it.node, bit)
			if x >= countryBegin {
				continue // a leaf: country ID x-countryBegin ≤ 255
			}
			if x <= it.node {
				// Writers number children after their parents; a
				// backward record could close a loop.
				return 0, fmt.Errorf("%w: node %d points back to node %d", ErrCorrupt, it.node, x)
			}
			if it.depth+1 >= db.bits {
				return 0, fmt.Errorf("%w: node %d at depth %d points to node %d, past the %d-bit address", ErrCorrupt, it.node, it.depth, x, db.bits)
			}
			if int(x) >= maxNodes {
				return 0, fmt.Errorf("%w: node %d points to node %d, beyond the file's %d bytes", ErrCorrupt, it.node, x, len(db.data))
			}
			if !seen[x] {
				seen[x] = true
				stack = append(stack, item{x, it.depth + 1})
			}
		}
	}
	return count, nil
}

// Edition returns the database's edition.
func (db *DB) Edition() Edition { return db.edition }

// Info returns the database's description (e.g. "GEO-106FREE 20260704
// Build 1 …"), or "" when it has none.
func (db *DB) Info() string { return db.info }

// Nodes is the number of tree nodes reachable from the root.
func (db *DB) Nodes() int { return db.nodes }

// CountryID returns the country ID of a (0: not found). An IPv4 database
// answers IPv4 addresses (IPv4-mapped IPv6 included) and an IPv6 database
// IPv6 addresses; the other family is not found.
func (db *DB) CountryID(a netip.Addr) int {
	a = a.Unmap()
	if (db.bits == 32) != a.Is4() {
		return 0
	}
	var raw [16]byte
	if a.Is4() {
		v4 := a.As4()
		copy(raw[:], v4[:])
	} else {
		raw = a.As16()
	}
	node := uint32(0)
	for depth := 0; depth < db.bits; depth++ {
		bit := uint(raw[depth>>3]>>(7-uint(depth&7))) & 1
		x := db.record(node, bit)
		if x >= countryBegin {
			return int(x - countryBegin)
		}
		node = x
	}
	return 0 // unreachable in a validated tree
}

// Country returns the ISO 3166 two-letter code of a (or one of the
// database's pseudo-codes: AP, EU, A1, A2, O1), and false when a is not
// in the database.
func (db *DB) Country(a netip.Addr) (string, bool) {
	id := db.CountryID(a)
	if id <= 0 || id >= len(countryCodes) {
		return "", false
	}
	return countryCodes[id], true
}

// CountryCode returns the code of country ID id, or "--" for an unknown ID.
func CountryCode(id int) string {
	if id < 0 || id >= len(countryCodes) {
		return "--"
	}
	return countryCodes[id]
}

// countryCodes is the country ID → code table of the legacy format, in
// libGeoIP 1.6's order (ID 0 is "--", not found). The IDs are fixed by
// the file format; the cross-check test against geoiplookup covers every
// ID the installed database uses.
var countryCodes = [256]string{
	"--", "AP", "EU", "AD", "AE", "AF", "AG", "AI", "AL", "AM", "CW",
	"AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AZ", "BA", "BB",
	"BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BM", "BN", "BO",
	"BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD",
	"CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR",
	"CU", "CV", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO",
	"DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ",
	"FK", "FM", "FO", "FR", "SX", "GA", "GB", "GD", "GE", "GF",
	"GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT",
	"GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID",
	"IE", "IL", "IN", "IO", "IQ", "IR", "IS", "IT", "JM", "JO",
	"JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW",
	"KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT",
	"LU", "LV", "LY", "MA", "MC", "MD", "MG", "MH", "MK", "ML",
	"MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV",
	"MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI",
	"NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF",
	"PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW",
	"PY", "QA", "RE", "RO", "RU", "RW", "SA", "SB", "SC", "SD",
	"SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO",
	"SR", "ST", "SV", "SY", "SZ", "TC", "TD", "TF", "TG", "TH",
	"TJ", "TK", "TM", "TN", "TO", "TL", "TR", "TT", "TV", "TW",
	"TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE",
	"VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "RS", "ZA",
	"ZM", "ME", "ZW", "A1", "A2", "O1", "AX", "GG", "IM", "JE",
	"BL", "MF", "BQ", "SS", "O1",
}
