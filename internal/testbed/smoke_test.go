package testbed

import (
	"context"
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	topo, err := LoadTopology("testdata/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tb := ForTest(t, topo, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := tb.Host("eu-1")
	m := tb.Host("m-eu")
	r, err := c.Ask(ctx, "tcp", m.V4().String()+":8080")
	t.Logf("reply %+v err %v", r, err)
	for _, st := range tb.Switch().Stats() {
		t.Logf("%+v", st)
	}
}
