// Package controller is premirror's control plane: the controller
// replicas behind `controller run`.
//
// # State
//
// Everything lives in etcd under one prefix (see the key layout in
// store.go): the user's objects (sites, mirrors, resources) with stable
// numeric IDs that are never reused, the current desired state, the
// routing policy's memory, and per agent its registration, ACK state and
// latest report. By default `controller run` starts an embedded
// single-node etcd (mutual TLS with the controller's own CA); with
// --etcd-endpoints several replicas share an external cluster.
//
// # Replicas and the leader
//
// Every replica follows the prefix with one watch (view.go) and serves
// agent sessions and the admin API from it. One replica leads, chosen by
// an etcd election (leader.go); only the leader computes routes and
// writes the desired state, in a transaction fenced on its election key,
// so a deposed leader cannot write. Versions continue from what the
// previous leader committed. When the leader dies its lease expires
// (LeaseTTL, 3 s by default) and a follower takes over; the policy's
// damping state and the last path estimates are restored from etcd.
//
// # A tick
//
// Every TickInterval (1 s), and at once when an agent's health verdicts
// or the objects change, the leader turns the latest reports into the
// routing policy's input (compute.go: per region the median of its
// edges' probe estimates, mirror health and load from the mirror hosts,
// replica sync state, demand from access counts), calls
// internal/route's Engine.Step, and builds the desired state: regions,
// mirrors (a failed mirror is marked down so its flows are re-picked),
// resources with their VIPs, a wildcard route to each resource's origin
// and the policy's weights per region. A new version is written only when
// its content differs from the current one.
//
// # Agents
//
// Agents connect with mutual TLS; the node they register must be their
// certificate's common name (session.go). The serving replica sends every
// new version (encoded once per version and site), records each ACK or
// NACK and stores the agent's reports under its own lease, so a dead
// replica's agents stop counting until they reconnect elsewhere.
//
// # Forecasting
//
// The leader runs the prediction engine (internal/forecast) on the
// agents' access counts, wherever the agents are connected (access.go,
// forecaster.go). Its keys live under a sibling prefix,
// <prefix>-forecast/, so the replicas' watches of the main prefix never
// carry them.
//
//   - Access path. The replica serving an agent splits each report's new
//     flows over the engine's buckets (Config.Forecast.Engine.Step, 1 h by
//     default) by the report's interval (the agent's clock when it agrees
//     with the replica's within 30 s) and keeps, per session and bucket,
//     the running total per (resource, client region). It writes a
//     bucket's total under access/<bucket>/<node>/<replica>/<session>,
//     leased to expire Retention after the bucket, at most every
//     FlushInterval (1 min) and once more when the bucket is over: per
//     agent about step/FlushInterval + 1 writes per bucket, whatever the
//     report rate. Reports are not written individually.
//   - Exactly once from the agent. An agent numbers its reports (a run
//     per process, a sequence number per report) and keeps each one's new
//     flows until the replica confirms them written; a session's writes
//     are snapshots with the run's record, runs/<node>/<run> (the last
//     report they hold), in one transaction conditioned on the record
//     being the session's. A registering session takes the record over,
//     which fences every older session of the run (their later flushes,
//     final ones included, are refused), and the agent sends it the
//     reports above the record again. So a report lost in a broken
//     stream, or held by a replica that crashed or was fenced, is counted
//     once by the next session, and one an older session wrote is not
//     counted again (access.go lists the limits: the agent's bound, older
//     agents and controllers, late reports).
//   - Ingestion. Grace (5 s) after a bucket ended the leader reads its
//     keys, sums them per (resource, region) by name (IDs are never
//     reused; region 0 and deleted objects are counted and dropped),
//     ingests the sum and closes the bucket; a bucket without keys is
//     unknown to the engine, not zero demand. Each key is a cumulative
//     total read once, and the engine drops a bucket it already closed,
//     so a key's count reaches the engine exactly once (and, above, a
//     numbered agent's report reaches the keys exactly once; an older
//     agent's counts a crashed replica received since its last write are
//     lost). A key rewritten after its
//     bucket closed is reported when the checkpoint that deletes it
//     commits, from what that delete removed, so exactly once
//     (premirror_controller_access_aggregates_late_total).
//   - Checkpoints. After every close (and after a feed) the leader saves
//     the engine's snapshot, the recent-bucket history and the revision of
//     the last feed applied, deflated, in chunks of ValueBytes (1 MiB)
//     under snap/c/<generation>/, then a manifest (size, SHA-256, open
//     bucket) in a transaction fenced on its election key that also
//     deletes older chunks, the aggregates of closed buckets and the feeds
//     applied. A checkpoint larger than MaxSnapshotBytes (256 MiB, about
//     3,000 series) is not put in etcd; StateFile, when set, receives every
//     checkpoint and is restored when etcd took none after the one its
//     state descends from (and when etcd's is refused). etcd, not a
//     file, is the default home because it is the one store every replica
//     shares: a successor on another host needs the model. A new leader
//     restores the checkpoint, applies the feeds stored after it and
//     replays the aggregates of the buckets it does not cover (still in
//     etcd, as only a checkpoint deletes them): the model continues as if
//     the leader had never changed (tested bit for bit).
//   - Outputs. After every close the leader publishes each resource's
//     forecast (quantiles per region and horizon, location shares, recent
//     buckets observed against the forecast made one bucket before) under
//     out/<resource>. Any replica answers Admin.Forecast and Admin.Explain
//     from it: the Mirroring Score of every candidate site (a site with an
//     active mirror host and no copy of the resource, within
//     mirror_policy.sites) is P(benefit > cost), benefit = predicted
//     requests × route cost saved against the current table (the routing
//     policy's own cost of each (region, mirror) path on the current probe
//     estimates, weighted by the current weights) × ValuePerRequestSecond,
//     cost = size_bytes (working_set_bytes for a selective copy) ×
//     (CopyPerByte + StorePerByteHour × horizon).
//   - Placement. After publishing, the leader's mirroring manager
//     (placement.go) acts on those scores for resources in predictive
//     mode: it places and retires copies with hysteresis, records its
//     decisions under state/placements/<resource> (main prefix, fenced),
//     and the next route tick adds placed copies to the replicas (routable
//     once their host reports them in sync) and replication tasks to the
//     desired state. Each placement carries a deadline (deadline.go: the
//     start of the first forecast bucket whose median benefit at the site
//     reaches the horizon's mean), which the origin's agent plans the
//     transfer against, and the bytes it sends; a delta is costed by the
//     origin host's reported change-tracking backlog toward the target.
//   - Feeds. Admin.Feed parses an events calendar or covariates CSV as the
//     engine will (a bad file is refused naming its line and column, and
//     nothing is stored), then stores it under feeds/; the leader applies
//     feeds in store order within a tick, and checkpoints make them
//     durable.
package controller
