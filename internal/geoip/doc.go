// Package geoip reads the legacy MaxMind GeoIP country databases
// (GeoIP.dat, GeoIPv6.dat) in pure Go, as Debian's geoip-database package
// ships them in /usr/share/GeoIP. premirror uses it to turn access-log
// client addresses into countries (internal/accesslog, `controller
// forecast ingest-log --geoip`). No maintained Go module reads this format
// (the maintained readers are for the newer MaxMind DB format) and the C
// library would need cgo, hence this small reader.
//
// # File format (from libGeoIP 1.6's GeoIP.c, the public reference)
//
// The file starts with a binary trie over the address bits, most
// significant bit first. Node i occupies bytes [6i, 6i+6): two records of
// three bytes each, little-endian — the left record is followed when the
// address bit is 0, the right when it is 1. A record below
// COUNTRY_BEGIN = 16776960 (0xFFFF00) is the index of the next node; a
// record at or above it is a leaf whose country ID is record −
// COUNTRY_BEGIN (0 … 255; 0 means "not found"). The root is node 0, and a
// lookup takes at most 32 steps for IPv4 and 128 for IPv6.
//
// After the trie come three zero bytes and a printable description (e.g.
// "GEO-106FREE 20260704 Build 1 …"), then the structure info: the bytes
// 0xFF 0xFF 0xFF and one edition byte, found by searching backwards from
// three bytes before the end of the file for at most 20 bytes. Edition 1
// is "GeoIP Country Edition" (IPv4) and 12 "GeoIP Country V6 Edition";
// values ≥ 106 are pre-2003 numbering and have 105 subtracted. Other
// editions (city, region, ISP, ASN) store extra segments and record
// lengths and are refused with ErrUnsupported.
//
// Country IDs map to two-letter codes through a fixed table (countryCodes,
// checked against the table inside Debian's libGeoIP 1.6.12). Some codes
// are pseudo-countries: AP (Asia/Pacific), EU (Europe), A1 (anonymous
// proxy), A2 (satellite provider), O1 (other).
//
// # Validation
//
// Parse walks every node reachable from the root once and refuses the file
// with ErrCorrupt if a record points outside the file or back to an
// earlier node (writers number children after parents; Debian's files
// have no backward record), or a path is longer than the address, so
// lookups cannot read out of bounds or loop. Validating Debian's
// databases takes 4–12 ms (IPv4, 2 MB) and 35–85 ms (IPv6, 8 MB) on a
// loaded 2-vCPU machine (BenchmarkParse); a lookup 60–110 ns.
package geoip
