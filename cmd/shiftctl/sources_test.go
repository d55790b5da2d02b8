package main

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

func TestSourceOutput(t *testing.T) {
	errs := []*shiftplanev1.SourceError{
		{File: "plans/bad.yaml", Field: "steps[1].weight", Problem: "must be within 0..100, got 120", Time: timestamppb.New(now.Add(-42 * time.Second))},
		{File: "plans/fifo.yaml", Problem: "not a regular file (fifo)", Time: timestamppb.New(now.Add(-3 * time.Minute))},
	}
	tests := map[string]struct {
		write func(*bytes.Buffer) error
		want  string
	}{
		"list warnings": {
			write: func(b *bytes.Buffer) error { return writeSourceWarnings(b, errs, now) },
			want: "warning: plans/bad.yaml: steps[1].weight: must be within 0..100, got 120 (rejected 42s ago)\n" +
				"warning: plans/fifo.yaml: not a regular file (fifo) (rejected 3m ago)\n" +
				"warning: 2 plan files rejected; their rollouts keep running the plans they had until they are fixed (shiftctl sources)\n",
		},
		"list without problems": {
			write: func(b *bytes.Buffer) error { return writeSourceWarnings(b, nil, now) },
			want:  "",
		},
		"sources": {
			write: func(b *bytes.Buffer) error {
				return writeSources(b, &shiftplanev1.ListSourceErrorsResponse{Errors: errs, WatchedPaths: []string{"plans", "extra.yaml"}}, now)
			},
			want: "watching plans, extra.yaml\n" +
				"FILE             FIELD            PROBLEM                         SINCE\n" +
				"plans/bad.yaml   steps[1].weight  must be within 0..100, got 120  42s\n" +
				"plans/fifo.yaml  -                not a regular file (fifo)       3m\n",
		},
		"sources all loaded": {
			write: func(b *bytes.Buffer) error {
				return writeSources(b, &shiftplanev1.ListSourceErrorsResponse{WatchedPaths: []string{"plans"}}, now)
			},
			want: "watching plans\nevery plan file loaded\n",
		},
		"sources without --plan": {
			write: func(b *bytes.Buffer) error { return writeSources(b, &shiftplanev1.ListSourceErrorsResponse{}, now) },
			want:  "no plan files are watched (serve was started without --plan)\n",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(&b); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tc.want)
			}
		})
	}
}
