// Package control is the agent side of premirror's control protocol
// (api/premirror/v1, service AgentSession).
//
// A Client keeps one session open to one of several controller replicas:
// it connects with mutual TLS, registers the node, receives desired-state
// versions and hands each to the agent's Apply callback, whose error
// becomes a NACK with that text (nil: ACK). Between versions it sends a
// Report every interval the controller asks for, built from functions the
// agent supplies (access-count deltas, probe estimates, node and mirror
// health); ReportNow sends one at once, for a health change.
//
// Each report's access counts are counted once by the controller across
// broken streams, replica changes and replica crashes: the client numbers
// its reports (Register.run_id, chosen at random per Client, and
// Report.seq) and keeps each one's new flows until the controller
// confirms them written (ReportsDurable); on a new session it first sends
// again the reports above what the controller says earlier sessions
// wrote (Registered.durable). What it keeps is bounded
// (Config.MaxPendingReports, MaxPendingFlows): beyond that the oldest are
// dropped, logged and counted. A controller that confirms nothing (an
// older one, or one without forecasting) gets reports as before: a failed send's counts go with the
// next report, and nothing is sent twice.
//
// With Config.JournalFile the run also survives a restart of the agent
// (journal.go): each numbered report is written to the journal before it
// is sent (the run, the numbers given, the reports not confirmed, the
// counters' values it counted to), and a process started on it continues
// the run, sends those reports again and counts from those values, unless
// the controller answers its first registration (Register.check_baseline)
// that another agent ran on the node since the journal's last write: that
// one reported the growth since, and the agent counts from the counters'
// values at its start (Config.DropBaseline). Without one the reports kept
// live in memory: a restart loses those not yet confirmed.
//
// When the session breaks the client reconnects to the next endpoint with
// exponential backoff and jitter. The data plane keeps forwarding on the
// last applied version meanwhile: the client remembers it, does not
// re-apply it when the controller sends the same version again after a
// reconnect, and can persist it to a cache file so a restarting agent can
// program its maps before any controller answers.
//
// The package must not import internal/agent (the agent imports it); the
// conversion to agent.DesiredState is agent.StateFromProto.
package control
