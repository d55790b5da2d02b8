package api

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shiftplane/shiftplane/policy/planfiles"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// SourceLister is what SourceService reports: the plan paths being watched
// and the problems of the plan files rejected while serving.
// *planfiles.Files implements it; it must be safe for concurrent use.
type SourceLister interface {
	Paths() []string
	Errors() []planfiles.LoadError
}

var _ SourceLister = (*planfiles.Files)(nil)

// SourceService implements shiftplane.v1 SourceService over a SourceLister.
// It changes nothing and is safe for concurrent use.
type SourceService struct {
	shiftplanev1.UnimplementedSourceServiceServer
	src SourceLister
}

// NewSourceService returns a SourceService over src; a nil src reports no
// paths and no problems (a server run without --plan).
func NewSourceService(src SourceLister) *SourceService { return &SourceService{src: src} }

// Register serves SourceService on gs.
func (s *SourceService) Register(gs grpc.ServiceRegistrar) {
	shiftplanev1.RegisterSourceServiceServer(gs, s)
}

// ListSourceErrors implements SourceService.
func (s *SourceService) ListSourceErrors(context.Context, *shiftplanev1.ListSourceErrorsRequest) (*shiftplanev1.ListSourceErrorsResponse, error) {
	resp := &shiftplanev1.ListSourceErrorsResponse{}
	if s.src == nil {
		return resp, nil
	}
	resp.WatchedPaths = s.src.Paths()
	for _, e := range s.src.Errors() {
		resp.Errors = append(resp.Errors, &shiftplanev1.SourceError{
			File: e.File, Field: e.Field, Problem: e.Problem, Time: timestamppb.New(e.Time),
		})
	}
	return resp, nil
}
