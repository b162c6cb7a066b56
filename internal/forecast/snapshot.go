package forecast

import (
	"github.com/premirror/premirror/internal/atomicfile"

	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"sort"
	"time"
)

// Snapshot format (all integers little endian):
//
//	magic "PMFCSNAP" | version u32 | payload length u64 | payload | CRC-32C(payload) u32
//
// The payload is a flat sequence of fields written by enc and read back by
// dec in the same order. Every slice is length-prefixed and its length is
// checked against the bytes that remain, so a corrupt or hostile snapshot
// is rejected before anything large is allocated, and nothing of a
// rejected snapshot is applied (the engine is swapped only at the end).

// ErrCorruptSnapshot marks a snapshot that failed its checks.
var ErrCorruptSnapshot = errors.New("corrupt snapshot")

// ErrSnapshotVersion marks a snapshot written in another format version
// (by an older or newer build). It also wraps ErrCorruptSnapshot; nothing
// of it is applied. A controller may branch on it to start from empty
// models instead of failing.
var ErrSnapshotVersion = errors.New("unsupported snapshot format version")

const (
	snapMagic = "PMFCSNAP"
	// snapVersion 2: the demand model gained the forecast combination
	// (pool.go); 3: the yearly memory, three stacker inputs (yearly.go,
	// the trend) and the non-negative flag; 4: the recent error scale of
	// the intervals; 5: the Holt-Winters expert of the combination and the location
	// mixture's AdaHedge state; 6: two yearly experts in the combination;
	// 7: the shift gate; 8: the stored residuals are Huberized (weight ×
	// residual: Hybrid.clean reads the value back from them); 9: two
	// pooled persistence experts in the location model; 10: the demand
	// combination's Holt-Winters expert with fitted parameters; 11: the
	// interval bounds issued at each pending origin and the event targets'
	// interval trackers; 12: the event targets' error scale; 13: the
	// longer horizons' carry of the shift gate's bets; 14: the location
	// model's forecasts made when its last bucket closed (Precompute),
	// which a restored engine serves as the original does. Snapshots from
	// snapMinVersion on are read (an upgraded controller keeps what its
	// models learnt); older ones are refused with ErrSnapshotVersion.
	snapVersion = 14
	// snapMinVersion is the oldest format this build reads: version 13
	// differs only in the location model's precomputed forecasts (made
	// afresh from the current feeds), version 12 also in the carry (it
	// starts afresh), version 11 also in
	// the event targets' error scale (it starts afresh too),
	// version 10 also in the issued interval bounds and the event trackers
	// (rebuilt from the ordinary trackers), version 9 also in the demand combination's expert count
	// (one expert fewer: pool.decode), version 8 also in the location
	// model's (readLocExperts).
	snapMinVersion = 8
	// maxSnapshot bounds what Restore reads (a million series of a few
	// hundred kilobytes would not fit anyway).
	maxSnapshot = 64 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type enc struct{ b []byte }

func (e *enc) u64(v uint64)  { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) i64(v int64)   { e.u64(uint64(v)) }
func (e *enc) int(v int)     { e.i64(int64(v)) }
func (e *enc) f64(v float64) { e.u64(math.Float64bits(v)) }
func (e *enc) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}
func (e *enc) str(s string) { e.int(len(s)); e.b = append(e.b, s...) }
func (e *enc) time(t time.Time) {
	e.bool(!t.IsZero())
	e.i64(t.Unix())
	e.i64(int64(t.Nanosecond()))
}
func (e *enc) fs(v []float64) {
	e.int(len(v))
	for _, x := range v {
		e.f64(x)
	}
}
func (e *enc) f32s(v []float32) {
	e.int(len(v))
	for _, x := range v {
		e.b = binary.LittleEndian.AppendUint32(e.b, math.Float32bits(x))
	}
}
func (e *enc) strs(v []string) {
	e.int(len(v))
	for _, s := range v {
		e.str(s)
	}
}

type dec struct {
	b   []byte
	err error
	ver uint32 // the snapshot's format version; 0 (a part decoded alone) is the current one
}

// before says the snapshot was written in a format older than v (format
// 9 added the location model's pooled persistence experts, 10 the demand
// combination's fitted Holt-Winters expert, 11 the issued interval bounds
// and the event trackers).
func (d *dec) before(v uint32) bool { return d.ver != 0 && d.ver < v }

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorruptSnapshot, what)
	}
}

func (d *dec) u64() uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.fail("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
func (d *dec) i64() int64   { return int64(d.u64()) }
func (d *dec) f64() float64 { return math.Float64frombits(d.u64()) }
func (d *dec) bool() bool {
	if d.err != nil || len(d.b) < 1 {
		d.fail("truncated")
		return false
	}
	v := d.b[0]
	d.b = d.b[1:]
	if v > 1 {
		d.fail("bad bool")
	}
	return v == 1
}

// n reads a length and checks that size bytes per element remain.
func (d *dec) n(size int) int {
	v := d.i64()
	if d.err != nil {
		return 0
	}
	if v < 0 || v > int64(len(d.b)/max(size, 1)) {
		d.fail(fmt.Sprintf("length %d exceeds the remaining %d bytes", v, len(d.b)))
		return 0
	}
	return int(v)
}

func (d *dec) int() int {
	v := d.i64()
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.fail("integer out of range")
		return 0
	}
	return int(v)
}

func (d *dec) str() string {
	n := d.n(1)
	if d.err != nil {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *dec) time() time.Time {
	ok := d.bool()
	s, ns := d.i64(), d.i64()
	if !ok {
		return time.Time{}
	}
	if ns < 0 || ns >= 1e9 {
		d.fail("bad time")
	}
	return time.Unix(s, ns).UTC()
}

// decSlice reads a length-prefixed slice whose elements take at least
// size bytes each.
func decSlice[T any](d *dec, size int, read func() T) []T {
	n := d.n(size)
	if d.err != nil {
		return nil
	}
	v := make([]T, n)
	for i := range v {
		v[i] = read()
	}
	return v
}

func (d *dec) fs() []float64 { return decSlice(d, 8, d.f64) }

// intoSlice reads a length-prefixed slice of exactly len(dst) elements of
// size bytes each into dst.
func intoSlice[T any](d *dec, dst []T, size int, what string, read func() T) {
	n := d.n(size)
	if d.err != nil {
		return
	}
	if n != len(dst) {
		d.fail(fmt.Sprintf("%s: %d values, want %d", what, n, len(dst)))
		return
	}
	for i := range dst {
		dst[i] = read()
	}
}

// inRange fails the decode unless every value of v lies in [lo, hi] (NaN
// does not).
func (d *dec) inRange(v []float64, lo, hi float64, what string) {
	for _, x := range v {
		if !(x >= lo && x <= hi) {
			d.fail(fmt.Sprintf("%s: %v outside [%v, %v]", what, x, lo, hi))
			return
		}
	}
}

// fsInto reads a float slice that must have exactly len(dst) elements.
func (d *dec) fsInto(dst []float64, what string) { intoSlice(d, dst, 8, what, d.f64) }

// f32sInto reads a float32 slice that must have exactly len(dst) elements.
func (d *dec) f32sInto(dst []float32, what string) {
	intoSlice(d, dst, 4, what, func() float32 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(d.b))
		d.b = d.b[4:]
		return v
	})
}

func (d *dec) strs() []string { return decSlice(d, 8, d.str) }

// encode writes the model state (not the configuration, which the reader
// supplies and checks).
func (m *Hybrid) encode(e *enc) {
	e.i64(m.n)
	e.time(m.last)
	e.fs(m.ys)
	e.fs(m.wts)
	e.fs(m.res)
	e.fs(m.es[:])
	e.f64(m.nu)
	e.f64(m.c)
	e.f64(m.s)
	e.int(m.sinceRebase)
	e.i64(m.nextTune)
	e.fs(m.gv[:])
	e.f64(m.sig)
	e.bool(m.integer)
	e.bool(m.nonneg)
	e.i64(m.d.trendRef)
	b := m.blr
	e.fs(b.S)
	e.fs(b.U)
	e.f64(b.YY)
	e.f64(b.N)
	e.fs(b.Prec0)
	e.fs(b.Beta)
	e.f64(b.An)
	e.f64(b.Bn)
	e.fs(m.muY)
	e.fs(m.sgY)
	e.f32s(m.feat)
	e.fs(m.predY)
	e.fs(m.predE)
	e.fs(m.rw)
	e.fs(m.rp)
	e.fs(m.rb)
	e.fs(m.covMean)
	e.fs(m.covM2)
	e.f64(m.covN)
	e.fs(m.evM)
	e.fs(m.evP)
	e.fs(m.sh)
	e.fs(m.nh)
	e.fs(m.q)
	e.bool(m.pl != nil)
	if m.pl != nil {
		e.fs(m.predF)
		e.fs(m.shF)
		e.fs(m.shr)
		e.fs(m.shFr)
		e.fs(m.qF)
		e.fs(m.ivF)
		e.fs(m.qE)
		e.fs(m.shE)
		e.fs(m.nE)
		e.f64(m.surprise)
		encodeEvidence(e, m.gate[:])
		e.bool(m.bet.pending)
		e.f64(m.bet.c)
		e.f64(m.bet.last)
		e.int(m.bet.bin)
		m.carry.encode(e)
		m.pl.encode(e)
		e.bool(m.hw != nil)
		if m.hw != nil {
			m.hw.encode(e)
		}
		e.bool(m.hwf != nil)
		if m.hwf != nil {
			m.hwf.encode(e)
		}
	}
	e.bool(m.yr != nil)
	if m.yr != nil {
		m.yr.encode(e)
	}
	e.bool(m.gru != nil)
	if m.gru != nil {
		e.fs(m.gru.P)
		e.fs(m.adam.M)
		e.fs(m.adam.V)
		e.f64(m.adam.Steps)
	}
	e.int(len(m.fc))
	for _, q := range m.fc {
		e.f64(q.Q10)
		e.f64(q.Q50)
		e.f64(q.Q90)
	}
	e.f64(m.med1)
	e.fs(m.acc.blrAE)
	e.fs(m.acc.hybAE)
}

// decode reads what encode wrote into a model built from the same
// configuration; sizes must match exactly.
func (m *Hybrid) decode(d *dec) {
	m.n = d.i64()
	if m.n < 0 {
		d.fail("negative count")
	}
	m.last = d.time()
	d.fsInto(m.ys, "window")
	d.fsInto(m.wts, "weights")
	m.run = m.countRun()
	d.fsInto(m.res, "residuals")
	d.fsInto(m.es[:], "levels")
	m.nu = d.f64()
	m.c = d.f64()
	m.s = d.f64()
	m.sinceRebase = d.int()
	m.nextTune = d.i64()
	d.fsInto(m.gv[:], "prior scales")
	m.sig = d.f64()
	m.integer = d.bool()
	m.nonneg = d.bool()
	m.d.trendRef = d.i64()
	b := m.blr
	d.fsInto(b.S, "gram")
	d.fsInto(b.U, "moments")
	b.YY = d.f64()
	b.N = d.f64()
	d.fsInto(b.Prec0, "prior")
	d.fsInto(b.Beta, "coefficients")
	b.An = d.f64()
	b.Bn = d.f64()
	d.fsInto(m.muY, "regression forecasts")
	d.fsInto(m.sgY, "scales")
	d.f32sInto(m.feat, "stacker inputs")
	d.fsInto(m.predY, "stacked forecasts")
	d.fsInto(m.predE, "event forecasts")
	d.fsInto(m.rw, "stacker weights")
	d.fsInto(m.rp, "stacker gram")
	d.fsInto(m.rb, "stacker moments")
	d.fsInto(m.covMean, "covariate means")
	d.fsInto(m.covM2, "covariate moments")
	m.covN = d.f64()
	d.fsInto(m.evM, "event effects")
	d.fsInto(m.evP, "event precisions")
	d.fsInto(m.sh, "error scales")
	d.fsInto(m.nh, "error counts")
	d.fsInto(m.q, "quantiles")
	if hasPool := d.bool(); hasPool != (m.pl != nil) {
		d.fail("combination present in one of snapshot and configuration only")
		return
	}
	if m.pl != nil {
		d.fsInto(m.predF, "final forecasts")
		d.fsInto(m.shF, "final error scales")
		d.fsInto(m.shr, "robust error scales")
		d.fsInto(m.shFr, "recent error scales")
		d.fsInto(m.qF, "final quantiles")
		if d.before(11) {
			// Format 10 kept no issued bounds: the pending origins' are
			// taken as today's (what the trackers used to judge by).
			H := m.cfg.Horizon
			for i := 0; i < len(m.ivF); i += 2 {
				h := i/2%H + 1
				iv := m.ivScale(h)
				m.ivF[i], m.ivF[i+1] = iv*m.qF[2*(h-1)], iv*m.qF[2*(h-1)+1]
			}
			// Nor event trackers: they start from the ordinary ones
			// (what event targets of the combination were judged by).
			copy(m.qE, m.qF)
		} else {
			d.fsInto(m.ivF, "issued interval bounds")
			// ±Inf only where a bound overflowed at 10³⁰⁸ (the forecast's own
			// quantile was infinite too); NaN is corruption.
			d.inRange(m.ivF, math.Inf(-1), math.Inf(1), "issued interval bounds")
			d.fsInto(m.qE, "event quantiles")
			d.inRange(m.qE, -math.MaxFloat64, math.MaxFloat64, "event quantiles")
		}
		// Format 11 and older kept no event error scale: it starts
		// afresh (the ordinary scale stands in until an event resolves).
		if !d.before(12) {
			d.fsInto(m.shE, "event error scales")
			d.inRange(m.shE, 0, math.MaxFloat64, "event error scales")
			d.fsInto(m.nE, "event error counts")
			d.inRange(m.nE, 0, math.MaxFloat64, "event error counts")
		}
		m.surprise = d.f64()
		decodeEvidence(d, m.gate[:], "shift gate")
		m.bet = gateBet{pending: d.bool(), c: d.f64(), last: d.f64(), bin: d.int()}
		if m.bet.pending {
			d.inRange([]float64{m.bet.c, m.bet.last}, -math.MaxFloat64, math.MaxFloat64, "shift gate's pending forecasts")
			if m.bet.bin < 0 || m.bet.bin >= gateBins {
				d.fail(fmt.Sprintf("shift gate's pending size bin %d outside [0, %d)", m.bet.bin, gateBins))
			}
		}
		// Format 12 and older kept no carry: it starts afresh (no bet
		// to carry, its losses and evidence empty).
		if !d.before(13) {
			m.carry.decode(d)
		}
		m.pl.decode(d)
		if has := d.bool(); has != (m.hw != nil) {
			d.fail("holt-winters expert present in one of snapshot and configuration only")
			return
		}
		if m.hw != nil {
			m.hw.decode(d)
		}
		// Format 9 has no fitted expert: it starts afresh, asleep until
		// its first fit.
		if !d.before(10) {
			if has := d.bool(); has != (m.hwf != nil) {
				d.fail("fitted holt-winters expert present in one of snapshot and configuration only")
				return
			}
			if m.hwf != nil {
				m.hwf.decode(d)
			}
		}
		d.inRange(m.shF, 0, math.MaxFloat64, "final error scales")
		d.inRange(m.shr, 0, math.MaxFloat64, "robust error scales")
		d.inRange(m.shFr, 0, math.MaxFloat64, "recent error scales")
	}
	if hasYear := d.bool(); hasYear != (m.yr != nil) {
		d.fail("yearly memory present in one of snapshot and configuration only")
		return
	}
	if m.yr != nil {
		m.yr.decode(d)
	}
	if hasGRU := d.bool(); hasGRU != (m.gru != nil) {
		d.fail("recurrent part present in one of snapshot and configuration only")
		return
	}
	if m.gru != nil {
		d.fsInto(m.gru.P, "gru parameters")
		d.fsInto(m.adam.M, "adam m")
		d.fsInto(m.adam.V, "adam v")
		m.adam.Steps = d.f64()
	}
	if n := d.n(24); n != len(m.fc) {
		d.fail("forecast length")
		return
	}
	for i := range m.fc {
		m.fc[i] = Quantiles{d.f64(), d.f64(), d.f64()}
	}
	m.med1 = d.f64()
	d.fsInto(m.acc.blrAE, "accuracy")
	d.fsInto(m.acc.hybAE, "accuracy")
	if d.err == nil && m.n > 0 {
		// Check the regression state is usable (the factor itself is
		// derived state, rebuilt at every Observe).
		if err := m.blr.SolveWith(make([]float64, m.d.p*m.d.p)); err != nil {
			d.fail("regression state not positive definite")
		}
		m.blr.L = nil
	}
}

func (m *LocationModel) encode(e *enc) {
	e.strs(m.cfg.Regions)
	e.i64(m.n)
	e.time(m.last)
	e.fs(m.pi)
	e.fs(m.lastN)
	e.fs(m.recent)
	e.fs(m.drift)
	e.int(len(m.how))
	for _, h := range m.how {
		e.fs(h)
	}
	e.fs(m.dt)
	e.f64(m.tot)
	e.int(len(m.hor))
	for _, lh := range m.hor {
		e.int(lh.h)
		e.fs(lh.w)
		e.fs(lh.b)
		e.fs(lh.g)
		e.fs(lh.gw)
		e.fs(lh.gb)
		e.fs(lh.gg)
		e.fs(lh.mix)
		e.f64(lh.gap)
		e.f64(lh.ceSum)
		e.f64(lh.ceCount)
	}
	e.fs(m.cov.mean)
	e.fs(m.cov.m2)
	e.f64(m.cov.n)
	e.fs(m.pendX)
	e.fs(m.pendZ)
	e.int(len(m.pendOK))
	for _, ok := range m.pendOK {
		e.bool(ok)
	}
	// The forecasts Precompute made when the last bucket closed, from the
	// feeds as they were then: Predict serves them until the next close.
	fresh := m.n > 0 && m.fcN == m.n && m.fcR == m.R && len(m.fcConc) > 0
	e.bool(fresh)
	if fresh {
		e.fs(m.fcConc)
		e.fs(m.fc[:len(m.fcConc)*m.R])
	}
}

// decodeLocation reads a location model; cfg supplies everything but the
// regions, which come from the snapshot.
func decodeLocation(d *dec, cfg LocationConfig, feeds *Feeds) *LocationModel {
	cfg.Regions = d.strs()
	if d.err != nil {
		return nil
	}
	m, err := NewLocationModel(cfg, feeds)
	if err != nil {
		d.fail("location model: " + err.Error())
		return nil
	}
	m.n = d.i64()
	m.last = d.time()
	d.fsInto(m.pi, "shares")
	d.fsInto(m.lastN, "last counts")
	d.fsInto(m.recent, "recent shares")
	d.fsInto(m.drift, "drift")
	if d.int() != len(m.how) {
		d.fail("hour-of-week tables")
		return nil
	}
	for _, h := range m.how {
		d.fsInto(h, "hour-of-week table")
	}
	d.fsInto(m.dt, "day-type table")
	m.tot = d.f64()
	if d.int() != len(m.hor) {
		d.fail("horizons")
		return nil
	}
	for i := range m.hor {
		lh := &m.hor[i]
		if d.int() != lh.h {
			d.fail("horizon")
			return nil
		}
		readLocExperts(d, lh.w, 0, "expert weights")
		d.fsInto(lh.b, "region biases")
		d.fsInto(lh.g, "context weights")
		readLocExperts(d, lh.gw, 0, "adagrad")
		d.fsInto(lh.gb, "adagrad")
		d.fsInto(lh.gg, "adagrad")
		readLocExperts(d, lh.mix, 1, "mixture weights")
		if d.before(9) {
			// The new experts join the mixture at the fixed share's
			// weight, as a candidate the mixture had written off would.
			for k := 1 + lxPool0; k <= 1+lxPool1; k++ {
				lh.mix[k] = mixShare / float64(len(lh.mix)-1)
			}
			normalise(lh.mix)
		}
		if lh.gap = d.f64(); !(lh.gap >= 0) || math.IsInf(lh.gap, 0) {
			d.fail("mixability gap")
		}
		lh.ceSum = d.f64()
		lh.ceCount = d.f64()
	}
	d.fsInto(m.cov.mean, "covariate means")
	d.fsInto(m.cov.m2, "covariate moments")
	m.cov.n = d.f64()
	if d.before(9) {
		// Version 8's pending inputs lack the pooled experts: read and
		// drop them, so that nothing is learnt from the (at most a day's)
		// forecasts made before the upgrade.
		d.fsInto(make([]float64, len(m.pendX)/numLx*numLxV8), "pending experts")
	} else {
		d.fsInto(m.pendX, "pending experts")
	}
	d.fsInto(m.pendZ, "pending context")
	if d.int() != len(m.pendOK) {
		d.fail("pending")
		return nil
	}
	for i := range m.pendOK {
		m.pendOK[i] = d.bool() && !d.before(9)
	}
	// Format 13 and older kept no precomputed forecasts: Predict makes
	// them from the current feeds.
	if !d.before(14) && d.bool() {
		m.fcConc = d.fs()
		m.fc = d.fs()
		if d.err == nil && (m.n <= 0 || len(m.fcConc) == 0 || len(m.fc) != len(m.fcConc)*m.R) {
			d.fail(fmt.Sprintf("location forecasts: %d shares for %d horizons of %d regions", len(m.fc), len(m.fcConc), m.R))
		}
		m.fcN, m.fcR = m.n, m.R
	}
	return m
}

// numLxV8 is the location model's expert count in snapshot version 8:
// every expert but the two pooled persistence ones, which come last.
const numLxV8 = lxPool0

// readLocExperts reads a per-expert slice (off leading entries, then one
// per expert) into dst; a version 8 snapshot's has no entries for the
// pooled persistence experts, which are left as they are (zero weights,
// empty accumulators).
func readLocExperts(d *dec, dst []float64, off int, what string) {
	if !d.before(9) {
		d.fsInto(dst, what)
		return
	}
	d.fsInto(dst[:off+numLxV8], what)
}

// MarshalBinary returns a snapshot of the engine's whole state (models,
// pending buckets, feeds) — what the controller stores in etcd.
func (e *Engine) MarshalBinary() ([]byte, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	en := &enc{b: make([]byte, 0, 1<<20)}
	c := e.cfg
	en.i64(int64(c.Step))
	en.int(c.Window)
	en.int(c.Horizon)
	en.int(c.Hidden)
	en.strs(c.Covariates)
	en.bool(e.started)
	en.i64(e.open)
	// Feeds.
	en.int(len(e.events))
	for _, ev := range e.events {
		en.time(ev.Start)
		en.time(ev.End)
		en.str(ev.Name)
		en.str(ev.Kind)
		en.str(ev.Region)
	}
	e.feeds.Covariates.mu.RLock()
	ckeys := make([]covKey, 0, len(e.feeds.Covariates.data))
	for k := range e.feeds.Covariates.data {
		ckeys = append(ckeys, k)
	}
	sort.Slice(ckeys, func(i, j int) bool {
		return ckeys[i].name < ckeys[j].name || (ckeys[i].name == ckeys[j].name && ckeys[i].region < ckeys[j].region)
	})
	en.int(len(ckeys))
	for _, k := range ckeys {
		s := e.feeds.Covariates.data[k]
		en.str(k.name)
		en.str(k.region)
		en.i64(s.first)
		en.fs(s.vals)
	}
	e.feeds.Covariates.mu.RUnlock()
	// Pending buckets.
	bs := make([]int64, 0, len(e.pending))
	for b := range e.pending {
		bs = append(bs, b)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i] < bs[j] })
	en.int(len(bs))
	for _, b := range bs {
		en.i64(b)
		p := e.pending[b]
		keys := sortedKeys(p)
		en.int(len(keys))
		for _, k := range keys {
			en.str(k.Resource)
			en.str(k.Region)
			en.f64(p[k])
		}
	}
	// Resources, in name order, each with its series in region order.
	names := make([]string, 0, len(e.res))
	for n := range e.res {
		names = append(names, n)
	}
	sort.Strings(names)
	en.int(len(names))
	for _, n := range names {
		rs := e.res[n]
		en.str(n)
		en.strs(rs.regions)
		for _, r := range rs.regions {
			s := e.series[SeriesKey{n, r}]
			en.i64(s.first)
			en.strs(s.m.cfg.Kinds)
			s.m.encode(en)
		}
		en.bool(rs.loc != nil)
		if rs.loc != nil {
			en.strs(rs.loc.cfg.Kinds)
			rs.loc.encode(en)
		}
	}
	payload := en.b
	out := make([]byte, 0, len(payload)+len(snapMagic)+16)
	out = append(out, snapMagic...)
	out = binary.LittleEndian.AppendUint32(out, snapVersion)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(payload)))
	out = append(out, payload...)
	out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(payload, castagnoli))
	e.met.snapshotBytes.Set(float64(len(out)))
	return out, nil
}

func sortedKeys(p map[SeriesKey]float64) []SeriesKey {
	keys := make([]SeriesKey, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].Resource < keys[j].Resource || (keys[i].Resource == keys[j].Resource && keys[i].Region < keys[j].Region)
	})
	return keys
}

// UnmarshalBinary replaces the engine's state with a snapshot taken by
// MarshalBinary from an engine of the same shape (step, window, horizon,
// hidden units, covariates). On any error the engine is left unchanged.
func (e *Engine) UnmarshalBinary(b []byte) error {
	hdr := len(snapMagic) + 4 + 8
	if len(b) < hdr+4 || string(b[:len(snapMagic)]) != snapMagic {
		return fmt.Errorf("%w: bad header", ErrCorruptSnapshot)
	}
	ver := binary.LittleEndian.Uint32(b[len(snapMagic):])
	if ver < snapMinVersion || ver > snapVersion {
		return fmt.Errorf("%w: %w: format version %d, this build reads versions %d to %d (the models' state changed shape; start from empty models)",
			ErrCorruptSnapshot, ErrSnapshotVersion, ver, snapMinVersion, snapVersion)
	}
	n := binary.LittleEndian.Uint64(b[len(snapMagic)+4:])
	if n != uint64(len(b)-hdr-4) {
		return fmt.Errorf("%w: payload length %d, have %d bytes", ErrCorruptSnapshot, n, len(b)-hdr-4)
	}
	payload := b[hdr : hdr+int(n)]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[hdr+int(n):]) {
		return fmt.Errorf("%w: checksum mismatch", ErrCorruptSnapshot)
	}
	d := &dec{b: payload, ver: ver}
	c := e.cfg
	step, window, horizon, hidden := time.Duration(d.i64()), d.int(), d.int(), d.int()
	covs := d.strs()
	if d.err != nil {
		return d.err
	}
	if step != c.Step || window != c.Window || horizon != c.Horizon || hidden != c.Hidden || !equalStrings(covs, c.Covariates) {
		return fmt.Errorf("%w: snapshot step %v window %d horizon %d hidden %d covariates %v; engine %v %d %d %d %v",
			ErrSnapshotMismatch, step, window, horizon, hidden, covs, c.Step, c.Window, c.Horizon, c.Hidden, c.Covariates)
	}
	// Build the new state on the side; swap it in only if all of it reads.
	ne := &Engine{cfg: c, met: e.met, pending: map[int64]map[SeriesKey]float64{}, series: map[SeriesKey]*seriesState{},
		res: map[string]*resourceState{}}
	ne.started = d.bool()
	ne.open = d.i64()
	nev := d.n(8)
	events := make([]Event, 0, nev)
	for i := 0; i < nev && d.err == nil; i++ {
		events = append(events, Event{Start: d.time(), End: d.time(), Name: d.str(), Kind: d.str(), Region: d.str()})
	}
	if d.err != nil {
		return d.err
	}
	cal, err := NewCalendar(events)
	if err != nil {
		return fmt.Errorf("%w: events: %v", ErrCorruptSnapshot, err)
	}
	ne.events = cal.Events()
	ne.feeds = &Feeds{Calendar: cal, Covariates: NewCovariates(c.Step)}
	ncov := d.n(8)
	for i := 0; i < ncov && d.err == nil; i++ {
		k := covKey{d.str(), d.str()}
		s := &covSeries{first: d.i64(), vals: d.fs()}
		if len(s.vals) > maxCovSpan {
			d.fail("covariate span")
		}
		ne.feeds.Covariates.data[k] = s
	}
	nb := d.n(8)
	for i := 0; i < nb && d.err == nil; i++ {
		b := d.i64()
		np := d.n(24)
		p := make(map[SeriesKey]float64, np)
		for j := 0; j < np && d.err == nil; j++ {
			k := SeriesKey{d.str(), d.str()}
			p[k] = d.f64()
		}
		ne.pending[b] = p
	}
	nr := d.n(8)
	for i := 0; i < nr && d.err == nil; i++ {
		name := d.str()
		regions := d.strs()
		rs := &resourceState{regions: regions}
		ne.res[name] = rs
		for _, r := range regions {
			if d.err != nil {
				break
			}
			k := SeriesKey{name, r}
			if _, dup := ne.series[k]; dup {
				d.fail("duplicate series")
				break
			}
			first := d.i64()
			hc := ne.hybridConfig(r, seedOf(name+"\x00"+r))
			hc.Kinds = d.strs()
			if d.err != nil {
				break
			}
			m, err := NewHybrid(hc, ne.feeds)
			if err != nil {
				d.fail(err.Error())
				break
			}
			m.decode(d)
			ne.series[k] = &seriesState{m: m, first: first}
		}
		if d.bool() {
			kinds := d.strs()
			rs.loc = decodeLocation(d, LocationConfig{Step: c.Step, Horizons: ne.locHorizons(), Covariates: c.Covariates, Kinds: kinds}, ne.feeds)
			if rs.loc != nil && !equalStrings(rs.loc.cfg.Regions, regions) {
				d.fail("location model regions")
			}
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err != nil {
		return d.err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.feeds, e.events, e.started, e.open = ne.feeds, ne.events, ne.started, ne.open
	e.pending, e.series, e.res = ne.pending, ne.series, ne.res
	e.met.series.Set(float64(len(e.series)))
	e.met.resources.Set(float64(len(e.res)))
	return nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Snapshot writes MarshalBinary's bytes to w.
func (e *Engine) Snapshot(w io.Writer) error {
	b, err := e.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Restore reads a snapshot from r (see UnmarshalBinary).
func (e *Engine) Restore(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), maxSnapshot+1))
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	if len(b) > maxSnapshot {
		return fmt.Errorf("%w: larger than %d bytes", ErrCorruptSnapshot, maxSnapshot)
	}
	return e.UnmarshalBinary(b)
}

// SaveFile writes a snapshot to path atomically: a temporary file in the
// same directory, fsync, rename, fsync of the directory. A crash leaves
// either the old snapshot or the new one.
func (e *Engine) SaveFile(path string) error {
	b, err := e.MarshalBinary()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, 0o600, b); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	return nil
}

// LoadFile restores the engine from a snapshot file written by SaveFile.
func (e *Engine) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	defer f.Close()
	return e.Restore(f)
}

// encode writes the carry's state (its shape comes from the configuration).
func (k *carry) encode(e *enc) {
	e.i64(k.at)
	e.int(k.bin)
	e.f32s(k.c)
	for _, b := range k.bet {
		e.int(int(b))
	}
	e.fs(k.loss)
	e.fs(k.n)
	encodeEvidence(e, k.ev)
}

// encodeEvidence writes bets' evidence (the shift gate's, the carry's).
func encodeEvidence(e *enc, ev []gateEvidence) {
	for _, g := range ev {
		e.f64(g.adv)
		e.f64(g.n)
		e.f64(g.lost)
	}
}

// decodeEvidence reads what encodeEvidence wrote into ev: a finite
// advantage, a finite non-negative count and at most that many lost.
func decodeEvidence(d *dec, ev []gateEvidence, what string) {
	for i := range ev {
		g := &ev[i]
		g.adv, g.n, g.lost = d.f64(), d.f64(), d.f64()
		d.inRange([]float64{g.adv}, -math.MaxFloat64, math.MaxFloat64, what)
		if !(g.n >= 0 && g.n <= math.MaxFloat64 && g.lost >= 0 && g.lost <= g.n) {
			d.fail(fmt.Sprintf("%s: %v bets lost of %v", what, g.lost, g.n))
		}
	}
}

// decode reads what encode wrote: sizes must match, losses and counts be
// finite and non-negative, the evidence as the gate's.
func (k *carry) decode(d *dec) {
	if k.at = d.i64(); k.at < 0 {
		d.fail(fmt.Sprintf("carry: origin %d", k.at))
	}
	if k.bin = d.int(); k.bin < 0 || k.bin >= gateBins {
		d.fail(fmt.Sprintf("carry: size bin %d outside [0, %d)", k.bin, gateBins))
	}
	d.f32sInto(k.c, "carry's combination forecasts")
	for i := range k.bet {
		b := d.int()
		if b < -1 || b >= gateBins {
			d.fail(fmt.Sprintf("carry: pending size bin %d outside [-1, %d)", b, gateBins))
			return
		}
		k.bet[i] = int8(b)
	}
	d.fsInto(k.loss, "carry's losses")
	d.fsInto(k.n, "carry's loss counts")
	d.inRange(k.loss, 0, math.MaxFloat64, "carry's losses")
	d.inRange(k.n, 0, math.MaxFloat64, "carry's loss counts")
	decodeEvidence(d, k.ev, "carry's evidence")
}
