package api

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shiftplane/shiftplane/policy"
)

// invalidPlan answers a plan's problems with INVALID_ARGUMENT: every
// problem in the message, and each as a google.rpc.BadRequest field
// violation named by its YAML/JSON path.
func invalidPlan(name string, ps policy.Problems) error {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	prefix := "invalid plan"
	if name != "" {
		prefix = fmt.Sprintf("invalid plan %q", name)
	}
	return badRequest(prefix+": "+strings.Join(lines, "; "), ps)
}

// invalidField answers one bad request field with INVALID_ARGUMENT.
func invalidField(field, format string, args ...any) error {
	p := policy.Problem{Field: field, Msg: fmt.Sprintf(format, args...)}
	return badRequest(p.String(), policy.Problems{p})
}

func badRequest(msg string, ps policy.Problems) error {
	st := status.New(codes.InvalidArgument, msg)
	br := &errdetails.BadRequest{}
	for _, p := range ps {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: p.Field, Description: p.Msg})
	}
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// notFound is the answer for an unknown rollout name.
func notFound(name string) error {
	return status.Errorf(codes.NotFound, "rollout %q not found", name)
}

// toStatus maps an engine error to a gRPC status: the engine's sentinels to
// their codes, plan problems to INVALID_ARGUMENT, anything else (the store
// or a publish failed) to INTERNAL.
func toStatus(name string, err error) error {
	var ps policy.Problems
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ps):
		return invalidPlan(name, ps)
	case errors.Is(err, policy.ErrNotFound):
		return notFound(name)
	case errors.Is(err, policy.ErrStore):
		return status.Error(codes.Unavailable, err.Error()+"; nothing was changed")
	case errors.Is(err, policy.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, strings.TrimPrefix(err.Error(), policy.ErrFailedPrecondition.Error()+": "))
	}
	return status.Errorf(codes.Internal, "rollout %q: %v", name, err)
}
