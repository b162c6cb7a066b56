package controller

import (
	"context"
	"errors"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/premirror/premirror/api/premirror/v1"
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
		return status.Errorf(codes.PermissionDenied, "certificate %q may not change objects (admins: %s)", cn, strings.Join(s.c.cfg.AdminNames, ", "))
	}
	return nil
}

func grpcError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrConflict):
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
	changes, err := s.c.store.Apply(ctx, req.GetObjects(), req.GetDryRun())
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
	if err := s.c.store.Delete(ctx, req.GetKind(), req.GetName()); err != nil {
		return nil, grpcError(err)
	}
	s.c.log.Info("object deleted", "by", peerName(ctx), "kind", req.GetKind(), "name", req.GetName())
	return &pb.DeleteResponse{}, nil
}

// Get implements pb.AdminServer.
func (s *adminService) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	o, err := s.c.store.Get(ctx, req.GetKind(), req.GetName())
	if err != nil {
		return nil, grpcError(err)
	}
	return &pb.GetResponse{Objects: o}, nil
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
