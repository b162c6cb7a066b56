package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/lab"
	"github.com/premirror/premirror/internal/testbed"
)

// The predictive loop's resource: small, so that tens of flows per bucket
// pay for its copy many times over (DefaultPrices: copying 2 MiB costs
// about $4e-5; a us request saves about 14 ms, worth $1.4e-6).
const (
	predResource = "web"
	predSize     = 2 << 20
	// controlResource is used from eu only (UDP).
	controlResource = "web-udp"
	copyRate        = "1MiB" // replication link m-core → m-us, per second
)

// predictiveObjects: web lives on m-core (site eu) with no static mirror
// and may be copied only to site us, whose one mirror host is m-us.
// web-udp has the same policy; only eu uses it, which a copy on m-us
// would not serve faster: it is the control that demand, not the policy
// alone, places copies.
func predictiveObjects(tb *testbed.Testbed) string {
	predictive := func(name, protocol string, port int) string {
		return fmt.Sprintf(`  - name: %s
    vips: [%s, "%s"]
    ports: [%d]
    protocol: %s
    origin: m-core
    size_bytes: %d
    mirror_policy: {mode: predictive, max_mirrors: 2, sites: [us]}
    thresholds: {mirror_score: 0.6, retire_score: 0.3, max_lag: 30s}
`, name, vip4, vip6, port, protocol, predSize)
	}
	return controlledSitesMirrors(tb) + "resources:\n" + predictive(predResource, "tcp", tcpPort) + predictive(controlResource, "udp", udpPort)
}

// flow is one new TCP flow a driver opened.
type flow struct {
	start, end time.Time
	region     string
	network    string
	mirror     string // "" when it failed
}

// flowLog collects the drivers' flows.
type flowLog struct {
	mu    sync.Mutex
	flows []flow
}

func (l *flowLog) add(f flow) {
	l.mu.Lock()
	l.flows = append(l.flows, f)
	l.mu.Unlock()
}

func (l *flowLog) snapshot() []flow {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]flow(nil), l.flows...)
}

// firstServed returns the first TCP flow of region served by mirror.
func (l *flowLog) firstServed(region, mirror string) (flow, bool) {
	for _, f := range l.snapshot() {
		if f.region == region && f.network == "tcp" && f.mirror == mirror {
			return f, true
		}
	}
	return flow{}, false
}

// drive opens a new flow (tcp or udp) from client every interval until
// ctx ends.
func (e *env) drive(ctx context.Context, wg *sync.WaitGroup, log *flowLog, region, client, network string, interval time.Duration) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			start := time.Now()
			m := e.askQuick(client, network, vip4, time.Second)
			if ctx.Err() != nil {
				return // a flow cut short by the end of the test says nothing
			}
			log.add(flow{start: start, end: time.Now(), region: region, network: network, mirror: m})
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// TestPredictivePlacement runs the whole predictive loop with the real
// controller, agents and replicator: new flows from us make the
// controller's forecaster predict us demand for web, whose only copy is on
// m-core (10 ms from us); the mirroring manager places a full copy on m-us
// (3 ms from us); the desired state carries a replication task to m-core's
// agent, whose replicator pushes the volume to m-us's over mutual TLS;
// m-us's agent reports the copy in sync, and only then does the
// controller route us's new flows to m-us. eu, whose best copy stays
// m-core, never moves.
func TestPredictivePlacement(t *testing.T) {
	e, bin := newControlled(t)
	l := e.lab
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// newControlled's dump adds the controller's log and status.
		for _, args := range [][]string{{"placements"}, {"explain", predResource}, {"forecast", "show", predResource}} {
			out, err := l.ControllerCommand(context.Background(), args...)
			t.Logf("controller %s (%v):\n%s", strings.Join(args, " "), err, out)
		}
		for _, h := range []string{"m-core", "m-us", "edge-us"} {
			if a := l.Agent(h); a != nil {
				b, _ := os.ReadFile(a.Log)
				t.Logf("%s agent log:\n%s", h, lastLines(string(b), 40))
			}
		}
	})
	e.dumpOnFailure()

	// The volume: random data on m-core; m-us declares no volume but a
	// volume_dir, where the placement's task creates the mirror that only
	// m-core may fill.
	vols := t.TempDir()
	coreImg, usDir := filepath.Join(vols, "m-core.img"), filepath.Join(vols, "m-us")
	usImg := filepath.Join(usDir, predResource+".img")
	data := make([]byte, predSize)
	rng := rand.NewChaCha8([32]byte{'p', 'l', 'a', 'c', 'e'})
	rng.Read(data)
	if err := os.WriteFile(coreImg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The copy is throttled so that it takes about 2 s: long enough to
	// see that no flow goes to m-us while it is incomplete.
	l.SetVolumeCopy(lab.VolumeCopy{Volume: predResource, PrimaryHost: "m-core", Primary: coreImg,
		MirrorHost: "m-us", MirrorDir: usDir, Schedule: copyRate, TaskInterval: time.Second})

	e.startController(lab.ControllerSetup{Bin: bin, Objects: predictiveObjects(e.tb), Replicators: []string{"m-core", "m-us"},
		// Two-second buckets: forecasts, and the manager's evaluations,
		// come every 2 s instead of every hour.
		Args: []string{"--forecast-step", "2s", "--forecast-window", "16", "--forecast-horizon", "4", "--forecast-grace", "1s"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Before any demand, both regions are served by the only copy.
	e.waitServed("us-1", "tcp", "m-core", 30*time.Second)
	e.waitServed("eu-1", "tcp", "m-core", 30*time.Second)

	// Steady demand for web: about 20 new flows a second from us (40 per
	// bucket), 4 from eu; for web-udp, 10 a second from eu.
	var flows flowLog
	var wg sync.WaitGroup
	dctx, stop := context.WithCancel(context.Background())
	e.drive(dctx, &wg, &flows, "us", "us-1", "tcp", 100*time.Millisecond)
	e.drive(dctx, &wg, &flows, "us", "us-2", "tcp", 100*time.Millisecond)
	e.drive(dctx, &wg, &flows, "eu", "eu-1", "tcp", 250*time.Millisecond)
	e.drive(dctx, &wg, &flows, "eu", "eu-2", "udp", 100*time.Millisecond)
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			stop()
			wg.Wait()
		}
	}
	defer halt()
	tStart := time.Now()

	poll := func(what string, within, every time.Duration, ok func() bool) time.Time {
		t.Helper()
		deadline := time.Now().Add(within)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v", what, within)
			}
			time.Sleep(every)
		}
		return time.Now()
	}

	// The first bucket with us demand closes: a forecast is published.
	tForecast := poll("first forecast of web published", 30*time.Second, 250*time.Millisecond, func() bool {
		_, err := l.ControllerCommand(ctx, "forecast", "show", predResource)
		return err == nil
	})

	// (2) The manager places a full copy on m-us.
	var rec *pb.PlacementRecord
	poll("a copy of web placed on m-us", 40*time.Second, 500*time.Millisecond, func() bool {
		r, err := l.Placements(ctx, predResource)
		if err != nil {
			t.Logf("placements: %v", err)
			return false
		}
		rec = r
		return len(r.GetPlaced()) > 0
	})
	if n := len(rec.GetPlaced()); n != 1 {
		t.Fatalf("%d copies placed, want 1 (max_mirrors 2 counts the origin): %v", n, rec)
	}
	pl := rec.GetPlaced()[0]
	if pl.GetSite() != "us" || pl.GetMirror() != "m-us" || pl.GetKind() != pb.MirrorKind_MIRROR_KIND_FULL {
		t.Fatalf("placed %s on %s (%v), want a full copy for us on m-us", pl.GetSite(), pl.GetMirror(), pl.GetKind())
	}
	if pl.GetPlacedScore() < 0.6 {
		t.Errorf("placed with score %.3f, below mirror_score 0.6", pl.GetPlacedScore())
	}
	// It must be in sync by a forecast bucket's start (a 2 s bucket within
	// the 4-bucket horizon), and sends the whole volume.
	if dl := time.Unix(0, pl.GetDeadlineUnixNano()); pl.GetDeadlineUnixNano() == 0 || pl.GetCopyBytes() != predSize ||
		dl.Before(time.Unix(0, pl.GetPlacedUnixNano()).Add(-10*time.Second)) || dl.After(time.Unix(0, pl.GetPlacedUnixNano()).Add(10*time.Second)) {
		t.Errorf("placement deadline %v, %d bytes; want a bucket start near %v and %d bytes", dl, pl.GetCopyBytes(),
			time.Unix(0, pl.GetPlacedUnixNano()), predSize)
	}
	tPlaced := time.Unix(0, pl.GetPlacedUnixNano())
	// What the operator reads says the same.
	if out, err := l.ControllerCommand(ctx, "placements", predResource); err != nil ||
		!strings.Contains(string(out), "resource web: 1 placed") || !strings.Contains(string(out), "place  us on m-us (full") {
		t.Errorf("controller placements %s (%v):\n%s", predResource, err, out)
	} else {
		t.Logf("controller placements %s:\n%s", predResource, out)
	}

	// (3) m-core's replicator copies the volume to m-us: byte-identical.
	// The copy was incomplete when a read that found it differing began.
	var incomplete time.Time
	tSync := poll("m-us's copy of web identical to m-core's", 30*time.Second, 100*time.Millisecond, func() bool {
		began := time.Now()
		b, err := os.ReadFile(usImg)
		if err == nil && bytes.Equal(b, data) {
			return true
		}
		incomplete = began
		return false
	})
	if incomplete.Before(tPlaced) {
		t.Logf("the copy was complete at its first look, %v after the placement: the test saw no flow during the copy", tSync.Sub(tPlaced))
	}
	if log := mustRead(t, l.Agent("m-core").Log); !strings.Contains(log, `msg="replication tasks applied"`) {
		t.Errorf("m-core's agent did not log the replication task")
	} else if !strings.Contains(log, `msg="replication task started"`) {
		// One rate at all times: nothing to wait for, it starts at once.
		t.Errorf("m-core's agent did not log the task's start decision")
	}

	// (4) us's new flows go to the copy on m-us.
	poll("new us flows served by m-us", 30*time.Second, 100*time.Millisecond, func() bool {
		_, ok := flows.firstServed("us", "m-us")
		return ok
	})
	first, _ := flows.firstServed("us", "m-us")
	// Routing waits for the copy: it was complete before any flow reached it.
	if b, err := os.ReadFile(usImg); err != nil || !bytes.Equal(b, data) {
		t.Errorf("m-us served a flow but its copy differs from the origin's (%v)", err)
	}
	// Let the new route settle, then keep watching for a few seconds.
	time.Sleep(3 * time.Second)
	halt()

	// (1), (4), (5) from the flow log. Misrouted flows are counted by
	// rule and reported once each (a broken rule misroutes hundreds).
	all := flows.snapshot()
	var usBefore, usCopying, usAfter, usAfterOnUS, eu, failed int
	var rules []string
	wrong := map[string][]flow{}
	misrouted := func(rule string, f flow) {
		if wrong[rule] == nil {
			rules = append(rules, rule)
		}
		wrong[rule] = append(wrong[rule], f)
	}
	settled := first.start.Add(2 * time.Second)
	for _, f := range all {
		switch {
		case f.mirror == "":
			failed++
		case f.region == "eu":
			eu++
			if f.mirror != "m-core" {
				misrouted("eu flows not on m-core (the only copy nearer than m-us)", f)
			}
		case f.mirror != "m-core" && f.mirror != "m-us":
			misrouted("us flows on neither copy", f)
		case f.end.Before(tPlaced):
			usBefore++
			if f.mirror != "m-core" {
				misrouted("us flows not on m-core before the placement", f)
			}
		case f.start.Before(incomplete):
			usCopying++
			if f.mirror != "m-core" {
				misrouted(fmt.Sprintf("us flows not on m-core while m-us's copy was incomplete (seen at +%v)",
					incomplete.Sub(tStart).Round(time.Millisecond)), f)
			}
		case f.start.After(settled):
			usAfter++
			if f.mirror == "m-us" {
				usAfterOnUS++
			}
		}
	}
	// The control: eu's demand for web-udp was scored and placed nothing,
	// as a copy on m-us saves eu nothing (explain shows the score; the
	// manager's record shows it was evaluated and decided nothing).
	if out, err := l.ControllerCommand(ctx, "explain", controlResource); err != nil || !strings.Contains(string(out), "candidate us: score 0.000") {
		t.Errorf("controller explain %s (%v): want candidate us scored 0, or the control says nothing:\n%s", controlResource, err, out)
	}
	if rec, err := l.Placements(ctx, controlResource); err != nil || len(rec.GetPlaced()) != 0 || len(rec.GetEvents()) != 0 || rec.GetEvaluatedUnixNano() == 0 {
		t.Errorf("%s, used from eu only: want evaluated with no placement (%v): %v", controlResource, err, rec)
	}
	for _, r := range rules {
		f := wrong[r][0]
		t.Errorf("%d %s; the first opened at +%v, served by %s", len(wrong[r]), r, f.start.Sub(tStart).Round(time.Millisecond), f.mirror)
	}
	if usBefore == 0 || eu == 0 {
		t.Errorf("flows: %d us before the placement, %d eu: want some of each", usBefore, eu)
	}
	// The whole route table moves at once (--route-max-move 1): once
	// settled, every new us flow lands on m-us.
	if usAfter == 0 || usAfterOnUS != usAfter {
		t.Errorf("after the move settled, %d of %d new us flows served by m-us, want all", usAfterOnUS, usAfter)
	}
	if failed > len(all)/20 {
		t.Errorf("%d of %d flows failed", failed, len(all))
	}
	t.Logf("flows: %d in all, %d failed; us: %d on m-core before the placement, %d on m-core during the copy, %d of %d on m-us once settled; eu: %d, all on m-core",
		len(all), failed, usBefore, usCopying, usAfterOnUS, usAfter, eu)
	t.Logf("demand start → first forecast published %v; first forecast → placement %v (score %.3f); placement → copy identical %v (link %s/s); copy identical → first us flow on m-us %v; total %v",
		tForecast.Sub(tStart).Round(time.Millisecond), tPlaced.Sub(tForecast).Round(time.Millisecond), pl.GetPlacedScore(),
		tSync.Sub(tPlaced).Round(time.Millisecond), copyRate, first.start.Sub(tSync).Round(time.Millisecond), first.start.Sub(tStart).Round(time.Millisecond))
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
