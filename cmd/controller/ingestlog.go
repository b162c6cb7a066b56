package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/premirror/premirror/internal/accesslog"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/controller"
	"github.com/premirror/premirror/internal/geoip"
)

// ingestLogHelp is printed above the flags by --help.
const ingestLogHelp = `usage: controller forecast ingest-log [flags] [log ...]

Reads web server access logs (files, .gz files, or standard input when no
file or "-" is given), maps each client address to a location and writes
per-bucket request counts as the CSV the other forecast subcommands read:

  timestamp,location,value     (or timestamp,value with --total)

Locations come from, in order: the client prefixes of --prefixes
(prefix,region rows) and of --objects (the controller's objects file: each
site's client_prefixes), matched longest prefix first as the data plane
does; then the country of --geoip / --geoip6 (Debian's legacy GeoIP
country databases, /usr/share/GeoIP/GeoIP.dat and GeoIPv6.dat from the
geoip-database package). Addresses none of them knows count as --unknown.
Every bucket between the first and the last request is written for every
location, zeros included; the first and last buckets, which the log only
partly covers, are dropped unless --keep-partial. A few requests far from
all the others (at most 1% at either end, past a gap longer than the rest
of the log: a typo'd year, a reset clock) are left out with a warning, as
the forecast commands leave out stray rows. Malformed lines are
counted by reason and skipped (--strict: the first one is an error naming
the line; a time before 1678 or after 2262 is bad_time); the summary,
counts only, goes to standard error.

Behind a reverse proxy or load balancer the connecting address (%h,
$remote_addr) is the proxy. Log the header and add it to --format
("%{X-Forwarded-For}i" in Apache, "$http_x_forwarded_for" in Nginx; the
client address field is still required): the client is then the
leftmost address of the header. That trusts the header as written — a
client can forge it, which is acceptable for counting demand, never for
security. With --trusted-proxies the header is believed only from those
addresses and read right to left past them, as Apache's mod_remoteip and
Nginx's real_ip_recursive do. A header with no usable address falls back
to the connecting address (the line is kept); the summary counts both.

Timestamps: %t, $time_local, $time_iso8601, Nginx $msec, Apache
%{strftime}t (e.g. [%{%d/%b/%Y:%H:%M:%S %z}t]; conversions %Y %y %m %d %e
%j %H %k %I %p %M %S %b %B %a %A %z %Z (UTC/GMT) %s %T %F %D %R %% %t,
begin:/end: prefixes), %{sec}t, %{msec}t, %{usec}t, and
%{msec_frac}t / %{usec_frac}t refining another time field. A timestamp
without %z or %Z is read as UTC, or in --time-zone.

Examples:
  controller forecast ingest-log --geoip /usr/share/GeoIP/GeoIP.dat \
      --geoip6 /usr/share/GeoIP/GeoIPv6.dat --top 5 -o counts.csv access.log*.gz
  controller forecast ingest-log --prefixes prefixes.csv --format nginx < access.log
  controller forecast ingest-log --geoip /usr/share/GeoIP/GeoIP.dat --trusted-proxies 10.0.0.0/8 \
      --format '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i" "%{X-Forwarded-For}i"' access.log
  controller forecast ingest-log --format '%h [%{%Y-%m-%d %H:%M:%S}t] "%r" %>s %b' \
      --time-zone Europe/Paris --prefixes prefixes.csv access.log
  controller forecast backtest --csv counts.csv --min-origins 21   # a short log: fewer origins
  controller forecast locations --csv counts.csv --test-from 2015-05-20

To feed the counts to a running controller, write them with --objects (so
locations are site names) and replay them as an edge agent would report
them: controller replay-access --csv counts.csv --resource NAME --site SITE
(controller feed takes events and covariates, not access counts).

Flags:
`

// ingestOptions are the parsed flags of ingest-log.
type ingestOptions struct {
	format, prefixes, objects, geo4, geo6, unknown, out string
	trustedProxies, timeZone                            string
	step                                                time.Duration
	top, maxLine                                        int
	total, strict, keepPartial                          bool
	files                                               []string
}

func runIngestLog(ctx context.Context, args []string, stdin io.Reader, out, errOut io.Writer) error {
	fs := cli.NewFlagSet("controller forecast", "ingest-log")
	var o ingestOptions
	fs.StringVar(&o.format, "format", "combined", "log format: common, combined, nginx, or an Apache LogFormat / Nginx log_format string with a client address and a timestamp")
	fs.DurationVar(&o.step, "step", time.Hour, "bucket length (buckets align to multiples of it since the Unix epoch)")
	fs.StringVar(&o.prefixes, "prefixes", "", "CSV of prefix,region rows mapping client prefixes to regions")
	fs.StringVar(&o.objects, "objects", "", "controller objects YAML: each site's client_prefixes map to the site's name")
	fs.StringVar(&o.geo4, "geoip", "", "legacy GeoIP IPv4 country database (e.g. /usr/share/GeoIP/GeoIP.dat): unmatched IPv4 clients map to their country code")
	fs.StringVar(&o.geo6, "geoip6", "", "legacy GeoIP IPv6 country database (e.g. /usr/share/GeoIP/GeoIPv6.dat)")
	fs.StringVar(&o.unknown, "unknown", accesslog.DefaultUnknown, "location of clients no prefix or database knows")
	fs.IntVar(&o.top, "top", 0, "keep the N locations with most requests and sum the rest into \"other\" (0: keep all)")
	fs.BoolVar(&o.total, "total", false, "write timestamp,value: all locations summed")
	fs.BoolVar(&o.keepPartial, "keep-partial", false, "keep the first and last buckets (dropped by default: the log starts and ends inside them)")
	fs.StringVar(&o.out, "o", "", "output file (default standard output)")
	fs.BoolVar(&o.strict, "strict", false, "stop at the first malformed line with an error naming it")
	fs.StringVar(&o.trustedProxies, "trusted-proxies", "", "CIDR[,CIDR…] of the proxies whose X-Forwarded-For is believed (single addresses allowed); needs the header in --format")
	fs.StringVar(&o.timeZone, "time-zone", "", "IANA zone (e.g. Europe/Paris) of timestamps logged without a zone (default UTC)")
	fs.IntVar(&o.maxLine, "max-line", accesslog.DefaultMaxLine, "longest line accepted, bytes (longer lines are counted and skipped)")
	fs.Usage = func() {
		io.WriteString(fs.Output(), ingestLogHelp)
		fs.PrintDefaults()
	}
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	o.files = fs.Args()
	if o.step <= 0 {
		return fmt.Errorf("%w: --step %v is not positive", cli.ErrUsage, o.step)
	}
	if o.top < 0 || o.maxLine <= 0 {
		return fmt.Errorf("%w: --top and --max-line must not be negative", cli.ErrUsage)
	}
	if err := accesslog.CheckLocation(o.unknown); err != nil {
		return fmt.Errorf("%w: --unknown: %v", cli.ErrUsage, err)
	}
	format, err := o.parseFormat()
	if err != nil {
		return err
	}
	chain, srcs, err := o.locators()
	if err != nil {
		return err
	}
	counts, err := accesslog.NewCounts(o.step, chain, o.unknown)
	if err != nil {
		return err
	}
	if len(o.files) == 0 {
		o.files = []string{"-"}
	}
	var stats accesslog.Stats
	for _, name := range o.files {
		st, err := ingestOne(ctx, name, stdin, format, accesslog.Options{MaxLine: o.maxLine, Strict: o.strict}, counts)
		stats.Add(st)
		if err != nil {
			return err
		}
		if len(o.files) > 1 && st.Skipped() > 0 {
			// Line numbers are per file: name the file they belong to.
			fmt.Fprintf(errOut, "ingest-log: %s: %d lines, malformed skipped: %s\n", name, st.Lines, st.Summary())
		}
	}
	if counts.Total() == 0 {
		return fmt.Errorf("ingest-log: %w in %s (%d lines)", accesslog.ErrEmpty, strings.Join(o.files, ", "), stats.Lines)
	}
	if st := counts.TrimStray(); st.Before > 0 {
		fmt.Fprintf(errOut, "ingest-log: %d request(s) far before all the others left out (a typo'd date or a reset clock?), the first at %s\n",
			st.Before, st.First.Format(time.DateTime))
		if st.After > 0 {
			fmt.Fprintf(errOut, "ingest-log: %d request(s) far after all the others left out, the last at %s\n", st.After, st.Last.Format(time.DateTime))
		}
	} else if st.After > 0 {
		fmt.Fprintf(errOut, "ingest-log: %d request(s) far after all the others left out (a typo'd date or a reset clock?), the last at %s\n",
			st.After, st.Last.Format(time.DateTime))
	}
	w := out
	var f *os.File
	if o.out != "" && o.out != "-" {
		if f, err = os.Create(o.out); err != nil {
			return fmt.Errorf("ingest-log: %w", err)
		}
		defer f.Close()
		w = f
	}
	if err := counts.WriteCSV(w, accesslog.WriteOptions{Top: o.top, Total: o.total, KeepPartial: o.keepPartial}); err != nil {
		return fmt.Errorf("ingest-log: write: %w", err)
	}
	if f != nil {
		if err := f.Close(); err != nil {
			return fmt.Errorf("ingest-log: %w", err)
		}
	}
	// The summary: counts only, never an address.
	if len(o.files) > 1 {
		fmt.Fprintf(errOut, "ingest-log: %d files, %d lines, %d requests, %d malformed lines skipped\n", len(o.files), stats.Lines, stats.Records, stats.Skipped())
	} else {
		fmt.Fprintf(errOut, "ingest-log: %d lines, %d requests, malformed skipped: %s\n", stats.Lines, stats.Records, stats.Summary())
	}
	if format.HasForwarded() {
		fmt.Fprintf(errOut, "ingest-log: X-Forwarded-For: client from the header %d, header unusable %d (connecting address counted)", stats.Forwarded, stats.ForwardedUnusable)
		if len(format.TrustedProxies()) > 0 {
			fmt.Fprintf(errOut, ", header ignored %d (connecting address not a trusted proxy)", stats.ForwardedUntrusted)
		}
		fmt.Fprintln(errOut)
	}
	var by []string
	for _, s := range srcs {
		by = append(by, fmt.Sprintf("%s %d", s.name, s.hits))
	}
	by = append(by, fmt.Sprintf("%s %d", o.unknown, counts.Unknown()))
	locs := counts.Locations()
	var head []string
	for i, l := range locs {
		if i == 8 {
			head = append(head, "…")
			break
		}
		head = append(head, fmt.Sprintf("%s %d", l.Location, l.Requests))
	}
	fmt.Fprintf(errOut, "ingest-log: located by %s; %d locations: %s\n", strings.Join(by, ", "), len(locs), strings.Join(head, ", "))
	return nil
}

// parseFormat compiles --format with --trusted-proxies and --time-zone.
func (o *ingestOptions) parseFormat() (*accesslog.Format, error) {
	format, err := accesslog.ParseFormat(o.format)
	if err != nil {
		return nil, fmt.Errorf("%w: --format: %v", cli.ErrUsage, err)
	}
	if o.trustedProxies != "" {
		ps, err := accesslog.ParseTrustedProxies(o.trustedProxies)
		if err == nil {
			format, err = format.WithTrustedProxies(ps...)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: --trusted-proxies %q: %v", cli.ErrUsage, o.trustedProxies, err)
		}
	}
	if o.timeZone != "" {
		loc, err := time.LoadLocation(o.timeZone)
		if err == nil {
			format, err = format.InLocation(loc)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: --time-zone %q: %v", cli.ErrUsage, o.timeZone, err)
		}
	}
	return format, nil
}

// countingLocator counts the addresses a locator knew, for the summary.
type countingLocator struct {
	name string
	l    accesslog.Locator
	hits uint64
}

func (c *countingLocator) Locate(a netip.Addr) (string, bool) {
	loc, ok := c.l.Locate(a)
	if ok {
		c.hits++
	}
	return loc, ok
}

// locators builds the chain: client prefixes first, then GeoIP.
func (o *ingestOptions) locators() (accesslog.Chain, []*countingLocator, error) {
	var srcs []*countingLocator
	tab := &accesslog.PrefixTable{}
	if o.prefixes != "" {
		f, err := os.Open(o.prefixes)
		if err != nil {
			return nil, nil, fmt.Errorf("ingest-log: %w", err)
		}
		t, err := accesslog.ReadPrefixCSV(f, o.prefixes)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		tab = t
	}
	if o.objects != "" {
		b, err := os.ReadFile(o.objects)
		if err != nil {
			return nil, nil, fmt.Errorf("ingest-log: %w", err)
		}
		objs, err := controller.ParseObjects(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.objects, err)
		}
		for _, s := range objs.GetSites() {
			for i, p := range s.GetClientPrefixes() {
				if err := tab.Add(p, s.GetName()); err != nil {
					return nil, nil, fmt.Errorf("%s: site %q client_prefixes[%d]: %w", o.objects, s.GetName(), i, err)
				}
			}
		}
		if tab.Len() == 0 {
			return nil, nil, fmt.Errorf("%s: %w: no site has client_prefixes", o.objects, accesslog.ErrPrefixes)
		}
	}
	if tab.Len() > 0 {
		srcs = append(srcs, &countingLocator{name: "prefixes", l: tab})
	}
	var g accesslog.GeoIP
	for _, d := range []struct {
		path string
		db   **geoip.DB
		ed   geoip.Edition
	}{{o.geo4, &g.V4, geoip.CountryV4}, {o.geo6, &g.V6, geoip.CountryV6}} {
		if d.path == "" {
			continue
		}
		db, err := geoip.Open(d.path)
		if err != nil {
			return nil, nil, fmt.Errorf("ingest-log: %w", err)
		}
		if db.Edition() != d.ed {
			return nil, nil, fmt.Errorf("ingest-log: %s is GeoIP edition %d, want %d (--geoip takes the IPv4 database, --geoip6 the IPv6 one)", d.path, db.Edition(), d.ed)
		}
		*d.db = db
	}
	if g.V4 != nil || g.V6 != nil {
		srcs = append(srcs, &countingLocator{name: "geoip", l: g})
	}
	chain := make(accesslog.Chain, len(srcs))
	for i, s := range srcs {
		chain[i] = s
	}
	return chain, srcs, nil
}

// ingestOne reads one input ("-" is stdin; a .gz name is decompressed).
func ingestOne(ctx context.Context, name string, stdin io.Reader, f *accesslog.Format, opt accesslog.Options, counts *accesslog.Counts) (accesslog.Stats, error) {
	var r io.Reader = stdin
	opt.Name = "standard input"
	if name != "-" {
		fh, err := os.Open(name)
		if err != nil {
			return accesslog.Stats{}, fmt.Errorf("ingest-log: %w", err)
		}
		defer fh.Close()
		r, opt.Name = fh, name
		if strings.HasSuffix(name, ".gz") {
			zr, err := gzip.NewReader(bufio.NewReader(fh))
			if err != nil {
				return accesslog.Stats{}, fmt.Errorf("ingest-log: %s: %w", name, err)
			}
			defer zr.Close()
			r = zr
		}
	}
	lr := accesslog.NewReader(r, f, opt)
	for lr.Next() {
		rec := lr.Record()
		counts.Add(rec.Client, rec.Time)
		if lr.Stats().Records%65536 == 0 && ctx.Err() != nil {
			return lr.Stats(), ctx.Err()
		}
	}
	err := lr.Err()
	if errors.Is(err, accesslog.ErrNoRecords) {
		err = fmt.Errorf("%w (is --format right?)", err)
	}
	return lr.Stats(), err
}
