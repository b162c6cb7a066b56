// Package replicator mirrors volumes (raw image files or block devices)
// between premirror nodes: full, delta and selective copies over mutual
// TLS, with change tracking, crash-safe atomic cycles, Merkle verify,
// bandwidth schedules, quorum writes/reads and epoch fencing. It runs
// inside edge-agent (see Node) and is driven by hand with
// `edge-agent replicate`.
//
// # Volumes and change tracking
//
// A Volume is an image with a fixed block size (4 KiB default) and
// metadata in IMAGE.pmr/: state.json (role, epoch, lineage, mirror
// progress; replaced atomically), versions (16 bytes per block), one dirty
// and one probe bitmap per downstream peer, the activity log, the cycle
// journal, the sync-write log and the conflict log.
//
// Block versions are (epoch, hybrid logical clock, site). The epoch comes
// first so a write made under a deposed primary's epoch always loses to
// the new primary's data; within an epoch the hybrid clock orders causally
// related writes across skewed hosts and the site breaks ties. Concurrent
// writes resolve the same way on every node, and the losing write is kept
// in the conflict log (block, both versions, the loser's bytes) rather than
// silently dropped.
//
// Dirty bitmaps (one bit per block per peer) are written lazily; DRBD's
// activity log makes that safe. Before a write touches a 4 MiB extent not
// already marked, the extent's bit is written and synced; Flush (every
// second) syncs the image, then the changed pages of versions and bitmaps,
// and only then clears extents not written since. After a crash every
// block of every marked extent is treated as changed: marked dirty for
// every peer, given a fresh version, and marked "probe", so the next cycle
// sends its hash rather than its data and the mirror answers whether it
// already holds those bytes. Tracking can over-mark but never lose a write,
// and the over-marking costs hashes, not data. The cost on the write path
// is one sync per newly touched extent per flush interval.
//
// # Delta cycles
//
// A cycle ships every block dirty for a peer once, however often it was
// written: the dirty set moves to an in-flight set and a copy-on-write
// snapshot (first write to a block of the set saves the old bytes to a
// side file) gives the cycle a point-in-time view while writes continue.
// The sender first sends the manifest (block, version [, hash]); the mirror
// answers with a bitmap of what it needs, leaving out what it already holds
// in its image or staged in its journal from an interrupted attempt. So no
// acknowledged block is sent twice, whichever side crashed. Needed blocks
// are appended to the journal (synced every 16 MiB and at commit); the
// commit carries a digest of the manifest; the mirror appends a commit
// record, syncs, acknowledges, applies in place, syncs, records the cycle
// number and empties the journal. The source retires the cycle's dirty
// bits on that acknowledgement, so a cycle that was acknowledged must
// never be lost. After a crash, recovery applies a committed cycle again
// (idempotent) and ignores an uncommitted one, so a restarted mirror shows
// the previous cycle or the new one, never a mix. An apply that fails
// without a crash (replicator_cycle_apply_failures_total) is made safe in
// service: if staged data is damaged (a checksum fails), the cycle is lost
// on this mirror, which, as after a damaged journal at start, empties its
// logs and asks for a full copy from block 0; after any other failure (an
// I/O error) the cycle stays committed in the journal, the copy refuses
// reads, and the next session that changes the volume applies it again
// before its Welcome reports the cycle number the source counts from. If
// that fails too, the session is refused (the source's cycle fails), and
// no cycle can begin behind a committed one that is not applied.
//
// # Full and selective copies
//
// A full copy streams 4 MiB frames of 1024 blocks from the resume point.
// One goroutine reads (one SEEK_DATA/SEEK_HOLE pair per data segment skips
// holes), encoders hash (and compress) blocks, and the sender writes frames
// in order through TLS while another goroutine reads acknowledgements, so
// disk reads, hashing, encryption and the network overlap. Block data is
// never copied into frames: the frame's entry headers come first and the
// data region follows, so a run of adjacent blocks goes from the read
// buffer to TLS and, at the mirror, from the received frame to disk in one
// write. TLS records are gathered into 256 KiB socket writes. All-zero and
// sparse blocks travel as zero entries (runs of never-written ones as a
// single range). The mirror syncs and records its position every 64 MiB or
// 500 ms and acknowledges it; a resumed copy starts there. The mirror is
// flagged inconsistent (and refuses reads) until the delta cycle that
// follows every copy commits. The source's change tracking for the peer is
// reset only after the mirror has durably recorded that a copy is in
// progress.
//
// A selective copy is the same stream restricted to named extents (an
// application profile) and/or the hottest extents measured from reads. The
// mirror keeps a presence bitmap (set only after the data is written, so a
// crash can only forget a block, never claim one); Node.Read fetches
// missing blocks from the upstream peer on demand (read-through), stores
// them, and the mirror is usable at once. Cycles skip blocks a selective
// mirror does not hold. Read-through returns the upstream's current data,
// so a selective mirror is a cache, not a point-in-time copy. Only an
// unfenced primary upstream vouches for its answers with its epoch (as a
// cycle's sender does); other answers are ordered by version alone. A
// selective mirror that loses an acknowledged cycle (damaged staged data)
// forgets every block it holds, which may predate that cycle, and reads
// them through until its copy from block 0 brings them.
//
// Node.SetUpstream moves the upstream at run time (the data's origin
// moved to another node). A read-through in flight to the old upstream is
// cut, and an answer from it is stored only if the upstream is unchanged
// when the store takes the volume's io lock; otherwise it is dropped and
// the blocks are fetched again from the new one. SetUpstream takes that
// lock after the change, so once it returns nothing from the old upstream
// is stored. Stored, such an answer would count as held: a deposed copy's
// data, served until a cycle or verify replaced it.
//
// # Checksums and compression
//
// Per-block checksums are xxHash64: ~16 GB/s on one core here, 64 bits so
// Merkle leaves practically never collide (2^-64 per differing block), and
// already in the build through client_golang. They are computed from the
// bytes read at the source and checked before anything is staged or
// written, so corruption anywhere between the two disks is caught, not only
// on the wire. Frames carry CRC-32C (hardware, ~30 GB/s, catches every burst
// up to 32 bits); TLS adds its own authentication. zstd (fastest level)
// compresses a batch only when a sample block of it shrinks by 20%, backing
// off exponentially after samples that do not, so incompressible images
// cost about one trial compression per 64 MiB.
//
// # Verify
//
// Both sides hash their copy once (reads pipelined with hashing, holes not
// read) into the leaves of a 64-ary Merkle tree and walk it top-down,
// exchanging only the hashes of children of differing nodes. With repair,
// the differing blocks go to the mirror as a forced cycle, atomic like any
// other; the source's copy wins. A selective mirror first sends its
// presence bitmap: blocks it holds (copied or fetched by read-through) are
// compared, the others get a fixed leaf on both sides and never differ, and
// a repair cycle never sends them, so it cannot turn the mirror into a full
// copy.
//
// # Transport, fencing, quorum
//
// Sessions are mutual TLS 1.3 (internal/pki); the peer's certificate name
// can be restricted per volume. Frames and negotiation are in package wire.
// Every session that changes a volume carries the sender's epoch: a mirror
// rejects an older one (ErrFenced) and a primary that sees a newer one
// becomes a fenced mirror, refusing local writes. Node.Write sends the
// written blocks to every mirror on a long-lived session (logged durably
// there, applied newest-version-wins) and returns after WriteQuorum copies
// acknowledge; Node.Read asks every mirror, needs ReadQuorum copies to
// answer, and returns, per block, the newest version. A copy whose copy is
// incomplete or whose failed cycle waits for its retry answers no reads,
// this node's own included, so it does not count. As for a cycle, only
// a copy of the sender's data takes part: a mirror that is empty or holds
// another volume's lineage refuses sync writes and reads (ErrLineage), so
// it neither counts toward a quorum nor answers with its own blocks.
// Epochs are assigned
// by whoever promotes: Promote, which `edge-agent replicate promote` calls
// on a volume no process holds. Node.Promote first ends the volume's
// changing session and applies a cycle whose apply failed, so the new
// primary holds every cycle it acknowledged. The controller places and
// retires copies but does not promote one: moving a volume's writer is
// an operator's decision (OPERATIONS.md).
//
// # Read repair
//
// A quorum read has just seen every answering copy's version of each
// block, so, as in Dynamo and Cassandra, copies that answered with an
// older version are sent the newest at once instead of waiting for a delta
// cycle: mirrors on their sync-write session, this copy through the apply
// path mirrors use. Both are newest-version-wins, so a repair racing a
// newer write cannot undo it and a repeated one changes nothing. The read
// returns without waiting; repairs run in the background (at most 64 per
// node; beyond that they are skipped and left to delta cycles), and Close
// cancels and waits for them. They are counted in
// replicator_read_repairs_total and logged at debug level. Two kinds of
// blocks are never pushed: blocks a selective mirror does not hold (it
// answers them as absent, "no version", like a Dynamo replica without the
// key, and neither fetches them nor is given them), and blocks whose
// newest version predates the current epoch, which a mirror would refuse
// as a fenced write; delta cycles and verify bring those. Repairs sent to
// mirrors are fenced as writes are: a fenced copy sends none, and a repair
// a mirror refuses as fenced fences this copy.
//
// Protocol 2 added this "absent" answer (ReadReq flag ReadHeld, KindAbsent
// entries). With a protocol 1 peer, a quorum read makes a selective mirror
// fetch the blocks it lacks from its upstream first, as before.
//
// # Bandwidth
//
// Each peer link has a token bucket whose rate follows a weekly schedule of
// windows (package throttle), replaceable at run time with
// Node.SetSchedule; waiters wake on a change instead of finishing a sleep
// computed at the old rate. A cycle ships a fixed snapshot, so writes
// during it go to the next cycle and no resync can livelock.
//
// # Delay-based rate control
//
// A schedule that allows a copy to run "unlimited" would let it fill the
// buffers of the WAN path it crosses and add hundreds of milliseconds to
// every user's traffic on that path. PeerConfig.RateControl puts a link
// under a LEDBAT-style controller (RFC 6817; DRBD's dynamic resync rate
// with c-min-rate is the anchor): the base delay is the minimum RTT over
// ten one-minute buckets, the queueing delay the filtered RTT minus the
// base; below the target (default 25 ms) the rate rises in proportion to
// the distance from it, above it the rate is cut in proportion to the
// excess, at most once per round trip. The rate never exceeds the
// schedule's (a lower window applies at once, a paused one pauses) and
// never falls below MinRate, so copies always progress.
//
// The RTT samples are the kernel's smoothed RTT of the replication TCP
// connection (TCP_INFO), read every 10 ms while data flows, rather than the
// protocol's acknowledgements: those follow the mirror's fsyncs (every
// 64 MiB or 500 ms of a full copy) and are far too coarse for a 25 ms
// target, while the kernel's RTT covers full copies, delta cycles and
// repair cycles alike with no protocol change. Under control the sender
// also paces each frame in 10 ms quanta instead of writing 4 MiB at
// once, since a frame-sized burst alone would exceed the target at the
// bottleneck. The agent turns control on by default
// (replication.peers[].rate_control); the gauges
// replicator_rate_control_{rate_bytes_per_second,queueing_delay_seconds,
// base_delay_seconds} show it per peer. Against a deep-buffered 80 Mbit/s
// bottleneck (TestRateControlYieldsToProbe) a full copy raised a probe's
// p95 queueing delay to 249 ms uncontrolled and to 30 ms controlled, at
// 75% of the uncontrolled throughput. Quorum writes are interactive and
// neither throttled nor sampled.
//
// # Delivered rate
//
// What a link actually carries is measured where frames are sent: from
// the moment a copy or cycle has a frame ready until it is on the socket,
// so time spent reading, encoding or idle never counts. Frame bytes over
// that backlogged time feed an exponentially weighted average with a
// one-minute time constant (overlapping sessions to one peer count
// together; stretches in a paused window, across a window boundary or
// ending in a failed send are dropped). Node.LinkRates returns it per
// peer with when it was last updated and whether the schedule, rather
// than the path or the delay controller, set the pace; the agent plans
// deadline-bound copies with it, and
// replicator_link_delivered_rate_bytes_per_second exports it.
//
// # Dynamic mirrors and sync status
//
// Besides the mirrors in VolumeConfig, Node.SetDynamicMirrors sets a
// volume's mirrors at run time (the agent does, from the controller's
// replication tasks): each new (peer, remote volume) gets the same loop
// as a configured mirror, and a mirror no longer listed is stopped before
// the call returns. Its change tracking stays, so adding it again later
// ships a delta of what changed meanwhile, not a full copy. On the mirror
// side, Node.SetAllowedPeers replaces a volume's allowed peers at run
// time (the agent gives a placed copy the sources of its tasks) and ends
// the sessions of peers it drops; Node.SetUpstream replaces a selective
// mirror's upstream (see Full and selective copies; the agent gives a
// placed selective copy the source of its current tasks).
//
// On the mirror side, Status says whether a volume is Complete (a whole
// copy whose closing cycle committed, not selective) and its Lag: the
// time since the data of the newest applied cycle was current. Cycles
// carry no source timestamp, so that is when the cycle's first frame
// arrived, on the mirror's clock: the sender takes the snapshot just
// before, so the estimate is short by one-way latency, unaffected by
// clock skew, and includes however long a throttled transfer took. It is
// kept in state.json; repair cycles do not move it.
//
// # Limits
//
// Metadata takes about 16.3 bytes of memory per block (versions and
// bitmaps): 4.3 MiB per GiB of volume at 4 KiB blocks. A cycle's manifest
// lives in memory (~40 bytes per changed block). Applying a cycle holds the
// volume's write lock, so in-process readers wait for it; other processes
// reading the raw image during an apply could see a mix (after a crash,
// OpenVolume finishes the apply before anything reads).
package replicator
