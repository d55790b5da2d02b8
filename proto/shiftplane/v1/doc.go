// Package shiftplanev1 is the generated Go code of shiftplane's policy API
// (proto package shiftplane.v1): RolloutService, which shiftctl drives,
// FleetService, which reports the Envoys connected over xDS, and
// SourceService, which reports the plan files the server could not load.
//
// Everything here except this file is generated from the .proto files beside
// it by `make proto`; edit those and regenerate, never the .pb.go files.
package shiftplanev1
