package controller

import (
	"testing"

	"github.com/premirror/premirror/internal/promdesc/alerttest"
)

// TestAlertCountersStartAtZero: a new controller exports, at 0, every
// series of its counters the alert rules take the increase or rate of, so
// the first NACK, checkpoint failure or failed route computation raises
// its alert (increase() over a series that appears at 1 sees nothing).
func TestAlertCountersStartAtZero(t *testing.T) {
	cfg := Config{Name: "c1", TLS: shared.files, Prefix: testPrefix(t), Logger: quietLogger()}
	cli := etcdClient(t)
	defer cli.Close()
	c, err := New(cfg, cli)
	if err != nil {
		t.Fatal(err)
	}
	alerttest.Check(t, alerttest.Want{}, c.Registry(), Metrics())
}
