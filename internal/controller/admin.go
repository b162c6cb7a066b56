package controller

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/forecast"
)

type adminService struct {
	pb.UnimplementedAdminServer
	c *Controller
}

// requireAdmin refuses writes from certificates that are not admins (an
// agent's certificate is valid for the session, not for objects).
func (s *adminService) requireAdmin(ctx context.Context) error {
	cn := peerName(ctx)
	if cn == "" {
		return status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	if !slices.Contains(s.c.cfg.AdminNames, cn) {
		// The admins' names stay in the log: a refused caller learns
		// nothing about whose certificate to steal.
		s.c.log.Warn("admin write refused", "certificate", cn, "admins", strings.Join(s.c.cfg.AdminNames, ","))
		return status.Errorf(codes.PermissionDenied, "certificate %q may not change objects (not in the controller's --admin-names)", cn)
	}
	return nil
}

// ReasonApplySplit is the ErrorInfo reason (domain ErrorDomain) of an
// apply with if_revision refused because it would take more than one
// etcd transaction; its metadata MetaObjectsPerTxn is how many of its
// objects one transaction holds.
const (
	ErrorDomain       = "premirror"
	ReasonApplySplit  = "CONDITIONAL_APPLY_SPLIT"
	MetaObjectsPerTxn = "objectsPerTransaction"
)

func grpcError(err error) error {
	var split *SplitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &split):
		st, derr := status.New(codes.InvalidArgument, err.Error()).WithDetails(&errdetails.ErrorInfo{
			Reason: ReasonApplySplit, Domain: ErrorDomain,
			Metadata: map[string]string{MetaObjectsPerTxn: strconv.Itoa(split.PerTxn)},
		})
		if derr != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		return st.Err()
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrConflict), errors.Is(err, ErrStale):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

// Apply implements pb.AdminServer.
func (s *adminService) Apply(ctx context.Context, req *pb.ApplyRequest) (*pb.ApplyResponse, error) {
	if err := s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	changes, err := s.c.store.ApplyIf(ctx, req.GetObjects(), req.GetDryRun(), req.GetIfRevision())
	if err != nil {
		return nil, grpcError(err)
	}
	for _, ch := range changes {
		if ch.GetAction() != "unchanged" && !req.GetDryRun() {
			s.c.log.Info("object applied", "by", peerName(ctx), "kind", ch.GetKind(), "name", ch.GetName(), "action", ch.GetAction(), "id", ch.GetId())
		}
	}
	return &pb.ApplyResponse{Changes: changes}, nil
}

// Delete implements pb.AdminServer.
func (s *adminService) Delete(ctx context.Context, req *pb.DeleteRequest) (*pb.DeleteResponse, error) {
	if err := s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	if req.GetKind() == kindNode {
		if err := s.c.forgetNode(ctx, req.GetName()); err != nil {
			return nil, err
		}
		s.c.log.Info("node forgotten", "by", peerName(ctx), "node", req.GetName())
		return &pb.DeleteResponse{}, nil
	}
	if err := s.c.store.Delete(ctx, req.GetKind(), req.GetName()); err != nil {
		return nil, grpcError(err)
	}
	s.c.log.Info("object deleted", "by", peerName(ctx), "kind", req.GetKind(), "name", req.GetName())
	return &pb.DeleteResponse{}, nil
}

// Get implements pb.AdminServer.
func (s *adminService) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	o, rev, err := s.c.store.GetRev(ctx, req.GetKind(), req.GetName())
	if err != nil {
		return nil, grpcError(err)
	}
	return &pb.GetResponse{Objects: o, Revision: rev}, nil
}

// Status implements pb.AdminServer.
func (s *adminService) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	v := s.c.view
	rec := v.desiredRecord()
	agents := v.agentsStatus()
	slices.SortFunc(agents, func(a, b *pb.AgentStatus) int { return strings.Compare(a.GetNode(), b.GetNode()) })
	return &pb.StatusResponse{
		Leader:          v.leader(),
		Version:         rec.GetState().GetVersion(),
		VersionUnixNano: rec.GetState().GetComputedUnixNano(),
		Agents:          agents,
		Routes:          rec.GetSummary(),
	}, nil
}

// Forecast implements pb.AdminServer.
func (s *adminService) Forecast(ctx context.Context, req *pb.ForecastRequest) (*pb.ForecastResponse, error) {
	if s.c.fc == nil {
		return nil, status.Error(codes.FailedPrecondition, ErrForecastDisabled.Error())
	}
	if req.GetResource() == "" {
		names, err := s.c.listForecasts(ctx)
		if err != nil {
			return nil, grpcError(err)
		}
		return &pb.ForecastResponse{Resources: names}, nil
	}
	sc, err := s.c.score(ctx, req.GetResource())
	if err != nil {
		return nil, forecastError(err)
	}
	return sc.response(), nil
}

// Explain implements pb.AdminServer.
func (s *adminService) Explain(ctx context.Context, req *pb.ExplainRequest) (*pb.ExplainResponse, error) {
	if s.c.fc == nil {
		return nil, status.Error(codes.FailedPrecondition, ErrForecastDisabled.Error())
	}
	if req.GetResource() == "" {
		return nil, status.Error(codes.InvalidArgument, "resource: missing")
	}
	sc, err := s.c.score(ctx, req.GetResource())
	if err != nil {
		return nil, forecastError(err)
	}
	return &pb.ExplainResponse{Text: s.c.explain(sc)}, nil
}

// Placements implements pb.AdminServer from this replica's view of the
// leader's records.
func (s *adminService) Placements(_ context.Context, req *pb.PlacementsRequest) (*pb.PlacementsResponse, error) {
	all := s.c.view.placements()
	resp := &pb.PlacementsResponse{}
	if name := req.GetResource(); name != "" {
		rec := all[name]
		if rec == nil {
			if s.c.view.resource(name) == nil {
				return nil, status.Errorf(codes.NotFound, "resource %q: %v", name, ErrNotFound)
			}
			rec = &pb.PlacementRecord{Resource: name}
		}
		resp.Records = []*pb.PlacementRecord{rec}
		return resp, nil
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		resp.Records = append(resp.Records, all[n])
	}
	return resp, nil
}

func forecastError(err error) error {
	switch {
	case errors.Is(err, ErrNoForecast):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrForecastDisabled):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return grpcError(err)
}

// maxFeedBytes bounds one feed file as received.
const maxFeedBytes = 32 << 20

// Feed implements pb.AdminServer: the file is parsed here as the engine
// will parse it, so a bad one is refused with its line (and column) before
// anything is stored; the leader applies stored feeds in order.
func (s *adminService) Feed(ctx context.Context, req *pb.FeedRequest) (*pb.FeedResponse, error) {
	if err := s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	c := s.c
	if c.fc == nil {
		return nil, status.Error(codes.FailedPrecondition, ErrForecastDisabled.Error())
	}
	kind := feedKindName(req.GetKind())
	name := req.GetName()
	if name == "" {
		name = kind
	}
	resp, err := checkFeed(req, c.cfg.Forecast.Engine.Step, c.cfg.Forecast.Engine.Covariates)
	if err != nil {
		c.m.fcFeeds.WithLabelValues(kind, "rejected").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "%s: %v", name, err)
	}
	now := time.Now()
	b, err := pack(&pb.FeedRecord{Kind: req.GetKind(), Csv: req.GetCsv(), Name: req.GetName(), By: peerName(ctx), WrittenUnixNano: now.UnixNano()})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if len(b) > c.cfg.Forecast.ValueBytes {
		c.m.fcFeeds.WithLabelValues(kind, "rejected").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "%s: %d bytes compressed exceed the %d a stored feed may take; split the file",
			name, len(b), c.cfg.Forecast.ValueBytes)
	}
	ops := []clientv3.Op{clientv3.OpPut(c.store.fkey(fmt.Sprintf("%s%020d-%s", fkeyFeeds, now.UnixNano(), kind)), string(b))}
	if req.GetKind() == pb.FeedKind_FEED_KIND_EVENTS {
		// A calendar replaces the previous one: older ones need not wait
		// for the leader's next checkpoint to go.
		old, err := c.cli.Get(ctx, c.store.fkey(fkeyFeeds), clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, grpcError(err)
		}
		for _, kv := range old.Kvs {
			if strings.HasSuffix(string(kv.Key), "-events") && len(ops) < max(2, c.store.MaxTxnOps) {
				ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			}
		}
	}
	tr, err := c.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, grpcError(fmt.Errorf("store feed: %w", err))
	}
	resp.Revision = tr.Header.Revision
	c.m.fcFeeds.WithLabelValues(kind, "stored").Inc()
	c.log.Info("feed stored", "by", peerName(ctx), "kind", kind, "name", name, "entries", resp.GetEntries(), "revision", resp.GetRevision())
	return resp, nil
}

// covariateRegionColumns are the header names the covariates parser takes
// for the region column (forecast's locationNames).
var covariateRegionColumns = []string{"location", "region", "borough", "loc", "site"}

// checkFeed parses a feed file as the engine would and describes it.
func checkFeed(req *pb.FeedRequest, step time.Duration, used []string) (*pb.FeedResponse, error) {
	if len(req.GetCsv()) == 0 {
		return nil, errors.New("empty file")
	}
	if len(req.GetCsv()) > maxFeedBytes {
		return nil, fmt.Errorf("%d bytes exceed %d; split the file", len(req.GetCsv()), maxFeedBytes)
	}
	switch req.GetKind() {
	case pb.FeedKind_FEED_KIND_EVENTS:
		ev, err := forecast.ReadEvents(bytes.NewReader(req.GetCsv()))
		if err != nil {
			return nil, err
		}
		if _, err := forecast.NewCalendar(ev); err != nil {
			return nil, err
		}
		return &pb.FeedResponse{Entries: uint32(len(ev))}, nil
	case pb.FeedKind_FEED_KIND_COVARIATES:
		if err := forecast.NewCovariates(step).ReadCSV(bytes.NewReader(req.GetCsv())); err != nil {
			return nil, err
		}
		// The file parsed: count its values and note the names no model
		// uses.
		cr := csv.NewReader(bytes.NewReader(req.GetCsv()))
		cr.TrimLeadingSpace = true
		head, err := cr.Read()
		if err != nil {
			return nil, err
		}
		resp := &pb.FeedResponse{}
		skip := map[int]bool{0: true}
		for i, h := range head {
			h = strings.ToLower(strings.TrimSpace(h))
			if i == 0 {
				continue
			}
			if slices.Contains(covariateRegionColumns, h) {
				skip[i] = true
				continue
			}
			if !slices.Contains(used, h) {
				resp.Unused = append(resp.Unused, h)
			}
		}
		for {
			row, err := cr.Read()
			if err != nil {
				break
			}
			for i, v := range row {
				if !skip[i] && strings.TrimSpace(v) != "" {
					resp.Entries++
				}
			}
		}
		return resp, nil
	}
	return nil, fmt.Errorf("kind: %v is not events or covariates", req.GetKind())
}

// kindNode is Delete's kind for an agent record (not an object).
const kindNode = "node"

// forgetNode removes a node's agent record: a decommissioned node
// otherwise stays in status, and an edge's outer sources in the desired
// state (its hosts would name it unlisted forever). A node with a live
// session is refused; one that connects later registers afresh.
func (c *Controller) forgetNode(ctx context.Context, node string) error {
	agent, live := c.store.key(keyAgents, node), c.store.key(keyLive, node)
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(live), "=", 0), clientv3.Compare(clientv3.CreateRevision(agent), ">", 0)).
		Then(clientv3.OpDelete(agent)).
		Else(clientv3.OpGet(live, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return grpcError(err)
	}
	if resp.Succeeded {
		return nil
	}
	if resp.Responses[0].GetResponseRange().GetCount() > 0 {
		return status.Errorf(codes.FailedPrecondition, "node %q is connected: stop its agent first", node)
	}
	return status.Errorf(codes.NotFound, "node %q: no agent record", node)
}
