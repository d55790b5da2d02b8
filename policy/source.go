package policy

import "strings"

// SourceAPI is the Source of a rollout last applied through the policy API
// (or kept after the plan file that defined it went away).
const SourceAPI = "api"

// sourceFilePrefix starts the Source of a rollout applied from a plan file.
const sourceFilePrefix = "file:"

// FileSource is the Source of a rollout applied from the plan file at path.
func FileSource(path string) string { return sourceFilePrefix + path }

// SourceFile returns the plan file path of a FileSource, and false for any
// other source.
func SourceFile(source string) (string, bool) {
	return strings.CutPrefix(source, sourceFilePrefix)
}
