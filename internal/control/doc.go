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
