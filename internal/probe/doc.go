// Package probe measures the network path from an edge to each mirror and
// turns the raw samples into the estimates the routing policy ranks mirrors by.
//
// The pieces, in the order a sample flows through them:
//
//   - Probers (TCPProber, UDPProber) time one probe: a TCP handshake
//     (SYN → SYN-ACK, the cost a new client connection pays) or one UDP echo,
//     answered on mirror hosts by the decap XDP program (bpf/decap.bpf.c,
//     so a host answers while its agent restarts) and, over its reply
//     budget or where it is not attached, by a Responder the agent runs. Both take
//     a dial or listen function so the agent can open sockets inside a
//     network namespace.
//   - Scheduler probes every target on its own timer, every Interval (2 s by
//     default) with a random jitter so probes from many edges never
//     synchronize, and hands each Result to a callback. Targets marked
//     active (carrying the edge's traffic) are probed every Active
//     interval, targets marked surveyed (outside the edge's shortlist of
//     nearest mirrors) every Survey interval.
//   - Estimator, one per (edge, mirror), filters the samples: a median of the
//     last three successful samples discards single outliers; a peak-EWMA
//     (Finagle's) of the filtered value rises at once on a slow sample and
//     decays with a time constant; a windowed minimum keeps the propagation
//     floor; loss and jitter are tracked over a recent window; health goes
//     Down after Fall consecutive failures and Up after Rise consecutive
//     successes. Table holds the estimators of one agent behind a lock.
//   - Coords keeps Vivaldi network coordinates (hashicorp/serf/coordinate)
//     for every node from the same samples; controller route-eval uses them
//     to shortlist the 3–5 nearest mirrors per client. The live agent
//     shortlists by its own measured RTTs instead (it measures every mirror
//     at least once per survey interval, so it needs no coordinates).
//
// Estimators are driven by the sample timestamps, never by the wall clock, so
// a replay (controller route-eval) and the live agent run the same code.
package probe
