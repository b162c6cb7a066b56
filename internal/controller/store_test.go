package controller

import (
	"context"
	"errors"
	"strings"
	"testing"

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
