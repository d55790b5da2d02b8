package api

import "github.com/shiftplane/shiftplane/policy"

// MaxMessageBytes is the gRPC message size the policy API server and its
// clients (shiftctl, replica forwarding) accept, both ways. The largest plan
// validation accepts (policy.MaxEndpoints per backend, policy.MaxDomains of
// policy.MaxDomainLen, policy.MaxSteps) is about 100 KB as a message, so
// gRPC's 4 MiB default would cut `list` off at some 40 such rollouts; 64 MiB
// carries over 600 of them in one List answer.
const MaxMessageBytes = 64 << 20

// The size of the largest plan is what MaxMessageBytes is chosen against.
var _ = policy.MaxEndpoints
