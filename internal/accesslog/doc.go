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
//     $remote_addr) and a timestamp. Fields are delimited by the literal
//     text after them (a time field by its own layout); a field between
//     double quotes ends at the first quote not escaped with a backslash,
//     as Apache escapes them. The Reader streams (one line buffered, at
//     most Options.MaxLine bytes) and never drops a line silently: each
//     malformed line is counted under a Reason (blank, too long, a literal
//     out of place, an unterminated quote, a bad address, time, status or
//     size, trailing text) with the number of the first such line, and
//     skipped — or, with Options.Strict, stops the input with a
//     *LineError naming the line. An input where no line matches is an
//     error (ErrNoRecords): that is a wrong format, not a bad log.
//   - Timestamps: %t, $time_local and $time_iso8601 are read whole;
//     Apache's %{strftime}t (%Y %y %m %d %e %j %H %k %I %p %M %S %b %B
//     %a %A %z %Z %s %T %F %D %R %% %t, with an optional begin: or end:
//     prefix, both read as the request's time), %{sec}t, %{msec}t,
//     %{usec}t and Nginx's $msec are compiled once by ParseFormat into a
//     layout that parses without allocating. Several time fields may
//     build one time, each part (year, zone, fraction…) given once, as in
//     Apache's own example "%{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t";
//     %{msec_frac}t and %{usec_frac}t refine any other timestamp. %Z
//     accepts only UTC and GMT (other abbreviations are ambiguous); the
//     weekday (%a, %A) is matched, not checked against the date. A
//     timestamp with no zone is read as UTC unless Format.InLocation
//     names a location.
//   - Client address behind proxies: with an X-Forwarded-For field
//     (%{X-Forwarded-For}i, any case, or $http_x_forwarded_for) the
//     client is the leftmost entry that is an address (entries may carry
//     a port, IPv6 in brackets). That trusts the header as written: any
//     client can forge it, which is fine for counting demand and wrong
//     for anything security-related. Format.WithTrustedProxies believes
//     the header only from the given prefixes and walks it right to left
//     past trusted hops, as Apache's mod_remoteip and Nginx's real_ip
//     with recursion do (an entry that does not parse ends the walk at
//     the last good one; an all-trusted list gives its leftmost). A header
//     with no usable address leaves the connecting address as the client
//     and the line well-formed; Record.Forwarded and Stats count each
//     outcome. Record.Peer always keeps the connecting address.
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
