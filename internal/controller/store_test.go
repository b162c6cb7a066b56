package controller

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/premirror/premirror/api/premirror/v1"
)

func TestStoreIDsAreStable(t *testing.T) {
	cli := etcdClient(t)
	defer cli.Close()
	s := NewStore(cli, testPrefix(t), DefaultLimits())
	ctx := context.Background()
	ch, err := s.Apply(ctx, testObjects(), false)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint32{}
	for _, c := range ch {
		if c.GetAction() != "created" || c.GetId() == 0 {
			t.Fatalf("change %v", c)
		}
		ids[c.GetKind()+"/"+c.GetName()] = c.GetId()
	}
	if ids["site/eu"] == ids["site/us"] || ids["mirror/paris"] == ids["mirror/nyc"] {
		t.Fatalf("ids %v", ids)
	}

	// Unchanged objects stay unchanged; an edit keeps its ID.
	o := testObjects()
	o.Mirrors[1].CapacityRps = 100
	ch, err = s.Apply(ctx, o, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ch {
		want := "unchanged"
		if c.GetName() == "nyc" {
			want = "updated"
		}
		if c.GetAction() != want || c.GetId() != ids[c.GetKind()+"/"+c.GetName()] {
			t.Fatalf("change %v, want %s with id %d", c, want, ids[c.GetKind()+"/"+c.GetName()])
		}
	}

	// Deleting a referenced object is refused, naming the referrer.
	if err := s.Delete(ctx, KindMirror, "nyc"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `resource "disk"`) {
		t.Fatalf("delete of a used mirror: %v", err)
	}
	if err := s.Delete(ctx, KindSite, "us"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("delete of a used site: %v", err)
	}
	if err := s.Delete(ctx, KindResource, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of a missing resource: %v", err)
	}
	// Delete, then re-create: same name, same ID; a new name, a new ID.
	if err := s.Delete(ctx, KindResource, "disk"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, KindMirror, "nyc"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, KindMirror, "nyc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	o2 := &pb.Objects{Mirrors: []*pb.Mirror{
		{Name: "tokyo", Site: "us", Address: "192.0.2.30"},
		{Name: "nyc", Site: "us", Address: "192.0.2.20"},
	}}
	ch, err = s.Apply(ctx, o2, false)
	if err != nil {
		t.Fatal(err)
	}
	if ch[1].GetId() != ids["mirror/nyc"] || ch[0].GetId() == ids["mirror/nyc"] || ch[0].GetId() == ids["mirror/paris"] {
		t.Fatalf("ids after re-create %v (before %v)", ch, ids)
	}

	// Validation failures write nothing; dry runs write nothing.
	bad := &pb.Objects{Resources: []*pb.Resource{{Name: "x", Vips: []string{"203.0.113.9"}, Ports: []uint32{1},
		Protocol: pb.Protocol_PROTOCOL_UDP, Origin: "mars"}}}
	if _, err := s.Apply(ctx, bad, false); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "origin") {
		t.Fatalf("invalid apply: %v", err)
	}
	bad.Resources[0].Origin = "tokyo"
	if _, err := s.Apply(ctx, bad, true); err != nil {
		t.Fatal(err)
	}
	all, err := s.Get(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all.GetResources()) != 0 || len(all.GetMirrors()) != 3 || len(all.GetSites()) != 2 {
		t.Fatalf("objects after failed and dry-run applies: %v", all)
	}
	got, err := s.Get(ctx, KindMirror, "paris")
	if err != nil || !proto.Equal(got.Mirrors[0], &pb.Mirror{Name: "paris", Site: "eu", Address: "192.0.2.10", Node: "paris-host", Id: ids["mirror/paris"]}) {
		t.Fatalf("get paris: %v %v", got, err)
	}
	if _, err := s.Get(ctx, "volume", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("get of an unknown kind: %v", err)
	}
}

func TestStoreSplitsLargeApplies(t *testing.T) {
	cli := etcdClient(t)
	defer cli.Close()
	s := NewStore(cli, testPrefix(t), DefaultLimits())
	s.MaxTxnOps = 8 // forces several transactions
	o := testObjects()
	for i := range 20 {
		r := proto.Clone(o.Resources[0]).(*pb.Resource)
		r.Name = "r" + string(rune('a'+i))
		r.Ports = []uint32{uint32(1000 + i)}
		o.Resources = append(o.Resources, r)
	}
	if _, err := s.Apply(context.Background(), o, false); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(context.Background(), KindResource, "")
	if err != nil || len(got.GetResources()) != 21 {
		t.Fatalf("%d resources, %v", len(got.GetResources()), err)
	}
}

// An apply that names an object twice is refused whole, dry run or not,
// however the store splits its transactions: before, the two writes of
// one key failed in etcd ("duplicate key given in txn request") or, split
// over two transactions, the later silently won with a second new ID.
func TestStoreRefusesDuplicateNames(t *testing.T) {
	cli := etcdClient(t)
	defer cli.Close()
	for _, tc := range []struct {
		name   string
		maxOps int
		dry    bool
	}{{"one transaction", 0, false}, {"split", 3, false}, {"dry run", 0, true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(cli, testPrefix(t), DefaultLimits())
			if tc.maxOps > 0 {
				s.MaxTxnOps = tc.maxOps
			}
			o := testObjects()
			o.Sites = append(o.Sites, &pb.Site{Name: "zz"}, &pb.Site{Name: "zz", ClientPrefixes: []string{"10.9.0.0/16"}})
			_, err := s.Apply(context.Background(), o, tc.dry)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "sites[3] (zz).name: listed twice (also sites[2])") {
				t.Fatalf("apply: %v, want ErrInvalid naming sites[3]", err)
			}
			if got, err := s.Get(context.Background(), "", ""); err != nil || len(got.GetSites())+len(got.GetMirrors())+len(got.GetResources()) != 0 {
				t.Fatalf("written after a refused apply: %v, %v", got, err)
			}
		})
	}
}

func TestDesiredWriteIsFenced(t *testing.T) {
	cli := etcdClient(t)
	defer cli.Close()
	s := NewStore(cli, testPrefix(t), DefaultLimits())
	ctx := context.Background()
	resp, err := cli.Put(ctx, s.key(keyElection, "leader"), "me")
	if err != nil {
		t.Fatal(err)
	}
	f := fence{key: s.key(keyElection, "leader"), rev: resp.Header.Revision}
	b, err := pack(&pb.DesiredRecord{State: &pb.DesiredState{Version: 1}})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := s.writeDesired(ctx, f, 0, b)
	if err != nil {
		t.Fatal(err)
	}
	// A stale expectation of the previous write is refused.
	if _, err := s.writeDesired(ctx, f, 0, b); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("second write on a stale revision: %v", err)
	}
	// A deposed leader (its key gone) cannot write.
	if _, err := cli.Delete(ctx, f.key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.writeDesired(ctx, f, rev, b); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("write after losing the election key: %v", err)
	}
	rec, _, err := s.readDesired(ctx)
	if err != nil || rec.GetState().GetVersion() != 1 {
		t.Fatalf("%v %v", rec, err)
	}
	// A corrupt record is an error, never a state.
	if _, err := cli.Put(ctx, s.key(keyDesired), "garbage"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.readDesired(ctx); err == nil {
		t.Fatal("corrupt desired record accepted")
	}
}

// FuzzUnpack: stored records are decompressed and decoded defensively.
func FuzzUnpack(f *testing.F) {
	b, err := pack(&pb.DesiredRecord{State: &pb.DesiredState{Version: 3, Regions: []*pb.RegionState{{Name: "eu", Id: 1}}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var rec pb.DesiredRecord
		_ = unpack(b, &rec)
	})
}

// beforeCommitKV calls before (once) just before a transaction commits.
type beforeCommitKV struct {
	clientv3.KV
	before func()
}

func (k *beforeCommitKV) Txn(ctx context.Context) clientv3.Txn {
	return &beforeCommitTxn{Txn: k.KV.Txn(ctx), k: k}
}

type beforeCommitTxn struct {
	clientv3.Txn
	k *beforeCommitKV
}

func (t *beforeCommitTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *beforeCommitTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *beforeCommitTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}
func (t *beforeCommitTxn) Commit() (*clientv3.TxnResponse, error) {
	if f := t.k.before; f != nil {
		t.k.before = nil
		f()
	}
	return t.Txn.Commit()
}

// ApplyIf is a compare-and-swap on the revision the objects were read
// at: an edit that lands after the read, whether before ApplyIf reads the
// objects again or between that read and its commit, makes it fail with
// ErrStale (codes.Aborted) and write nothing, so a read-modify-write such
// as drain does not overwrite it with what it read.
func TestApplyIfRefusesEditsAfterTheRevisionRead(t *testing.T) {
	other := etcdClient(t)
	defer other.Close()
	cli := etcdClient(t)
	defer cli.Close()
	hook := &beforeCommitKV{KV: cli.KV}
	cli.KV = hook
	prefix := testPrefix(t)
	s, o := NewStore(cli, prefix, DefaultLimits()), NewStore(other, prefix, DefaultLimits())
	ctx := context.Background()
	if _, err := o.Apply(ctx, testObjects(), false); err != nil {
		t.Fatal(err)
	}
	paris := func(st *Store) (*pb.Mirror, int64) {
		t.Helper()
		objs, rev, err := st.GetRev(ctx, KindMirror, "paris")
		if err != nil {
			t.Fatal(err)
		}
		return objs.GetMirrors()[0], rev
	}
	edit := func(capacity float64) {
		t.Helper()
		m, _ := paris(o)
		m.CapacityRps = capacity
		if _, err := o.Apply(ctx, &pb.Objects{Mirrors: []*pb.Mirror{m}}, false); err != nil {
			t.Fatal(err)
		}
	}
	drain := func(m *pb.Mirror, rev int64, dry bool) error {
		m.State = pb.MirrorState_MIRROR_STATE_DRAINING
		_, err := s.ApplyIf(ctx, &pb.Objects{Mirrors: []*pb.Mirror{m}}, dry, rev)
		return err
	}
	for _, tc := range []struct {
		name  string
		dry   bool
		hook  bool // the edit lands between ApplyIf's own read and its commit
		edits float64
	}{
		{"edit before the apply", false, false, 7001},
		{"edit before the dry run", true, false, 7002},
		{"edit between the apply's read and its commit", false, true, 7003},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, rev := paris(s)
			if tc.hook {
				hook.before = func() { edit(tc.edits) }
			} else {
				edit(tc.edits)
			}
			err := drain(m, rev, tc.dry)
			if !errors.Is(err, ErrStale) || status.Code(grpcError(err)) != codes.Aborted {
				t.Fatalf("apply on revision %d after an edit: %v", rev, err)
			}
			if got, _ := paris(o); got.GetCapacityRps() != tc.edits || got.GetState() == pb.MirrorState_MIRROR_STATE_DRAINING {
				t.Fatalf("paris after a refused drain: %v", got)
			}
		})
	}
	// Read again: it applies, over the edit.
	m, rev := paris(s)
	if err := drain(m, rev, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := paris(o); got.GetCapacityRps() != 7003 || got.GetState() != pb.MirrorState_MIRROR_STATE_DRAINING {
		t.Fatalf("paris after the drain: %v", got)
	}
}

// An apply whose etcd request would exceed etcd's request limit because
// of an object too large for a transaction of its own is refused before
// anything is written, as invalid (a client must not retry it as it
// would an unavailable etcd), naming the size, the limit and the object;
// the limit applies to each transaction commit splits the apply into,
// and many objects beyond it together are split by size
// (TestApplySplitsBySize). Before, etcd (or the client's send limit)
// refused it and the admin API answered Unavailable.
func TestApplyBeyondEtcdRequestLimitRefused(t *testing.T) {
	// n sites of 50 node names of 249 bytes: about 12.3 KiB per site, in
	// one etcd transaction by default.
	sites := func(n int) []*pb.Site {
		out := make([]*pb.Site, n)
		for i := range out {
			out[i] = &pb.Site{Name: fmt.Sprintf("s-%05d", i)}
			for j := range 50 {
				out[i].Nodes = append(out[i].Nodes, fmt.Sprintf("n%0248d", i*50+j))
			}
		}
		return out
	}
	// One site of n node names of 249 bytes, after two of sites'.
	big := func(n int) []*pb.Site {
		s := &pb.Site{Name: "big"}
		for j := range n {
			s.Nodes = append(s.Nodes, fmt.Sprintf("b%0248d", j))
		}
		return append(sites(2), s)
	}
	for _, tc := range []struct {
		name   string
		limit  int // 0: the default, the embedded etcd's limit
		maxOps int
		sites  []*pb.Site
		want   string // in the error; "": accepted
	}{
		{name: "an object beyond the embedded etcd's 10 MiB", sites: big(43000),
			want: `above the etcd request limit of 10485760 bytes (--etcd-max-request-bytes); the largest object is site "big"`},
		{name: "an object beyond an external etcd's 1.5 MiB", limit: 3 << 19, sites: big(6500),
			want: `above the etcd request limit of 1572864 bytes (--etcd-max-request-bytes); the largest object is site "big"`},
		{name: "objects beyond the embedded etcd's 10 MiB together, split by size", sites: sites(860)},
		{name: "objects beyond an external etcd's 1.5 MiB together, split by size", limit: 3 << 19, sites: sites(130)},
		{name: "split in transactions each within the limit", limit: 3 << 19, maxOps: 131, sites: sites(130)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli := etcdClient(t)
			defer cli.Close()
			s := NewStore(cli, testPrefix(t), DefaultLimits())
			if tc.limit > 0 {
				s.MaxRequestBytes = tc.limit
			}
			if tc.maxOps > 0 {
				s.MaxTxnOps = tc.maxOps
			}
			for _, dry := range []bool{false, true} {
				_, err := s.Apply(context.Background(), &pb.Objects{Sites: tc.sites}, dry)
				if tc.want == "" {
					if err != nil {
						t.Fatalf("dry run %v: %v", dry, err)
					}
					continue
				}
				if status.Code(grpcError(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("dry run %v: %v (%v), want InvalidArgument with %q", dry, err, status.Code(grpcError(err)), tc.want)
				}
				if !regexp.MustCompile(`: \d+ bytes to write in one etcd request`).MatchString(err.Error()) {
					t.Fatalf("the error does not name the request's size: %v", err)
				}
			}
			got, err := s.Get(context.Background(), "", "")
			want := 0
			if tc.want == "" {
				want = len(tc.sites)
			}
			if err != nil || len(got.GetSites()) != want {
				t.Fatalf("%d sites stored (want %d), %v", len(got.GetSites()), want, err)
			}
		})
	}
}

// TestApplyIfRefusesSplit: an apply larger than one transaction is
// written in parts, which a condition on the revision cannot cover (an
// edit between the parts would fail the condition after the first part
// was written), so a conditional one is refused whole.
func TestApplyIfRefusesSplit(t *testing.T) {
	cli := etcdClient(t)
	defer cli.Close()
	s := NewStore(cli, testPrefix(t), DefaultLimits())
	ctx := context.Background()
	if _, err := s.Apply(ctx, testObjects(), false); err != nil {
		t.Fatal(err)
	}
	objs, rev, err := s.GetRev(ctx, KindMirror, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.GetMirrors()) < 2 {
		t.Fatalf("test objects hold %d mirrors, want 2 or more", len(objs.GetMirrors()))
	}
	for _, m := range objs.GetMirrors() {
		m.State = pb.MirrorState_MIRROR_STATE_DRAINING
	}
	s.MaxTxnOps = 3 // one object per transaction
	_, err = s.ApplyIf(ctx, objs, false, rev)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "must fit one etcd transaction") {
		t.Fatalf("conditional apply in %d parts: %v, want refused as invalid", len(objs.GetMirrors()), err)
	}
	after, _, err := s.GetRev(ctx, KindMirror, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range after.GetMirrors() {
		if m.GetState() == pb.MirrorState_MIRROR_STATE_DRAINING {
			t.Errorf("mirror %s written by a refused apply", m.GetName())
		}
	}
	// Unconditional, the same apply is split and written.
	if _, err := s.ApplyIf(ctx, objs, false, 0); err != nil {
		t.Fatalf("unconditional split apply: %v", err)
	}
}

// The refusal of a conditional apply that would be split says, as an
// ErrorInfo of the admin API's status, how many of its objects one
// transaction holds: drain applies that many at a time, each batch
// conditional on a read of its own.
func TestApplyIfSplitSaysObjectsPerTransaction(t *testing.T) {
	cli := etcdClient(t)
	defer cli.Close()
	s := NewStore(cli, testPrefix(t), DefaultLimits())
	ctx := context.Background()
	o := testObjects()
	for i := range 6 {
		o.Mirrors = append(o.Mirrors, &pb.Mirror{Name: fmt.Sprintf("m-%d", i), Site: "eu", Address: fmt.Sprintf("192.0.2.%d", 100+i)})
	}
	if _, err := s.Apply(ctx, o, false); err != nil {
		t.Fatal(err)
	}
	objs, rev, err := s.GetRev(ctx, KindMirror, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range objs.GetMirrors() {
		m.State = pb.MirrorState_MIRROR_STATE_DRAINING
	}
	s.MaxTxnOps = 7 // three objects per transaction
	_, err = s.ApplyIf(ctx, objs, true, rev)
	var split *SplitError
	if !errors.As(err, &split) || !errors.Is(err, ErrInvalid) || split.PerTxn != 3 || split.Objects != len(objs.GetMirrors()) {
		t.Fatalf("conditional apply of %d mirrors, 3 per transaction: %v (%+v)", len(objs.GetMirrors()), err, split)
	}
	st := status.Convert(grpcError(err))
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if x, ok := d.(*errdetails.ErrorInfo); ok {
			info = x
		}
	}
	if st.Code() != codes.InvalidArgument || info.GetReason() != ReasonApplySplit || info.GetDomain() != ErrorDomain ||
		info.GetMetadata()[MetaObjectsPerTxn] != "3" {
		t.Fatalf("admin API status: %v, details %v", st.Code(), st.Details())
	}
	// Three at a time, each conditional on its own read, they apply.
	for len(objs.GetMirrors()) > 0 {
		n := min(3, len(objs.GetMirrors()))
		if _, err := s.ApplyIf(ctx, &pb.Objects{Mirrors: objs.Mirrors[:n]}, false, rev); err != nil {
			t.Fatalf("batch of %d: %v", n, err)
		}
		objs.Mirrors = objs.Mirrors[n:]
		if _, rev, err = s.GetRev(ctx, KindMirror, ""); err != nil {
			t.Fatal(err)
		}
	}
	after, _, err := s.GetRev(ctx, KindMirror, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range after.GetMirrors() {
		if m.GetState() != pb.MirrorState_MIRROR_STATE_DRAINING {
			t.Errorf("mirror %s: %v", m.GetName(), m.GetState())
		}
	}
}

// recordingKV records the request bytes (requestBytes) of each
// transaction committed through it.
type recordingKV struct {
	clientv3.KV
	sizes []int
}

func (k *recordingKV) Txn(ctx context.Context) clientv3.Txn {
	return &recordingTxn{Txn: k.KV.Txn(ctx), k: k}
}

type recordingTxn struct {
	clientv3.Txn
	k   *recordingKV
	ops []clientv3.Op
}

func (t *recordingTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *recordingTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.ops = append(t.ops, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *recordingTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }
func (t *recordingTxn) Commit() (*clientv3.TxnResponse, error) {
	t.k.sizes = append(t.k.sizes, requestBytes(t.ops))
	return t.Txn.Commit()
}

// An apply beyond etcd's request limit only because of its number of
// objects is split by size, as it is by count, into transactions each
// within the limit, in order (sites first); one object that alone
// exceeds the limit is still refused whole, naming it. Before, the whole
// apply was refused as soon as its one transaction exceeded the limit.
func TestApplySplitsBySize(t *testing.T) {
	// A site of 50 node names of 249 bytes: about 12.3 KiB.
	site := func(name string, nodes int) *pb.Site {
		s := &pb.Site{Name: name}
		for j := range nodes {
			s.Nodes = append(s.Nodes, fmt.Sprintf("%s-%0240d", name, j))
		}
		return s
	}
	const limit = 3 << 19 // an external etcd's 1.5 MiB
	cli := etcdClient(t)
	defer cli.Close()
	rec := &recordingKV{KV: cli.KV}
	cli.KV = rec
	s := NewStore(cli, testPrefix(t), DefaultLimits())
	s.MaxRequestBytes = limit
	ctx := context.Background()

	o := &pb.Objects{}
	for i := range 200 { // 2.4 MiB in all
		o.Sites = append(o.Sites, site(fmt.Sprintf("s-%03d", i), 50))
	}
	o.Mirrors = []*pb.Mirror{{Name: "m", Site: "s-199", Address: "192.0.2.1"}}
	if _, err := s.Apply(ctx, o, true); err != nil {
		t.Fatalf("dry run of 200 sites of 12 KiB under a %d-byte limit: %v", limit, err)
	}
	if len(rec.sizes) != 0 {
		t.Fatalf("a dry run committed %d transactions", len(rec.sizes))
	}
	if _, err := s.Apply(ctx, o, false); err != nil {
		t.Fatalf("apply of 200 sites of 12 KiB under a %d-byte limit: %v", limit, err)
	}
	if len(rec.sizes) < 2 {
		t.Fatalf("%d transactions written, want the apply split by size", len(rec.sizes))
	}
	for _, n := range rec.sizes {
		if n > limit {
			t.Errorf("a transaction of %d bytes, above the limit %d: %v", n, limit, rec.sizes)
		}
	}
	got, err := s.Get(ctx, "", "")
	if err != nil || len(got.GetSites()) != 200 || len(got.GetMirrors()) != 1 {
		t.Fatalf("%d sites, %d mirrors stored, %v", len(got.GetSites()), len(got.GetMirrors()), err)
	}

	// One object beyond the limit: refused whole, small ones with it.
	rec.sizes = nil
	big := site("big", 6500) // about 1.6 MB
	for _, dry := range []bool{true, false} {
		_, err = s.Apply(ctx, &pb.Objects{Sites: []*pb.Site{site("small-1", 1), big, site("small-2", 1)}}, dry)
		if status.Code(grpcError(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "above the etcd request limit of 1572864 bytes") ||
			!regexp.MustCompile(`: \d+ bytes to write in one etcd request`).MatchString(err.Error()) ||
			!strings.Contains(err.Error(), `the largest object is site "big" (`) {
			t.Fatalf("dry run %v: apply with one object beyond the limit: %v", dry, err)
		}
	}
	if len(rec.sizes) != 0 {
		t.Fatalf("a refused apply committed %d transactions", len(rec.sizes))
	}
	if got, err := s.Get(ctx, KindSite, ""); err != nil || len(got.GetSites()) != 200 {
		t.Fatalf("%d sites stored after a refused apply, %v", len(got.GetSites()), err)
	}
}
