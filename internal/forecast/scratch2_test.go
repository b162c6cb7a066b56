package forecast

import (
	"fmt"
	"os"
	"testing"
	"time"
)

func TestScratchLoc(t *testing.T) {
	f, _ := os.Open("/work/shared/data/dev/uber_nyc_boroughs_hourly_2015-01_04.csv")
	ss, _ := LoadSeries(f, SeriesOptions{})
	d, _ := LocationDataFromSeries(ss)
	feeds, _ := ss[0].Feeds(nil)
	m, err := NewLocationModel(LocationConfig{Regions: d.Regions, Step: time.Hour, Horizons: []int{1, 24}, Covariates: feeds.Covariates.Names()}, feeds)
	if err != nil {
		t.Fatal(err)
	}
	for i := range d.Counts {
		m.Observe(d.Start.Add(time.Duration(i)*time.Hour), d.Counts[i])
		if i%500 == 0 {
			fmt.Printf("%d\n h1 w=%.2f b=%.2f\n h24 w=%.2f b=%.2f drift=%.3f\n", i, m.hor[0].w, m.hor[0].b, m.hor[1].w, m.hor[1].b, m.drift)
		}
	}
}
