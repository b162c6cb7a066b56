// Package route is the access-router policy: from probe estimates, mirror
// load, health and sync state it computes, per (resource, client region),
// the slot quotas of the data plane's consistent table (internal/chash).
//
// One evaluation (Engine.Step) is a pure, deterministic function of the
// previous State and the Input, so the controller can replay it and tests
// never sleep. For each route:
//
//  1. Candidates are the resource's in-sync replicas with a probed path
//     from the region. Cost per request, in ms:
//     RTT × round trips + ServiceTime·ρ/(1−ρ) + bytes/bandwidth
//     + hops·HopCost + loss·round trips·LossPenalty (+ JitterWeight·jitter).
//  2. Target: the cheapest healthy candidate, sharing weight by softmin
//     with candidates within TieBand (10%) of it; quantized with
//     chash.Quotas. In panic (fewer than half the candidates healthy) the
//     target spreads over all candidates, as Envoy does, rather than
//     emptying the region.
//  3. Failures bypass damping: slots on a mirror that is down, out of sync
//     or gone move at once to the target; other slots stay put.
//  4. Otherwise the table changes only when the target is cheaper than the
//     current table by MinGain (10%) and MinGainAbs (5 ms) for Confirm (3)
//     consecutive evaluations, and the route has not switched within its
//     dwell (60 s, doubled per further switch in FlapWindow). The current
//     table is judged by min(peak-EWMA, latest median-of-3), so each of the
//     Confirm evaluations needs fresh evidence; the challenger by its
//     peak-EWMA. An accepted target is approached by at most MaxMove (10%)
//     of the slots per evaluation, and a new or recovered mirror's share
//     ramps up over SlowStart.
//  5. Capacity: the projected load (demand × shares) of a mirror above
//     CapacityCap (0.8) of its capacity spills, from the routes that lose
//     least, to their next candidate with headroom. A route does not start
//     moving towards a mirror the previous evaluation left at its cap
//     (ModeCapped), so damping and spill-over never fight.
//
// Routes in the same situation (same candidate set, profile, region and
// previous state) are computed once and share their state, weights map and
// explanation; that is what keeps 4096 resources × 64 regions × 32 mirrors
// within a few tens of milliseconds.
//
// Moved counts are chash.IdealMoves of the quotas, which is exactly what
// chash.Build moves, so the share reported before a commit is the share the
// data plane will move.
package route
