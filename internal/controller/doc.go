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
package controller
