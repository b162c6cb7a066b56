package agent

import (
	"crypto/tls"
	"path/filepath"
	"testing"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/control"
	"github.com/premirror/premirror/internal/probe"
	"github.com/premirror/premirror/internal/promdesc/alerttest"
)

// TestAlertCountersStartAtZero: an agent's collectors export, at 0, every
// series of its counters the alert rules take the increase or rate of, so
// a first failed reconcile or task raises its alert (increase() over a
// series that appears at 1 sees nothing). The replicator's are its own
// test's.
func TestAlertCountersStartAtZero(t *testing.T) {
	// With an access journal (an edge with controller.state_cache), whose
	// counters it exports only then.
	cl, err := control.New(control.Config{Endpoints: []string{"127.0.0.1:1"}, TLS: &tls.Config{}, Node: "edge",
		Apply:        func(uint64, *pb.DesiredState) error { return nil },
		JournalFile:  filepath.Join(t.TempDir(), "state.pb.access"),
		AccessCounts: func() []*pb.AccessCount { return nil }, AccessBaseline: func(bool) []*pb.AccessCount { return nil },
		DropBaseline: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	alerttest.CheckCollectors(t, alerttest.Want{
		Values: map[string][]string{
			"edge_replication_task_errors_total/reason": taskReasons,
			"premirror_probe_results_total/kind":        {"tcp", "udp"},
			"premirror_probe_results_total/result":      {"ok", "timeout", "refused", "error"},
		},
		Skip: map[string]string{
			// Read from the maps at scrape time: every field of their
			// stats (maps.Stats.Fields), 0 included, at every scrape.
			"edge_packets_total":       "map stats",
			"edge_decap_packets_total": "map stats",
		},
	}, newMetrics(&Agent{}), newPathMetrics(nil), probe.NewMetrics(), cl)
}
