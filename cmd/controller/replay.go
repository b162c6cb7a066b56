package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/cli"
	"github.com/premirror/premirror/internal/control"
	"github.com/premirror/premirror/internal/forecast"
	"github.com/premirror/premirror/internal/pki"
)

func init() {
	commands.Register(cli.Command{
		Name: "replay-access",
		Summary: "dev/demo: act as an edge agent (real control client, mutual TLS) reporting the access counts of a CSV " +
			"(timestamp,location,value or the Uber per-borough file) sped up, plus fixed probe estimates",
		Run: ctlReplay,
	})
}

// replayer turns table records into access deltas as wall time passes.
type replayer struct {
	mu       sync.Mutex
	state    *pb.DesiredState
	pending  []*pb.AccessCount
	probes   []*pb.ProbeResult
	resource string
	regions  map[string]string // CSV location → site name
}

func (r *replayer) apply(_ uint64, st *pb.DesiredState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = st
	return nil
}

func (r *replayer) accessCounts() []*pb.AccessCount {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.pending
	r.pending = nil
	return out
}

func (r *replayer) probeList() []*pb.ProbeResult {
	now := time.Now().UnixNano()
	out := make([]*pb.ProbeResult, len(r.probes))
	for i, p := range r.probes {
		q := proto.Clone(p).(*pb.ProbeResult)
		q.LastProbeUnixNano = now
		out[i] = q
	}
	return out
}

// emit queues one record's count under the desired state's IDs; false
// while the controller has not sent a state naming the resource and site.
func (r *replayer) emit(location string, n uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res, reg uint32
	for _, x := range r.state.GetResources() {
		if x.GetName() == r.resource {
			res = x.GetId()
		}
	}
	for _, x := range r.state.GetRegions() {
		if x.GetName() == r.regions[location] {
			reg = x.GetId()
		}
	}
	if res == 0 || reg == 0 {
		return false
	}
	r.pending = append(r.pending, &pb.AccessCount{ResourceId: res, RegionId: reg, NewFlows: n, Packets: n})
	return true
}

func ctlReplay(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("controller", "replay-access")
	server := fs.String("server", "127.0.0.1:7443", "controller address (comma-separated replicas)")
	tlsf := ctlAddTLSFlags(fs, "replay")
	node := fs.String("node", "", "node name to register (default --tls-name; must be the certificate's name)")
	site := fs.String("site", "", "site the replaying edge is in (required)")
	csvPath := fs.String("csv", "", "demand CSV: timestamp,location,value or the Uber per-borough layout (required)")
	resource := fs.String("resource", "", "resource the accesses are for (required)")
	locs := fs.String("locations", "", "CSV location=site pairs to replay, comma-separated (default: every location whose name is a site)")
	from := fs.String("from", "", "start at this CSV time (default the first row)")
	speedup := fs.Float64("speedup", 60, "CSV seconds per wall second (60: an hourly CSV fills 1-minute controller buckets)")
	probes := fs.String("probe", "", "fixed probe estimates mirror=rtt, comma-separated (e.g. paris=5ms,nyc=80ms)")
	report := fs.Duration("report-interval", 0, "report interval until the controller asks for another (default the client's)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *site == "" || *csvPath == "" || *resource == "" || *speedup <= 0 {
		return fmt.Errorf("%w: replay-access needs --site, --csv, --resource and a positive --speedup", cli.ErrUsage)
	}
	if *node == "" {
		*node = *tlsf.name
	}
	rp := &replayer{resource: *resource, regions: map[string]string{}}
	for _, kv := range splitList(*probes) {
		m, d, ok := strings.Cut(kv, "=")
		rtt, err := time.ParseDuration(d)
		if !ok || err != nil || rtt <= 0 {
			return fmt.Errorf("%w: --probe %q: want mirror=rtt", cli.ErrUsage, kv)
		}
		rp.probes = append(rp.probes, &pb.ProbeResult{Mirror: m, RttNs: int64(rtt), MedianNs: int64(rtt), MinNs: int64(rtt),
			Health: pb.Health_HEALTH_UP, Samples: 10, Probes: 10})
	}
	for _, kv := range splitList(*locs) {
		l, s, ok := strings.Cut(kv, "=")
		if !ok || l == "" || s == "" {
			return fmt.Errorf("%w: --locations %q: want location=site", cli.ErrUsage, kv)
		}
		rp.regions[l] = s
	}
	f, err := os.Open(*csvPath)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	tbl, err := forecast.ReadTable(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("replay %s: %w", *csvPath, err)
	}
	step, err := tbl.NativeStep()
	if err != nil {
		return fmt.Errorf("replay %s: %w", *csvPath, err)
	}
	recs := tbl.Records
	slices.SortStableFunc(recs, func(a, b forecast.Record) int { return a.Time.Compare(b.Time) })
	if *from != "" {
		t, err := forecast.ParseTime(*from)
		if err != nil {
			return fmt.Errorf("%w: --from: %v", cli.ErrUsage, err)
		}
		i, _ := slices.BinarySearchFunc(recs, t, func(r forecast.Record, t time.Time) int { return r.Time.Compare(t) })
		recs = recs[i:]
	}
	if len(rp.regions) == 0 {
		for _, r := range recs {
			rp.regions[r.Location] = strings.ToLower(r.Location)
		}
	}
	if len(recs) == 0 {
		return fmt.Errorf("replay %s: no rows to replay", *csvPath)
	}

	files := tlsf.files()
	tc, err := pki.ClientConfig(files, "")
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	client, err := control.New(control.Config{Endpoints: splitList(*server), TLS: tc, Node: *node, Site: *site,
		Role: pb.NodeRole_NODE_ROLE_EDGE, Apply: rp.apply, AccessCounts: rp.accessCounts, Probes: rp.probeList,
		ReportInterval: *report, Logger: log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	ran := false // the loop took Run's result: nothing more comes on done
	defer func() {
		cancel()
		if !ran {
			<-done
		}
	}()

	// Align the replay so each CSV bucket fills one wall interval of
	// step/speedup, starting at the next such boundary.
	wallStep := time.Duration(float64(step) / *speedup)
	if wallStep <= 0 {
		return fmt.Errorf("%w: --speedup %v leaves no time per bucket", cli.ErrUsage, *speedup)
	}
	csv0 := recs[0].Time
	wall0 := time.Now().Truncate(wallStep).Add(wallStep)
	fmt.Fprintf(os.Stderr, "replaying %d rows of %s from %s: one %v bucket every %v, starting %s\n", len(recs), *csvPath,
		csv0.Format(time.RFC3339), step, wallStep, wall0.Format(time.RFC3339))
	t := time.NewTicker(min(wallStep/10, 100*time.Millisecond))
	defer t.Stop()
	sent, skipped := 0, 0
	for i := 0; i < len(recs); {
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			ran = true
			return err
		case <-t.C:
		}
		// A record is emitted in the middle of its bucket's wall interval.
		csvNow := csv0.Add(time.Duration(float64(time.Since(wall0)) * *speedup))
		emitted := false
		for i < len(recs) && !recs[i].Time.Add(step/2).After(csvNow) {
			r := recs[i]
			if _, ok := rp.regions[r.Location]; ok && r.Value > 0 {
				if rp.emit(r.Location, uint64(r.Value+0.5)) {
					sent++
					emitted = true
				} else {
					skipped++
				}
			}
			i++
		}
		if emitted {
			client.ReportNow()
		}
	}
	fmt.Fprintf(os.Stderr, "replayed %d counts (%d before the controller's state named the resource and region)\n", sent, skipped)
	// Let the last report go out.
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	return nil
}
