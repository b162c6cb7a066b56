// Package agent is the edge agent (cmd/edge-agent): it loads, pins and
// attaches the XDP router and decap programs, keeps their maps equal to
// the desired state (from its config file or, with a controller, from the
// versions the controller streams, ACKed or NACKed), probes mirrors,
// reports access counts, probe estimates, node load and mirror health,
// serves metrics and health, and runs the node's replicator with its
// local volume write socket.
//
// # Next-hop cache invalidation
//
// The router caches its FIB lookups per mirror (maps.Router.SetNextHopTTL,
// config nexthop_cache_ttl, default maps.DefaultNextHopTTL). While Run
// runs, a watcher subscribes to route, neighbour and link changes in the
// namespace Start ran in and bumps the cache's generation
// (BumpNextHopGeneration) at most 50 ms after any change that can alter a
// lookup's answer: every route and link event, and neighbour events that
// change a MAC or the neighbour's validity (state churn among the valid
// states is ignored). A lost subscription (socket overrun) bumps at once
// and resubscribes with backoff. Bumps are counted in
// edge_nexthop_generation_bumps_total; cache hits and lookups, read from
// the map at scrape time, in edge_nexthop_cache_{hits,lookups}_total.
//
// # Replication tasks and sync reports
//
// The controller places copies of a resource with the desired state's
// replication tasks. The node holding the resource's primary volume (the
// task's source node) replicates the volume of the resource's name to
// each target node, a peer in replication.peers: for each of its primary
// volumes the agent sets the replicator's dynamic mirrors to exactly the
// tasks' targets (replicator.Node.SetDynamicMirrors), every
// replication.task_interval (default DefaultTaskInterval). A task that
// disappears retires its copy: the replication stops and the target keeps
// its data, which a later task catches up with a delta. Mirrors in the
// config file are never touched. Tasks a node cannot carry out (no such
// volume, not a primary, unknown peer) are logged once per version and
// counted in edge_replication_task_errors_total; they never
// NACK the version, whose routing applies regardless.
//
// A task with a deadline (when the copy should be in sync) starts when
// ChooseStart says: the earliest of now and the window boundaries of the
// target peer's schedule that sends the fewest bytes below the
// schedule's highest rate and still finishes by the deadline (unlimited
// windows at replication.peers[].link_rate, default DefaultLinkRate); at
// once when none does. The link's rate is capped by what the replicator
// measured it delivering while backlogged (replicator.Node.LinkRates),
// when measured within MeasuredRateMaxAge and not merely the schedule's
// own rate: under delay control or on a slow path a link carries far
// less than configured, and a plan at the configured rate would start
// too late ("replication task planned at measured link rate" is logged).
// Until then the task is held (its mirror is not set); a timer applies
// the tasks again at the start and every minute before it, and every
// version and config reload plans again. Decisions are logged ("replication task
// held" / "started") and exported as edge_replication_tasks{state} and
// edge_replication_task_next_start_timestamp_seconds. Primaries report
// their change-tracking backlog per peer (ReplicaBacklog), which the
// controller uses to cost a delta copy.
//
// A mirror host reports, with the health of each mirror it speaks for
// (those whose address it decapsulates), a ReplicaSync per volume it
// holds as a mirror: in sync once the copy is complete, and its lag. The
// controller routes to a placed copy only when it is in sync within the
// resource's max_lag. A host that decapsulates no mirror's address speaks
// for none, so its copies cannot be attributed and go unreported.
package agent
