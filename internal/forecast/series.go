package forecast

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"
)

// Series is one regularly sampled demand series: Values[i] is the demand of
// the bucket that starts at Start + i*Step.
type Series struct {
	Name     string
	Start    time.Time
	Step     time.Duration
	Values   []float64
	Observed []bool // false where a gap was filled; such buckets are never scored
	// Covariates holds numeric external feeds aligned with Values.
	Covariates map[string][]float64
	// Holidays lists the days (UTC midnight) the data itself flags.
	Holidays []time.Time
}

// Len is the number of buckets.
func (s *Series) Len() int { return len(s.Values) }

// Time is the start of bucket i.
func (s *Series) Time(i int) time.Time { return s.Start.Add(time.Duration(i) * s.Step) }

// StepsPerDay is the number of buckets in a day (0 when Step does not
// divide a day).
func (s *Series) StepsPerDay() int { return stepsPer(s.Step, 24*time.Hour) }

func stepsPer(step, period time.Duration) int {
	if step <= 0 || period%step != 0 {
		return 0
	}
	return int(period / step)
}

// Feeds builds the external feeds a series carries: its covariate columns
// and its holiday flags as holiday events. extra events (an events
// calendar) are added to the flags.
func (s *Series) Feeds(extra []Event) (*Feeds, error) {
	ev := append([]Event(nil), extra...)
	for _, d := range s.Holidays {
		ev = append(ev, Event{Start: d, End: d.Add(24 * time.Hour), Name: "holiday flag", Kind: KindHoliday})
	}
	cal, err := NewCalendar(ev)
	if err != nil {
		return nil, err
	}
	f := &Feeds{Calendar: cal, Covariates: NewCovariates(s.Step)}
	for name, vals := range s.Covariates {
		for i, v := range vals {
			if err := f.Covariates.Set(name, "", s.Time(i), v); err != nil {
				return nil, fmt.Errorf("covariate %s: %w", name, err)
			}
		}
	}
	return f, nil
}

// LoadSeries reads a demand CSV (see ReadTable) into regular series.
// Repeated rows are dropped (Table.DropDuplicates) unless opt.KeepRepeats;
// that and ignored text columns are logged (slog, warning level).
func LoadSeries(r io.Reader, opt SeriesOptions) ([]*Series, error) {
	t, err := ReadTable(r)
	if err != nil {
		return nil, err
	}
	if len(t.Ignored) > 0 {
		slog.Warn("series: columns ignored (text, or a row index: not numeric covariates)", "columns", strings.Join(t.Ignored, ","))
	}
	if !opt.KeepRepeats {
		if dropped, conflicting := t.DropDuplicates(); dropped+conflicting > 0 {
			slog.Warn("series: rows repeating a timestamp", "dropped_repeats", dropped,
				"kept_other_values", conflicting, "agg", opt.Agg.String())
		}
	}
	if opt.IndexStep > 0 {
		if err := t.reindex(opt.IndexStep); err != nil {
			return nil, err
		}
	}
	return t.Series(opt)
}

// reindex reads every record's time as a bucket number (its Unix seconds,
// which is how ParseTime reads an integer) of length step.
func (t *Table) reindex(step time.Duration) error {
	for i := range t.Records {
		r := &t.Records[i]
		n := r.Time.Unix()
		if r.Time.Nanosecond() != 0 || n < 0 || float64(n)*float64(step) > math.MaxInt64/2 {
			return fmt.Errorf("%w: --index-step: timestamp %v is not a bucket number", ErrBadInput, r.Time)
		}
		r.Time = time.Unix(0, 0).UTC().Add(time.Duration(n) * step)
	}
	return nil
}
