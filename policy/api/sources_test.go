package api_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shiftplane/shiftplane/policy/api"
	"github.com/shiftplane/shiftplane/policy/planfiles"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

type fakeSources struct {
	paths []string
	errs  []planfiles.LoadError
}

func (f fakeSources) Paths() []string               { return f.paths }
func (f fakeSources) Errors() []planfiles.LoadError { return f.errs }

func TestListSourceErrors(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := map[string]struct {
		src  api.SourceLister
		want *shiftplanev1.ListSourceErrorsResponse
	}{
		"no --plan": {src: nil, want: &shiftplanev1.ListSourceErrorsResponse{}},
		"a rejected file": {
			src: fakeSources{paths: []string{"plans"}, errs: []planfiles.LoadError{
				{File: "plans/bad.yaml", Field: "steps[0].weight", Problem: "must be within 0..100, got 120", Time: at},
			}},
			want: &shiftplanev1.ListSourceErrorsResponse{WatchedPaths: []string{"plans"}, Errors: []*shiftplanev1.SourceError{
				{File: "plans/bad.yaml", Field: "steps[0].weight", Problem: "must be within 0..100, got 120", Time: timestamppb.New(at)},
			}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := api.NewSourceService(tc.src).ListSourceErrors(context.Background(), &shiftplanev1.ListSourceErrorsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("response = %v, want %v", got, tc.want)
			}
		})
	}
}
