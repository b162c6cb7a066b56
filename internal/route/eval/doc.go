// Package eval replays real latency matrices against the routing policy
// (controller route-eval): mirrors are placed at chosen sites (k-medoids by
// default), every site is a client region, probes with realistic noise feed
// internal/probe's estimators, internal/route computes the tables, and
// sessions hash into internal/chash tables as they would in the data plane.
// Latency is scored against the true instantaneous RTT, for the policy and
// for origin-only, geography-nearest, round robin, greedy without damping
// and the per-instant oracle (the best mirror at each instant; the origin
// is not a candidate, so origin-only can beat it when the origin is nearer
// than every mirror).
//
// Readers: the generic pairs CSV (src,dst,rtt_ms[,time], header optional,
// common aliases accepted), WonderProxy grouped pings with their servers
// file, the IBM weekly inter-region file, and square (wide) matrices as
// clouds publish them (ReadSquare); each rejects malformed input
// with the line and column. A UTF-8 BOM and CRLF line ends are accepted;
// RTTs must be finite and in [0, 1e6] ms.
//
// How a matrix is interpreted, for matrices unlike the shared ones:
//
//   - Asymmetry: a client's path to a mirror is its own row (client →
//     mirror); the reverse measurement stands in only where that direction
//     is missing.
//   - Missing pairs: a pair measured in neither direction is unknown, not
//     far. That mirror is unavailable to that client under every policy,
//     the oracle included; a site with no RTT to the origin or to any
//     mirror is left out as a client. Placement counts an unknown pair as
//     1e6 ms, so mirrors go where they are measured. An unmeasured
//     self-pair is Options.SelfRTT.
//   - Time: a snapshot missing a pair holds the nearest snapshot's value.
//     Rows may come in any order; time values naming one instant ("60" and
//     "60.0", a date and its midnight) are one snapshot. Numeric times are
//     seconds and replay as such unless Options.Steps; dated snapshots
//     replay Options.Segment each. A replay longer than Options.MaxReplay
//     is refused (ErrTooLong), so a time column in another unit fails fast.
//   - Duplicates: repeated rows of the generic format for one pair and
//     snapshot are averaged. WonderProxy and IBM files have one row per
//     pair (and date) by construction, so a repeat there is an error.
//   - A file whose last line has no line ending may have been cut short
//     mid-value; that is noted, since the value still parses.
//
// Every such fill-in, merge or drop is listed in Matrix.Notes and
// Report.Notes. Too few sites (ErrTooFewSites), unknown site names
// (ErrUnknownSite, all of them named), more mirrors than sites, and a
// replay that scores no request (ErrNothingScored) are errors. A ratio to
// the oracle is 1 when both figures are equal and NaN (printed n/a, left
// out of the machine lines) when only the oracle's is 0.
package eval
