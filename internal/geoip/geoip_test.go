package geoip

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// idOf returns the country ID of a code.
func idOf(t testing.TB, code string) int {
	i := slices.Index(countryCodes[:], code)
	if i < 0 {
		t.Fatalf("no country %s", code)
	}
	return i
}

// buildDB writes a legacy country database holding the given prefixes
// (inserted shortest first, so longer prefixes override) — the test's
// independent writer of the format documented in doc.go.
func buildDB(t testing.TB, ed Edition, entries map[string]string) []byte {
	t.Helper()
	type ent struct {
		p  netip.Prefix
		id uint32
	}
	var es []ent
	for p, c := range entries {
		es = append(es, ent{netip.MustParsePrefix(p), uint32(idOf(t, c))})
	}
	slices.SortFunc(es, func(a, b ent) int { return a.p.Bits() - b.p.Bits() })
	nodes := [][2]uint32{{countryBegin, countryBegin}}
	for _, e := range es {
		raw := e.p.Addr().AsSlice()
		n := uint32(0)
		for d := 0; d < e.p.Bits(); d++ {
			bit := (raw[d/8] >> (7 - d%8)) & 1
			if d == e.p.Bits()-1 {
				nodes[n][bit] = countryBegin + e.id
				break
			}
			x := nodes[n][bit]
			if x >= countryBegin { // split a leaf: both halves inherit it
				nodes = append(nodes, [2]uint32{x, x})
				x = uint32(len(nodes) - 1)
				nodes[n][bit] = x
			}
			n = x
		}
	}
	var b bytes.Buffer
	for _, n := range nodes {
		for _, r := range n {
			b.Write([]byte{byte(r), byte(r >> 8), byte(r >> 16)})
		}
	}
	b.Write([]byte{0, 0, 0})
	b.WriteString("TEST 20260101 Build 1")
	b.Write([]byte{0xff, 0xff, 0xff, byte(ed)})
	return b.Bytes()
}

func testDB(t testing.TB) (v4, v6 []byte) {
	v4 = buildDB(t, CountryV4, map[string]string{
		"10.0.0.0/8": "US", "10.1.0.0/16": "DE", "10.1.2.3/32": "NZ", "192.168.0.0/24": "FR",
		"128.0.0.0/1": "EU", "203.0.113.0/25": "CN",
	})
	v6 = buildDB(t, CountryV6, map[string]string{
		"2001:db8::/32": "IN", "2001:db8:1::/48": "JP", "2c0f::/16": "SS",
	})
	return v4, v6
}

func TestLookup(t *testing.T) {
	b4, b6 := testDB(t)
	v4, err := Parse(b4)
	if err != nil {
		t.Fatal(err)
	}
	v6, err := Parse(b6)
	if err != nil {
		t.Fatal(err)
	}
	if v4.Edition() != CountryV4 || v6.Edition() != CountryV6 || v4.Info() != "TEST 20260101 Build 1" {
		t.Fatalf("edition %d/%d info %q", v4.Edition(), v6.Edition(), v4.Info())
	}
	for _, tc := range []struct {
		db   *DB
		addr string
		want string // "" = not found
	}{
		{v4, "10.0.0.1", "US"},
		{v4, "10.255.255.255", "US"},
		{v4, "10.1.0.0", "DE"},
		{v4, "10.1.2.3", "NZ"},
		{v4, "10.1.2.4", "DE"},
		{v4, "11.0.0.0", ""},
		{v4, "192.168.0.77", "FR"},
		{v4, "192.168.1.1", "EU"},
		{v4, "203.0.113.127", "CN"},
		{v4, "203.0.113.128", "EU"},
		{v4, "255.255.255.255", "EU"},
		{v4, "0.0.0.0", ""},
		{v4, "::ffff:10.1.2.3", "NZ"}, // mapped: the IPv4 client
		{v4, "2001:db8::1", ""},       // other family
		{v6, "2001:db8::1", "IN"},
		{v6, "2001:db8:1::5", "JP"},
		{v6, "2001:db8:2::5", "IN"},
		{v6, "2c0f:ffff::1", "SS"},
		{v6, "2002::1", ""},
		{v6, "10.0.0.1", ""},
	} {
		got, ok := tc.db.Country(netip.MustParseAddr(tc.addr))
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: got %q %v, want %q", tc.addr, got, ok, tc.want)
		}
	}
}

func TestCorrupt(t *testing.T) {
	b4, _ := testDB(t)
	trailer := []byte{0xff, 0xff, 0xff, 1}
	// A root whose right record points past the end of the file.
	beyond := append([]byte{0x00, 0xff, 0xff, 0x10, 0x00, 0x00}, trailer...)
	// A root pointing at itself: a loop no lookup would leave.
	loop := append([]byte{0x00, 0x00, 0x00, 0x00, 0xff, 0xff}, trailer...)
	// A chain of 33 nodes, each pointing to the next: deeper than IPv4.
	var deep []byte
	for i := 1; i <= 33; i++ {
		deep = append(deep, byte(i), 0, 0, 0x00, 0xff, 0xff)
	}
	deep = append(deep, 0, 0xff, 0xff, 0x00, 0xff, 0xff)
	deep = append(deep, trailer...)
	city := slices.Clone(b4)
	city[len(city)-1] = 2
	for _, tc := range []struct {
		name string
		b    []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrCorrupt, "too short"},
		{"no marker", bytes.Repeat([]byte{1}, 64), ErrCorrupt, "no structure marker"},
		{"truncated", b4[:len(b4)/2], ErrCorrupt, ""},
		{"beyond", beyond, ErrCorrupt, "beyond the file"},
		{"loop", loop, ErrCorrupt, "points back to node 0"},
		{"too deep", deep, ErrCorrupt, "past the 32-bit address"},
		{"city edition", city, ErrUnsupported, "edition 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.b)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
	if _, err := Open("/nonexistent/GeoIP.dat"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open missing: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	b4, b6 := testDB(f)
	f.Add(b4)
	f.Add(b6)
	f.Add([]byte{0, 0, 0, 0xff, 0xff, 0xff, 1})
	addrs := []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("ffff::")}
	f.Fuzz(func(t *testing.T, b []byte) {
		db, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if db.Nodes() < 1 {
			t.Fatal("a valid database has a root")
		}
		for _, a := range addrs {
			if id := db.CountryID(a); id < 0 || id > 255 {
				t.Fatalf("id %d", id)
			}
			db.Country(a)
		}
	})
}

// systemDB opens Debian's database or skips.
func systemDB(t *testing.T, name, tool string) *DB {
	t.Helper()
	path := "/usr/share/GeoIP/" + name
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s absent (apt-get install geoip-database)", path)
	}
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s absent (apt-get install geoip-bin)", tool)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// leafAddrs returns one address per distinct country ID reachable in db,
// found by walking the trie.
func leafAddrs(db *DB) map[int]netip.Addr {
	out := map[int]netip.Addr{}
	var walk func(node uint32, depth int, raw [16]byte)
	walk = func(node uint32, depth int, raw [16]byte) {
		for bit := uint(0); bit < 2; bit++ {
			r := raw
			if bit == 1 {
				r[depth/8] |= 1 << (7 - depth%8)
			}
			x := db.record(node, bit)
			if x >= countryBegin {
				id := int(x - countryBegin)
				if _, ok := out[id]; !ok {
					if db.bits == 32 {
						out[id] = netip.AddrFrom4([4]byte(r[:4]))
					} else {
						out[id] = netip.AddrFrom16(r)
					}
				}
				continue
			}
			walk(x, depth+1, r)
		}
	}
	walk(0, 0, [16]byte{})
	return out
}

// lookupTool runs geoiplookup(6) and returns the code it prints ("" when
// not found).
func lookupTool(t *testing.T, tool string, a netip.Addr) string {
	out, err := exec.Command(tool, "-f", "/usr/share/GeoIP/"+map[string]string{"geoiplookup": "GeoIP.dat", "geoiplookup6": "GeoIPv6.dat"}[tool], a.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, a, err, out)
	}
	s := strings.TrimSpace(string(out))
	_, rest, ok := strings.Cut(s, ": ")
	if !ok {
		t.Fatalf("%s %s: unexpected output %q", tool, a, s)
	}
	if strings.Contains(rest, "not found") {
		return ""
	}
	code, _, _ := strings.Cut(rest, ",")
	return code
}

// TestMatchesGeoiplookup checks this reader against libGeoIP's own tool on
// Debian's databases: one address for every country ID the database uses
// (so every table entry in use) plus random addresses.
func TestMatchesGeoiplookup(t *testing.T) {
	for _, tc := range []struct {
		file, tool string
		random     func(*rand.Rand) netip.Addr
	}{
		{"GeoIP.dat", "geoiplookup", func(r *rand.Rand) netip.Addr {
			return netip.AddrFrom4([4]byte{byte(r.UintN(224)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
		}},
		{"GeoIPv6.dat", "geoiplookup6", func(r *rand.Rand) netip.Addr {
			var b [16]byte
			b[0] = 0x20 | byte(r.UintN(2)) // 2000::/7, where the allocations are
			for i := 1; i < 16; i++ {
				b[i] = byte(r.UintN(256))
			}
			if r.UintN(2) == 0 { // half in the dense 2001::/16 and 2a00::/16
				b[0], b[1] = 0x20, []byte{0x01, 0x00}[r.UintN(2)]
				if b[1] == 0 {
					b[0] = 0x2a
				}
			}
			return netip.AddrFrom16(b)
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			db := systemDB(t, tc.file, tc.tool)
			var addrs []netip.Addr
			for _, a := range leafAddrs(db) {
				addrs = append(addrs, a)
			}
			ids := len(addrs)
			rng := rand.New(rand.NewPCG(6, 7))
			for range 300 {
				addrs = append(addrs, tc.random(rng))
			}
			found := 0
			for _, a := range addrs {
				if a.IsUnspecified() {
					continue // geoiplookup refuses 0.0.0.0 and ::
				}
				got, _ := db.Country(a)
				want := lookupTool(t, tc.tool, a)
				if got != want {
					t.Errorf("%s: reader %q, %s %q", a, got, tc.tool, want)
				}
				if want != "" {
					found++
				}
			}
			t.Logf("%s (%s): %d nodes, %d country IDs, %d addresses compared, %d found", tc.file, db.Info(), db.Nodes(), ids, len(addrs), found)
		})
	}
}

// BenchmarkParse: validating Debian's IPv4 and IPv6 databases on load.
func BenchmarkParse(b *testing.B) {
	for _, name := range []string{"GeoIP.dat", "GeoIPv6.dat"} {
		b.Run(name, func(b *testing.B) {
			raw, err := os.ReadFile("/usr/share/GeoIP/" + name)
			if err != nil {
				b.Skipf("%v (apt-get install geoip-database)", err)
			}
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := Parse(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCountry: one lookup in Debian's IPv4 database (random
// addresses), against the synthetic database's shallow tree.
func BenchmarkCountry(b *testing.B) {
	b4, _ := testDB(b)
	small, err := Parse(b4)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{byte(rng.UintN(224)), byte(rng.UintN(256)), byte(rng.UintN(256)), byte(rng.UintN(256))})
	}
	run := func(b *testing.B, db *DB) {
		i := 0
		for b.Loop() {
			db.Country(addrs[i&1023])
			i++
		}
	}
	b.Run("synthetic", func(b *testing.B) { run(b, small) })
	b.Run("debian_v4", func(b *testing.B) {
		db, err := Open("/usr/share/GeoIP/GeoIP.dat")
		if err != nil {
			b.Skipf("%v (apt-get install geoip-database)", err)
		}
		run(b, db)
	})
}
