// Package forecast is premirror's prediction engine: it turns the edge
// agents' access summaries (new flows per resource × client region per
// interval, read from the XDP counters) and external feeds (an events
// calendar, numeric covariates such as weather) into
//
//   - a demand forecast per (resource, region): 10/50/90% quantiles for
//     each of the next Horizon buckets;
//   - the distribution of a resource's requests over access locations
//     (client regions) for each future bucket, with the Dirichlet
//     concentration behind it;
//   - the Mirroring Score of placing a copy of the resource at a candidate
//     location: P(benefit > cost) under the predictive distribution, with
//     benefit = predicted requests × latency saved × value of a second and
//     cost = bytes copied × copy price + bytes stored × hours × storage
//     price; and a breakdown an operator can read (Explain).
//
// # Controller API
//
// The controller owns one Engine (all methods are safe for concurrent use):
//
//	eng, err := forecast.NewEngine(forecast.EngineConfig{
//		Step: time.Hour, Window: 672, Horizon: 24,   // defaults
//		Covariates: []string{"temp_f", "precip_mm"}, // feeds the models use
//		Registerer: prometheus.DefaultRegisterer,
//	})
//	eng.LoadFile(path) or eng.UnmarshalBinary(bytesFromEtcd) // after a restart
//	eng.SetEvents(events) / eng.ReadEventsCSV(r)          // events calendar
//	eng.SetCovariate(name, region, t, v) / ReadCovariatesCSV(r) // numeric feeds; a
//	                                           // future t holds the feed's forecast
//	eng.Ingest([]forecast.AccessSummary{...})  // from the agents' gRPC streams
//	eng.Advance(now)                           // closes ended buckets: every model
//	                                           // updates and re-forecasts (parallel)
//	f, _ := eng.Forecast(resource)             // per-region quantiles + location shares
//	s, _ := eng.Score(resource, req)           // Mirroring Score per candidate
//	txt, _ := eng.Explain(resource, req)       // what `controller explain` prints
//	blob, _ := eng.MarshalBinary()             // to etcd; or eng.SaveFile(path)
//
// Ingest validates a whole batch before applying any of it (ErrBadInput);
// summaries for a bucket already closed are dropped and counted (ErrLate,
// the rest applied); more than 48 buckets ahead is ErrFuture. A bucket for
// which no summary arrived at all is unknown (controller or agents away)
// and is skipped, not learnt as zero demand; once any summary for a bucket
// came, a series without one had no accesses. After an absence longer than
// the window, Advance jumps the models over it at once. Snapshots are a
// versioned, length-prefixed binary format with a CRC-32C; a corrupt one
// (ErrCorruptSnapshot), one of another format version (ErrSnapshotVersion,
// which also wraps ErrCorruptSnapshot: version 2 added the forecast
// combination, 3 the yearly memory, 4 the recent interval scale, 5 the
// Holt-Winters expert, ..., 9 the location model's pooled persistence
// experts; the previous version is read and converted, so an upgraded
// controller keeps what its models learnt; older snapshots are refused,
// not misread, and the controller's models start afresh) or one of a
// differently shaped engine (ErrSnapshotMismatch) changes nothing. A model that fails on its input
// is logged and restarted without holding up the bucket. Metrics:
// premirror_forecast_* (series, resources, buckets closed, summaries by
// outcome, bucket update seconds, snapshot bytes, model restarts).
//
// Offline tools (cmd/controller forecast backtest|locations|explain) use
// LoadSeries, Backtest, LocationBenchmark and RenderExplain directly.
//
// # Demand model (Hybrid)
//
// One Hybrid per series, updated once per bucket in O(P² + BPTT·H²):
//
//  1. Long term, Bayesian regression with a conjugate normal-inverse-gamma
//     prior (BLR) on a sliding window of W buckets (the protocol's training
//     window, four weeks by default): intercept, trend, daily Fourier terms
//     (up to 8 harmonics), day-of-week offsets and Saturday/Sunday daily
//     profiles (when the window holds two weeks). Its sufficient statistics
//     slide exactly (add the new bucket, remove the oldest) and are rebuilt
//     from the window every W/2 buckets. Each feature group's prior
//     variance is chosen from a grid by maximising the model evidence
//     (empirical Bayes, once a day), so how much seasonal detail to trust
//     is decided by the data in the window, not by constants fitted to any
//     data set. Observations enter with a Huber weight computed from the
//     final one-step error (a spike barely moves the regression; a level
//     shift is followed by the combination within a bucket or two and then
//     gets full weight). The trend fits the window but is not extrapolated:
//     forecasts hold the level reached at the origin (the M-competitions'
//     lesson about trends, here a damped trend with no memory: carrying a
//     28-point daily window's slope 12 days on, the regression alone had
//     MASE 1.88 at h12 on the daily dev series, 1.49 without). How much of
//     the window's slope to believe is learnt instead, per horizon, by the
//     stacker (below).
//  2. Short term, what the regression leaves (ES-RNN's lesson from the M4
//     hourly data: a plain RNN lost to seasonal naive, exponential
//     smoothing plus an LSTM on the normalised remainder won): exponentially
//     smoothed levels of the residuals (α 0.5, 0.2, 0.05), and a GRU
//     (12 hidden units, ~1k parameters, written on gonum's BLAS with
//     gradient checks in the tests) fed the residuals over their robust
//     scale and the time of day, trained online by truncated BPTT over the
//     last day with Adam (a step every other bucket), predicting the
//     regression's error at every horizon directly (multi-output, no
//     feedback of its own forecasts).
//  3. A stacker per horizon (exponentially weighted, Huber-weighted ridge
//     regression with a memory of one window, and of at least 20
//     observations per input weight — the usual rule for a regression;
//     a daily series' window holds 28) combines: the regression's
//     forecast, the residual levels, the GRU, the residuals a day and a
//     week before the target and averaged over the weeks in the window, the
//     window's raw hour-of-week mean, and the relative level of the last day
//     and quarter day times the regression's forecast (multiplicative: a
//     quiet day is quiet at every hour, in proportion — this term alone
//     took NYC taxi's MASE at 12 h from 0.59 to 0.53), plus, per covariate,
//     its standardised value times the regression's forecast; the
//     regression at the window's middle minus at the origin (a damped
//     trend, its damping learnt online); and, from a yearly memory of
//     daily means over two years (yearly.go, about 3 KB per series), the
//     change of level between the origin's and the target's days 52 weeks
//     before (averaged over the years known) and how the target's day
//     stood out from its fortnight then — Prophet's yearly season without
//     keeping a year of buckets, zero until a year has been seen. These weights
//     are "learnt from recent accuracy per horizon", and they fall back to
//     the regression alone while the data give no reason to move.
//  4. Events: a conjugate normal model per (event kind, horizon, quarter of
//     the day) of the relative effect y/base − 1 with prior N(0, 0.3²) and
//     no forgetting, so Thanksgiving teaches Christmas; a day of an event
//     weighs like one observation (its hours are not independent). The
//     sliding window could not learn these: holidays are further apart than
//     four weeks. Treating holidays as Sundays in the regression was tried
//     and cost accuracy on the Uber file (whose holiday flag also marks
//     working days), so it is off (sundayHolidays).
//  5. Quantiles: per horizon, an online estimate of the mean absolute error
//     and stochastic-approximation trackers of its 10/50/90% quantiles
//     (conformal-style, as in adaptive conformal inference: the long-run
//     share of errors below each tracked quantile converges to its level
//     whatever the error distribution); the hybrid's own point forecast is
//     the tracked median (MASE is an absolute error).
//  6. Combination (pool.go; M4's other lesson: combinations beat single
//     methods). Per horizon, the hybrid's median is combined with its
//     regression alone, the regression with the origin's residual carried
//     undamped (beyond one step: a random-walk-like gauge's level stays
//     where the stacker, trained on decaying residuals, would pull it
//     back), and simple experts: naive, the value a day and a
//     week before the target, the medians of the values at the target's
//     time of day over the last week and at its time of week over the
//     window's weeks (seasonal naive that one spike cannot move; from a
//     window of three days and three weeks), the median of the last 3
//     values (a level one spike cannot move) and of the last season, an
//     online robust Holt-Winters (additive damped ETS with fixed
//     smoothing, one-step errors clipped at 3 robust scales; per-bucket
//     seasonal states draw a nightly job's one-hour burst, and its level
//     follows shifts the window regression holds on to), the same filter
//     with its smoothing parameters fitted to the window once a week
//     (the ETS baseline's least-squares fit, from a coarse grid that
//     includes seasonal gains near 1 − α and a short Nelder-Mead; each
//     series at its own bucket of the week, asleep
//     until two seasons are known and its bucket of the day comes: on
//     smooth hourly series a fitted ETS is the best one-step rule there
//     is, and on M4's 414 hourly series the hybrid was worse than the best
//     baseline at one step on 157 of them, 92 with this expert; between
//     fits, over a window of two weeks or more, its states are those of
//     the fitted filter re-run over the window, as the ETS baseline's at
//     every origin, and its parameters are polished daily: 51; with the
//     large seasonal gains in the grid: 46), and the
//     hybrid re-anchored
//     by its last one-step error when that error was a surprise (beyond 4
//     robust scales: a spike or a level shift; this expert bets on the
//     shift, and its weight learns from the series which bet pays); and,
//     once a year has been seen (on series whose horizon spans a week or
//     more), Holt-Winters and the regression each plus
//     the yearly memory's change of level from the origin's day to the
//     target's day (Prophet's yearly season given to the experts that
//     carry today's level forward: Peyton Manning's page views at 12 days
//     0.916 → 0.897 of the best baseline). Until then they sleep (Freund,
//     Schapire, Singer and Warmuth's sleeping experts): left out of the
//     combination, their weight unchanged, so a series shorter than a
//     year is combined exactly as without them. For
//     integer series whose model mean is below 20 the model experts give
//     the median of a Poisson count with that mean instead (for counts of
//     a few per bucket the count median, not a shifted mean, minimises the
//     absolute error). Weights: exponentially weighted averaging with
//     fixed share (Herbster and Warmuth) on absolute losses over a robust
//     error scale (errors clipped at 4× it, so a spike does not make every
//     later difference look small; one loss is clipped at 20 scales): each
//     bucket multiplies an expert's weight by e^(−η·loss) and returns a
//     share 1/W of the weight to all (1/W·h^−1.5 at horizon h, slowed
//     with the rate below, so the balance between what losses take and
//     the share gives back is the same at every horizon), so an expert
//     that was bad for weeks takes over within a bucket or two after a
//     level shift. Four learning
//     rates η = 0.1, 0.4, 1.6, 6.4 (divided by h^1.5 at horizon h: its
//     losses arrive h−1 buckets late and consecutive origins share h−1
//     targets, so a fast rate chases regimes it learns of too late) give
//     four sets of weights, and each set two combinations: the weighted
//     mean of the experts and their weighted median (the aggregate that
//     minimises absolute error: the mean of a burst half the weight
//     expects is a level no bucket has; held out, 12-step ratio to the
//     best baseline 0.852 → 0.838, BENCHMARKS round 9). These eight and
//     the hybrid alone are combined again by fixed share with the rate
//     set by AdaHedge (ln N over the discounted mixability gap, capped at
//     8·h^−1.5), so how fast to follow, whether to average or take the
//     median, and whether to combine at all, is learnt per series and
//     horizon. The final forecast is that combination (integer
//     for counts); its 80% interval comes from its own tracked 10/90%
//     error quantiles (adaptive conformal trackers judging each error by
//     the bounds issued at its origin, stepping 0.15/h^0.2: fast where an
//     error is known at once, slower where it arrives h−1 buckets late;
//     targets inside a calendar event have trackers and an error scale
//     of their own, round 14), in units of its mean absolute error capped at 1.5×
//     the mean over the last ~8 buckets (a spike or the turbulent days
//     before a level shift widen the intervals while they are recent, not
//     for the 64-bucket memory of the scale: NAB network_in's coverage
//     0.99 → 0.875, pinball −30%, no other dev series moved by more than
//     0.025 in coverage or got a worse pinball loss). A target inside an
//     event that has not begun at the origin teaches the weights nothing:
//     the hybrid's learnt event effect is knowledge the other experts lack
//     and recent accuracy cannot weigh (with the plain combination there,
//     the taxi's event days lost the calendar's benefit); it is forecast
//     by the combination of experts that all carry that effect (each
//     scaled by the hybrid's relative event effect), with the event
//     targets' interval (taxi event days MASE h1 / h12 0.512 / 1.374
//     with the hybrid alone → 0.507 / 1.366).
//  7. Shift gate (Hybrid.shiftGate). Right after a surprise the
//     combination still weighs the experts that were right before it,
//     so after the first level shift in weeks it follows the new level
//     over a few buckets: NAB rds_cpu's jump from 6 to 14.6 cost the
//     one-step forecast after it 48 error scales, a third of the series'
//     MASE. The gate bets that the surprise's level persists (the
//     one-step forecast is the last value) unless its evidence says
//     otherwise: after each surprise it scores both forecasts and keeps
//     the bet's discounted advantage in absolute error (a memory of about
//     thirty surprises) per surprise size (bins of 4–8, 8–16, … scales),
//     with how often it lost, and it bets unless the evidence of
//     surprises at least a quarter as large says the bet loses in total or
//     more often than it wins. A spiky series' first spikes teach it to
//     keep out; a series that shifts once has nothing to teach it, and the
//     bet pays (held out: one-step ratio to the best baseline 0.912 →
//     0.889; BENCHMARKS round 8). The gate itself decides one step
//     ahead (per horizon, the same gate moved no twelve-step figure held
//     out); the longer horizons share its bets by a carry
//     (Hybrid.carryShift): their weights hear of a new level h−1 buckets
//     late and learn slowly, so after a drop a random-walk-like gauge's
//     twelve-step forecast kept the old level for about twelve origins
//     (NAB grok_asg: 26% behind naive at twelve steps). For h−1 origins
//     after a bet on a shift, horizon h forecasts the last value where
//     the last value's discounted h-step loss has been at most 1.5 times
//     the combination's over at least two seasons (a series whose last
//     value is its level), the carry moves the forecast by more than the
//     combination's error scale, and the carries considered after
//     surprises of that size have not lost by the gate's rule. Held out,
//     the hybrid was behind the best baseline at twelve steps on 4 of 46
//     NAB series (by 13–26% on three), now on 1, by 2% (BENCHMARKS
//     round 17).
//  8. One wild bucket, and any unit. A bucket far off the forecast (a
//     counter reset read as a delta: 10⁹ on a series of level 10) is
//     down-weighted in the regression by its Huber weight, and enters
//     everything else bounded too: its residual is stored times that
//     weight (Huber's ψ; the stacker's residual features, the smoothed
//     residuals and the GRU read it), the level features read the value
//     the robust fit saw (Hybrid.clean), the window's spread weighs it by
//     the weight squared, each expert enters the weighted means at most
//     20 error scales from their weighted median (a seasonal naive
//     replaying it a day later), and an error beyond 1000 times the
//     error scale it updates is clipped there (clipErr). After such a
//     bucket every point forecast is what it is without it, but for the
//     one bet of the shift gate and its carry, and the intervals are back within twice
//     their width in 56 buckets (TestOneWildBucketDoesNotLinger); held
//     out, the same changes took the one-step ratio to the best baseline
//     0.886 → 0.871 (BENCHMARKS round 10). Every floor is relative, so a
//     series in other units forecasts the same, to the bit
//     (TestBacktestScaleFree); the backtest runs a series beyond 2^±64
//     in units of a power of two (float32 expert storage, sums of
//     squares).
//
// Every constant above is a rule stated once (window, Huber threshold,
// ridge, prior scales from evidence, α grid, step sizes, the combination's
// clips, rate grid and share); none was tuned per series. What was tried
// and dropped, with the measurement: a log transform (worse on every Uber
// borough at 12 h: the night hours dominate a log-space fit while MASE is
// dominated by the day), Sunday-mapped holidays (above), unscaled
// covariate inputs (the ridge meant nothing). For the combination (MASE
// ratios to the best baseline on the dev series, docs/BENCHMARKS.md): ETS
// as an expert (averaging the hybrid with the ETS baseline was worse on
// every Uber borough, e.g. Brooklyn h12 0.86 → 2.4, and re-fitting it per
// bucket would cost more than the whole model); Croston/TSB (the mean
// demand rate is not what an absolute error rewards: added to the pool it
// raised the intermittent disk_write trace's h1 MASE from 1.00 to 1.01 —
// the season's median, zero, is the expert that fits); weights from discounted cumulative
// losses with the candidate picked by the lowest loss (as accurate on the
// dev series but slow to switch: a synthetic level shift was followed by
// the stacker's levels, four buckets, not by the combination, one);
// exponentiated-gradient weights on the absolute loss (worse at h12 on
// the Uber boroughs); AdaHedge for the experts' rate instead of the grid
// (worse on network_in); a prior favouring the hybrid alone (no gain).
//
// # Access-location model (LocationModel)
//
// A Bayesian network P(region | hour of week, day type, events, weather)
// with Dirichlet posteriors whose counts decay (hour-of-week tables with
// weekly forgetting 0.3, 0.6, 0.8, 0.95; an hour-of-day × weekday/weekend
// table), plus short-term experts (last bucket's shares, alone and pooled
// with the long-run shares by a quarter and by one mean bucket's worth of
// requests; recent shares; the hour-of-week shares shifted by the last
// day's deviation from them) and the long-run shares. Per horizon a
// log-linear stacker (multinomial logistic regression on the experts'
// log-probabilities with per-region biases and per-region weather/event
// terms, AdaGrad on the cross-entropy per request) and a mixture of that
// stacker with every expert, whose weights follow their log loss
// (AdaHedge with a fixed share). The mixture makes it robust where the
// stacker is noisy (24 h ahead). The engine makes each resource's
// forecasts once per closed bucket, in its workers, and every reader
// copies them (LocationModel.Precompute).
//
// # Mirroring Score
//
// Score draws each region's total demand over the horizon from the
// per-bucket quantiles (a split normal through q10/q50/q90, floored at
// zero), comonotone across the buckets of one region (a busy day is busy
// all day; this also makes the horizon's quantiles the sums of the
// buckets') and independent across regions; all candidates share the
// draws (stratified, seeded by the resource name, so scores are
// reproducible and comparable).
//
// # Backtest protocol
//
// Rolling origin: every bucket with a full training window before it and H
// after it is an origin; baselines (naive, daily and weekly seasonal naive,
// ETS(A,Ad,A) with a daily season re-fitted by maximum likelihood at every
// origin) see only the window; MASE at an origin is scaled by the mean
// absolute daily-seasonal-naive error inside that origin's window. When a
// series is too short for a four-week window and 168 origins, the window
// shrinks to leave 168 origins (reported; the NAB files hold two weeks).
//
// # Inputs the protocol meets in the wild
//
// ReadTable/LoadSeries take any row order, a UTF-8 byte-order mark, CRLF,
// quoted fields, comma, semicolon or tab separators (from the first
// line), zoneless times (UTC wall clock), times with offsets (instants),
// dates, Unix times. Decisions, each logged when it changes data:
//
//   - Bucket length: the median gap between distinct timestamps, rounded
//     to the nearest length dividing a day within 5% (jittered or
//     irregular sampling), not the smallest gap (one off-grid row halved
//     an hourly series' step and filled every other bucket; a jittered
//     5-minute series became a 297 s one). Several samples in one bucket
//     combine by the aggregation (logged).
//   - Repeated rows (same time, location, value, covariates) are dropped
//     (overlapping exports); same time and location with another value is
//     another sample of that bucket (Table.DropDuplicates). Under sum
//     aggregation a bucket with more samples than native steps (NAB's
//     02:00 hour relabelled 03:00 on the spring-forward day) is the mean
//     times that number, not a doubled count. SeriesOptions.KeepRepeats
//     (--keep-repeats) is for event logs: every row counts.
//   - Gaps of any length are filled by interpolation for the models'
//     inputs but unobserved: never scored, and never an origin (the filled
//     value at an origin inside a gap is drawn towards the value after the
//     gap, which a forecast from there must not see). Methods that can
//     tell a gap from data (gapAware) learn nothing from it: the hybrid
//     takes a gap up to a day long as an estimate for its state (fill:
//     no error scale, tracker, weight or GRU step) and skips a longer one
//     (Skip, as the controller does a bucket with no report), the seasonal
//     naive baselines count only error pairs observed at both ends. Fed as
//     data, the straight interpolated stretches had taught the error
//     scales errors of nearly zero (BENCHMARKS "round 18").
//   - A location counts as zero where others report, inside its own first
//     to last row (counts; with --agg mean, a gauge per host, a missing
//     row is a gap instead); outside them it is unobserved (a site added or retired,
//     not a site without demand), and the backtest trims those ends; a
//     location then too short for the protocol is skipped with a warning.
//   - MASE at an origin whose window has no seasonal-naive error (constant,
//     below 10⁻¹² of its level: round-off, or no observed pair) is undefined: the origin is
//     left out of MASE and pinball and counted (Result.ZeroScale); with none
//     left they are NaN, printed "-" and null in JSON. sMAPE counts a zero
//     forecast of a zero as no error. Just after a constant stretch the
//     scale is small and MASE large: that is MASE, not a failure.
//   - A text extra column is ignored; a numeric one is a covariate.
package forecast
