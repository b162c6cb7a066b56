package controller

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

// Key layout under the store prefix (default /premirror/v1/):
//
//	objects/site/<name>      pb.Site (with its ID)          admin API
//	objects/mirror/<name>    pb.Mirror                      admin API
//	objects/resource/<name>  pb.Resource                    admin API
//	objects-gen              apply generation (fences concurrent applies)
//	ids/<kind>/<name>        decimal ID; kept after a delete, so a name
//	                         keeps its ID and no ID is reused
//	state/desired            deflate(pb.DesiredRecord)     leader only
//	state/routes             deflate(pb.RouteRecord)       leader only
//	state/placements/<res>   pb.PlacementRecord            leader only (placement.go)
//	agents/<node>            pb.AgentRecord                 replica serving the agent
//	live/<node>              pb.LiveReport, leased to that replica
//	election/                leader election (etcd concurrency)
//
// Forecasting keeps its keys under a sibling prefix (<prefix>-forecast/,
// see forecaster.go) so that replicas' watches of this one do not carry
// them.
const (
	keyObjects  = "objects/"
	keyGen      = "objects-gen"
	keyIDs      = "ids/"
	keyDesired  = "state/desired"
	keyRoutes   = "state/routes"
	keyPlaced   = "state/placements/"
	keyAgents   = "agents/"
	keyLive     = "live/"
	keyElection = "election/"
)

// DefaultPrefix is where a controller keeps its state in etcd.
const DefaultPrefix = "/premirror/v1/"

// ErrConflict means a concurrent apply changed the objects; Apply retries
// a few times before returning it.
var ErrConflict = errors.New("objects changed concurrently")

// ErrStale means an object was applied or deleted after the revision an
// edit was based on (ApplyIf): the editor must read the objects again.
var ErrStale = errors.New("objects changed since they were read")

// ErrNotFound is returned for a missing object.
var ErrNotFound = errors.New("object not found")

// ErrNotLeader is returned when a leader-only write lost its fence.
var ErrNotLeader = errors.New("not the leader")

// Store reads and writes the controller's state in etcd.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	fprefix string // forecast keys (forecaster.go)
	lim     Limits
	// MaxTxnOps bounds the operations of one transaction; a larger apply
	// is split (sites, then mirrors, then resources, so every prefix of
	// it is valid). A split apply is not atomic: a failure between its
	// transactions leaves the earlier ones written.
	MaxTxnOps int
	// MaxRequestBytes is etcd's --max-request-bytes. An apply larger
	// than it is split by size the same way; one with an object that
	// alone exceeds it is refused before anything is written
	// (ErrInvalid): etcd would refuse it as well, and that error reads as
	// an outage, which clients retry.
	MaxRequestBytes int
}

// NewStore returns a store under prefix (DefaultPrefix when empty).
func NewStore(cli *clientv3.Client, prefix string, lim Limits) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Store{cli: cli, prefix: prefix, fprefix: forecastPrefix(prefix), lim: lim, MaxTxnOps: EtcdMaxTxnOps,
		MaxRequestBytes: EtcdMaxRequestBytes}
}

// Prefix is the store's key prefix.
func (s *Store) Prefix() string { return s.prefix }

func (s *Store) key(parts ...string) string { return s.prefix + strings.Join(parts, "") }

func objectKey(kind, name string) string { return keyObjects + kind + "/" + name }

// objectSet is the objects with their IDs, as read at one revision.
type objectSet struct {
	rev    int64
	genRev int64 // mod revision of objects-gen (0: never written)
	objs   *pb.Objects
	ids    map[string]map[string]uint32 // kind → name → id, deleted names included
}

func (s *Store) readObjects(ctx context.Context) (*objectSet, error) {
	resp, err := s.cli.Get(ctx, s.key(keyObjects), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read objects: %w", err)
	}
	set := &objectSet{rev: resp.Header.Revision, objs: &pb.Objects{}, ids: map[string]map[string]uint32{
		KindSite: {}, KindMirror: {}, KindResource: {}}}
	for _, kv := range resp.Kvs {
		if err := decodeObject(strings.TrimPrefix(string(kv.Key), s.key(keyObjects)), kv.Value, set.objs); err != nil {
			return nil, err
		}
	}
	more, err := s.cli.Get(ctx, s.key(keyIDs), clientv3.WithPrefix(), clientv3.WithRev(set.rev))
	if err != nil {
		return nil, fmt.Errorf("read ids: %w", err)
	}
	for _, kv := range more.Kvs {
		kind, name, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), s.key(keyIDs)), "/")
		id, err := strconv.ParseUint(string(kv.Value), 10, 32)
		if !ok || err != nil || set.ids[kind] == nil {
			return nil, fmt.Errorf("corrupt id record %s", kv.Key)
		}
		set.ids[kind][name] = uint32(id)
	}
	gen, err := s.cli.Get(ctx, s.key(keyGen), clientv3.WithRev(set.rev))
	if err != nil {
		return nil, fmt.Errorf("read objects generation: %w", err)
	}
	if len(gen.Kvs) > 0 {
		set.genRev = gen.Kvs[0].ModRevision
	}
	sortObjects(set.objs)
	return set, nil
}

// decodeObject appends the object stored under rel ("site/<name>", …).
func decodeObject(rel string, v []byte, into *pb.Objects) error {
	kind, name, _ := strings.Cut(rel, "/")
	var m interface {
		proto.Message
		GetName() string
	}
	switch kind {
	case KindSite:
		x := &pb.Site{}
		into.Sites = append(into.Sites, x)
		m = x
	case KindMirror:
		x := &pb.Mirror{}
		into.Mirrors = append(into.Mirrors, x)
		m = x
	case KindResource:
		x := &pb.Resource{}
		into.Resources = append(into.Resources, x)
		m = x
	default:
		return fmt.Errorf("unknown object key %s", rel)
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("corrupt object %s: %w", rel, err)
	}
	if m.GetName() != name {
		return fmt.Errorf("corrupt object %s: holds %q", rel, m.GetName())
	}
	return nil
}

func sortObjects(o *pb.Objects) {
	slices.SortFunc(o.Sites, func(a, b *pb.Site) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(o.Mirrors, func(a, b *pb.Mirror) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(o.Resources, func(a, b *pb.Resource) int { return strings.Compare(a.GetName(), b.GetName()) })
}

var marshal = proto.MarshalOptions{Deterministic: true}

// Apply creates or updates objects by name after validating the whole
// resulting set; new names get the next free ID of their kind. Nothing is
// written when validation fails or dryRun is set; an input naming one
// object twice is invalid.
func (s *Store) Apply(ctx context.Context, in *pb.Objects, dryRun bool) ([]*pb.ObjectChange, error) {
	return s.ApplyIf(ctx, in, dryRun, 0)
}

// ApplyIf is Apply for an edit based on the objects as read at revision
// ifRev (GetRev): when any object was applied or deleted after it, it
// returns ErrStale and writes nothing. 0 applies unconditionally.
func (s *Store) ApplyIf(ctx context.Context, in *pb.Objects, dryRun bool, ifRev int64) ([]*pb.ObjectChange, error) {
	for attempt := 0; ; attempt++ {
		changes, err := s.applyOnce(ctx, in, dryRun, ifRev)
		if !errors.Is(err, ErrConflict) || attempt == 4 {
			return changes, err
		}
	}
}

type pendingPut struct {
	kind, name string
	value      []byte
	newID      bool
	id         uint32
}

func (s *Store) applyOnce(ctx context.Context, in *pb.Objects, dryRun bool, ifRev int64) ([]*pb.ObjectChange, error) {
	if err := checkUnique(in); err != nil {
		return nil, err
	}
	cur, err := s.readObjects(ctx)
	if err != nil {
		return nil, err
	}
	// Every object write moves objects-gen in its transaction, and commit
	// is fenced on the genRev read here: a write after this check fails
	// the commit, and the retry sees it here.
	if ifRev > 0 && cur.genRev > ifRev {
		return nil, fmt.Errorf("%w (an apply or delete at revision %d, after revision %d)", ErrStale, cur.genRev, ifRev)
	}
	merged := proto.Clone(cur.objs).(*pb.Objects)
	var changes []*pb.ObjectChange
	var puts []pendingPut
	nextID := map[string]uint32{}
	for kind, ids := range cur.ids {
		for _, id := range ids {
			nextID[kind] = max(nextID[kind], id)
		}
	}
	upsert := func(kind, name string, obj proto.Message, find func() (int, proto.Message), set func(int, proto.Message)) error {
		i, old := find()
		id, known := cur.ids[kind][name]
		if !known {
			nextID[kind]++
			id = nextID[kind]
			if kind == KindMirror && s.lim.MaxMirrorID > 0 && id > s.lim.MaxMirrorID {
				return invalidf("mirror %q: id: the data plane holds mirror IDs up to %d", name, s.lim.MaxMirrorID)
			}
		}
		obj = proto.Clone(obj)
		setID(obj, id)
		action := "created"
		if old != nil {
			action = "updated"
			if proto.Equal(old, obj) {
				action = "unchanged"
			}
		}
		changes = append(changes, &pb.ObjectChange{Kind: kind, Name: name, Action: action, Id: id})
		if action == "unchanged" {
			return nil
		}
		set(i, obj)
		b, err := marshal.Marshal(obj)
		if err != nil {
			return err
		}
		puts = append(puts, pendingPut{kind: kind, name: name, value: b, newID: !known, id: id})
		return nil
	}
	for _, x := range in.GetSites() {
		err := upsert(KindSite, x.GetName(), x,
			func() (int, proto.Message) { return findByName(merged.Sites, x.GetName()) },
			func(i int, m proto.Message) { merged.Sites = setAt(merged.Sites, i, m.(*pb.Site)) })
		if err != nil {
			return nil, err
		}
	}
	for _, x := range in.GetMirrors() {
		err := upsert(KindMirror, x.GetName(), x,
			func() (int, proto.Message) { return findByName(merged.Mirrors, x.GetName()) },
			func(i int, m proto.Message) { merged.Mirrors = setAt(merged.Mirrors, i, m.(*pb.Mirror)) })
		if err != nil {
			return nil, err
		}
	}
	for _, x := range in.GetResources() {
		err := upsert(KindResource, x.GetName(), x,
			func() (int, proto.Message) { return findByName(merged.Resources, x.GetName()) },
			func(i int, m proto.Message) { merged.Resources = setAt(merged.Resources, i, m.(*pb.Resource)) })
		if err != nil {
			return nil, err
		}
	}
	if err := ValidateObjects(merged, s.lim); err != nil {
		return nil, err
	}
	txns := s.txns(puts)
	if err := s.checkRequestSize(txns); err != nil {
		return nil, err
	}
	if ifRev > 0 && len(txns) > 1 {
		// A split apply is not atomic: an edit between its parts would
		// leave the first part written under an answer that says the
		// condition failed and nothing was.
		return nil, &SplitError{Objects: len(puts), PerTxn: len(txns[0].puts)}
	}
	if dryRun || len(puts) == 0 {
		return changes, nil
	}
	return changes, s.commit(ctx, cur.genRev, txns)
}

// SplitError refuses a conditional apply (ApplyIf) that commit would
// split over several transactions; it wraps ErrInvalid. PerTxn is how
// many of its objects the first transaction holds: a client that can
// split its edit itself (drain) applies that many at a time, each part a
// compare-and-swap on its own read (the admin API passes PerTxn on as
// an ErrorInfo, ReasonApplySplit).
type SplitError struct {
	Objects, PerTxn int
}

func (e *SplitError) Error() string {
	return fmt.Sprintf("%v: a conditional apply must fit one etcd transaction: %d objects to write, at most %d in one transaction "+
		"(--etcd-max-txn-ops, --etcd-max-request-bytes); apply fewer at a time", ErrInvalid, e.Objects, e.PerTxn)
}

func (e *SplitError) Unwrap() error { return ErrInvalid }

// txn is one transaction of an apply: the objects it writes and its
// operations, objects-gen's put last.
type txn struct {
	puts []pendingPut
	ops  []clientv3.Op
}

// txns splits puts into the transactions commit writes, in order (sites,
// then mirrors, then resources, so every prefix is valid): at most
// MaxTxnOps operations each, objects-gen's put included, and at most
// MaxRequestBytes of request (requestBytes) when it is set. An object
// too large for a transaction of its own still gets one, which
// checkRequestSize refuses.
func (s *Store) txns(puts []pendingPut) []txn {
	gen := clientv3.OpPut(s.key(keyGen), "")
	items := make([][]clientv3.Op, len(puts))
	for i, p := range puts {
		items[i] = []clientv3.Op{clientv3.OpPut(s.key(objectKey(p.kind, p.name)), string(p.value))}
		if p.newID {
			items[i] = append(items[i], clientv3.OpPut(s.key(keyIDs, p.kind, "/", p.name), strconv.FormatUint(uint64(p.id), 10)))
		}
	}
	var out []txn
	start := 0
	for _, end := range packTxns(items, max(1, (s.MaxTxnOps-1)/2), s.MaxRequestBytes, []clientv3.Op{gen}) {
		t := txn{puts: slices.Clip(puts[start:end])}
		for _, ops := range items[start:end] {
			t.ops = append(t.ops, ops...)
		}
		t.ops = append(t.ops, gen)
		out = append(out, t)
		start = end
	}
	return out
}

// packTxns groups items (each the operations of one thing to write),
// in order, into transactions of at most maxItems items (at least one)
// and, when maxBytes is set, at most maxBytes of request (requestBytes)
// counting reserve's operations in each, which the caller adds. An item
// too large for a transaction of its own still gets one. It returns
// where each transaction's items end (exclusive).
func packTxns(items [][]clientv3.Op, maxItems, maxBytes int, reserve []clientv3.Op) []int {
	var ends []int
	start, size := 0, requestBytes(reserve)
	for i, ops := range items {
		n := requestBytes(ops) - txnFraming
		if i > start && (i-start >= max(1, maxItems) || maxBytes > 0 && size+n > maxBytes) {
			ends = append(ends, i)
			start, size = i, requestBytes(reserve)
		}
		size += n
	}
	if len(items) > start {
		ends = append(ends, len(items))
	}
	return ends
}

// A put's framing in etcd's request (the tags and lengths of its key,
// value, PutRequest and RequestOp) takes at most 22 bytes; txnFraming
// covers the compare on objects-gen and the request's header.
const (
	putFraming = 24
	txnFraming = 1 << 10
)

// requestBytes bounds from above what etcd measures of a transaction of
// puts against its --max-request-bytes.
func requestBytes(ops []clientv3.Op) int {
	n := txnFraming
	for _, op := range ops {
		n += len(op.KeyBytes()) + len(op.ValueBytes()) + putFraming
	}
	return n
}

// checkRequestSize refuses an apply with a transaction beyond
// MaxRequestBytes, naming its size, the limit and its largest object.
// txns splits by size, so such a transaction holds one object that alone
// exceeds the limit (or, with a limit below what an object's keys take,
// a small one).
func (s *Store) checkRequestSize(txns []txn) error {
	for _, t := range txns {
		n := requestBytes(t.ops)
		if s.MaxRequestBytes <= 0 || n <= s.MaxRequestBytes {
			continue
		}
		big := slices.MaxFunc(t.puts, func(a, b pendingPut) int { return len(a.value) - len(b.value) })
		return invalidf("%d bytes to write in one etcd request (%d operations), above the etcd request limit of %d bytes "+
			"(--etcd-max-request-bytes); the largest object is %s %q (%d bytes), too large for a transaction of its own: make it smaller",
			n, len(t.ops), s.MaxRequestBytes, big.kind, big.name, len(big.value))
	}
	return nil
}

// commit writes txns (from txns) in order, each fenced on the objects
// generation the previous one left.
func (s *Store) commit(ctx context.Context, genRev int64, txns []txn) error {
	for _, t := range txns {
		resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.key(keyGen)), "=", genRev)).Then(t.ops...).Commit()
		if err != nil {
			return fmt.Errorf("write objects: %w", err)
		}
		if !resp.Succeeded {
			return ErrConflict
		}
		genRev = resp.Header.Revision
	}
	return nil
}

type named interface {
	proto.Message
	GetName() string
}

func findByName[T named](list []T, name string) (int, proto.Message) {
	for i, x := range list {
		if x.GetName() == name {
			return i, x
		}
	}
	return -1, nil
}

func setAt[T any](list []T, i int, x T) []T {
	if i < 0 {
		return append(list, x)
	}
	list[i] = x
	return list
}

func setID(m proto.Message, id uint32) {
	switch x := m.(type) {
	case *pb.Site:
		x.Id = id
	case *pb.Mirror:
		x.Id = id
	case *pb.Resource:
		x.Id = id
	}
}

// Delete removes one object; an object another one references is refused
// (ErrInvalid naming the referrer). Its ID stays reserved for its name.
func (s *Store) Delete(ctx context.Context, kind, name string) error {
	for attempt := 0; ; attempt++ {
		err := s.deleteOnce(ctx, kind, name)
		if !errors.Is(err, ErrConflict) || attempt == 4 {
			return err
		}
	}
}

func (s *Store) deleteOnce(ctx context.Context, kind, name string) error {
	cur, err := s.readObjects(ctx)
	if err != nil {
		return err
	}
	o := cur.objs
	var found bool
	switch kind {
	case KindSite:
		i, _ := findByName(o.Sites, name)
		found = i >= 0
		for _, m := range o.Mirrors {
			if m.GetSite() == name {
				return invalidf("site %q: still holds mirror %q", name, m.GetName())
			}
		}
		for _, r := range o.Resources {
			if slices.Contains(r.GetMirrorPolicy().GetSites(), name) {
				return invalidf("site %q: resource %q's mirror_policy.sites names it", name, r.GetName())
			}
		}
	case KindMirror:
		i, _ := findByName(o.Mirrors, name)
		found = i >= 0
		for _, r := range o.Resources {
			if r.GetOrigin() == name || slices.Contains(r.GetMirrorPolicy().GetMirrors(), name) {
				return invalidf("mirror %q: resource %q still uses it", name, r.GetName())
			}
		}
	case KindResource:
		i, _ := findByName(o.Resources, name)
		found = i >= 0
	default:
		return invalidf("kind: %q is not site, mirror or resource", kind)
	}
	if !found {
		return fmt.Errorf("%s %q: %w", kind, name, ErrNotFound)
	}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.key(keyGen)), "=", cur.genRev)).
		Then(clientv3.OpDelete(s.key(objectKey(kind, name))), clientv3.OpPut(s.key(keyGen), "")).Commit()
	if err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, name, err)
	}
	if !resp.Succeeded {
		return ErrConflict
	}
	return nil
}

// Get returns the objects of kind ("" for all), or the one named.
func (s *Store) Get(ctx context.Context, kind, name string) (*pb.Objects, error) {
	o, _, err := s.GetRev(ctx, kind, name)
	return o, err
}

// GetRev is Get with the revision the objects were read at, for ApplyIf.
func (s *Store) GetRev(ctx context.Context, kind, name string) (*pb.Objects, int64, error) {
	cur, err := s.readObjects(ctx)
	if err != nil {
		return nil, 0, err
	}
	o := cur.objs
	out := &pb.Objects{}
	keep := func(k, n string) bool { return (kind == "" || kind == k) && (name == "" || name == n) }
	for _, x := range o.Sites {
		if keep(KindSite, x.GetName()) {
			out.Sites = append(out.Sites, x)
		}
	}
	for _, x := range o.Mirrors {
		if keep(KindMirror, x.GetName()) {
			out.Mirrors = append(out.Mirrors, x)
		}
	}
	for _, x := range o.Resources {
		if keep(KindResource, x.GetName()) {
			out.Resources = append(out.Resources, x)
		}
	}
	switch kind {
	case "", KindSite, KindMirror, KindResource:
	default:
		return nil, 0, invalidf("kind: %q is not site, mirror or resource", kind)
	}
	if name != "" && len(out.Sites)+len(out.Mirrors)+len(out.Resources) == 0 {
		return nil, 0, fmt.Errorf("%s %q: %w", kind, name, ErrNotFound)
	}
	return out, cur.rev, nil
}

// pack and unpack compress the large leader records: a desired state is
// mostly repeated route references and compresses about tenfold, which
// keeps it within etcd's request limit.
func pack(m proto.Message) ([]byte, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestSpeed)
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// maxUnpacked bounds a decompressed record so a corrupt one cannot
// exhaust memory.
const maxUnpacked = 1 << 30

func unpack(b []byte, m proto.Message) error {
	r := flate.NewReader(bytes.NewReader(b))
	defer r.Close()
	raw, err := io.ReadAll(io.LimitReader(r, maxUnpacked+1))
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if len(raw) > maxUnpacked {
		return errors.New("decompress: record too large")
	}
	return proto.Unmarshal(raw, m)
}

// readDesired returns the current desired record (nil when none) and the
// mod revision of its key.
func (s *Store) readDesired(ctx context.Context) (*pb.DesiredRecord, int64, error) {
	resp, err := s.cli.Get(ctx, s.key(keyDesired))
	if err != nil {
		return nil, 0, fmt.Errorf("read desired state: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	rec := &pb.DesiredRecord{}
	if err := unpack(resp.Kvs[0].Value, rec); err != nil {
		return nil, 0, fmt.Errorf("corrupt desired state: %w", err)
	}
	return rec, resp.Kvs[0].ModRevision, nil
}

func (s *Store) readRoutes(ctx context.Context) (*pb.RouteRecord, error) {
	resp, err := s.cli.Get(ctx, s.key(keyRoutes))
	if err != nil {
		return nil, fmt.Errorf("read route state: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	rec := &pb.RouteRecord{}
	if err := unpack(resp.Kvs[0].Value, rec); err != nil {
		return nil, fmt.Errorf("corrupt route state: %w", err)
	}
	return rec, nil
}

// fence is the leader's right to write: its election key must still be
// the one it created.
type fence struct {
	key string
	rev int64
}

func (f fence) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev)
}

// writeDesired writes a new version if the fence holds and nobody wrote
// the key since prevRev; it returns the new mod revision.
func (s *Store) writeDesired(ctx context.Context, f fence, prevRev int64, value []byte) (int64, error) {
	resp, err := s.cli.Txn(ctx).If(f.cmp(), clientv3.Compare(clientv3.ModRevision(s.key(keyDesired)), "=", prevRev)).
		Then(clientv3.OpPut(s.key(keyDesired), string(value))).Commit()
	if err != nil {
		return 0, fmt.Errorf("write desired state: %w", err)
	}
	if !resp.Succeeded {
		return 0, ErrNotLeader
	}
	return resp.Header.Revision, nil
}

func (s *Store) writeRoutes(ctx context.Context, f fence, value []byte) error {
	resp, err := s.cli.Txn(ctx).If(f.cmp()).Then(clientv3.OpPut(s.key(keyRoutes), string(value))).Commit()
	if err != nil {
		return fmt.Errorf("write route state: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}
