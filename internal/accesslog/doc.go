// Package accesslog turns web server access logs into the access counts
// premirror's forecaster learns from: per (time bucket, client location)
// request counts, written as the timestamp,location,value CSV that
// `controller forecast backtest`, `forecast locations` and
// `controller replay-access` read.
//
// Three parts:
//
//   - Format and Reader parse Apache and Nginx logs — the common and
//     combined presets, Nginx's combined log_format, or a custom format in
//     either syntax as long as it has a client address (%h, %a,
//     $remote_addr) and a timestamp (%t, $time_local, $time_iso8601).
//     Fields are delimited by the literal text after them; a field between
//     double quotes ends at the first quote not escaped with a backslash,
//     as Apache escapes them. The Reader streams (one line buffered, at
//     most Options.MaxLine bytes) and never drops a line silently: each
//     malformed line is counted under a Reason (blank, too long, a literal
//     out of place, an unterminated quote, a bad address, time, status or
//     size, trailing text) with the number of the first such line, and
//     skipped — or, with Options.Strict, stops the input with a
//     *LineError naming the line. An input where no line matches is an
//     error (ErrNoRecords): that is a wrong format, not a bad log.
//   - Locators map a client address to a location: PrefixTable is the
//     data plane's longest-prefix match of client prefixes to regions
//     (IPv4 and IPv6 apart; an IPv4-mapped IPv6 address, which dual-stack
//     servers log for IPv4 clients, is looked up as IPv4); package
//     internal/geoip maps addresses to countries with Debian's legacy
//     GeoIP databases; Chain tries several in turn.
//   - Counts aggregates records into buckets aligned to the Unix epoch,
//     names the addresses no locator knows "unknown" (configurable) and
//     counts them, and writes the CSV with every bucket between the first
//     and last request and every location, zeros included (a quiet bucket
//     is an observed zero, not a gap), optionally keeping the top N
//     locations and summing the rest into "other".
//
// Timestamps are converted to UTC. The line parser does not allocate; see
// BenchmarkIngest for the throughput against a plain bufio line scan.
package accesslog
