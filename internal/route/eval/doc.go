// Package eval replays real latency matrices against the routing policy
// (controller route-eval): mirrors are placed at chosen sites (k-medoids by
// default), every site is a client region, probes with realistic noise feed
// internal/probe's estimators, internal/route computes the tables, and
// sessions hash into internal/chash tables as they would in the data plane.
// Latency is scored against the true instantaneous RTT, for the policy and
// for origin-only, geography-nearest, round robin, greedy without damping
// and the per-instant oracle.
//
// Readers: the generic pairs CSV (src,dst,rtt_ms[,time]), WonderProxy
// grouped pings with their servers file, and the IBM weekly inter-region
// file; each rejects malformed input with the line and column.
package eval
