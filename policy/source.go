package policy

import "strings"

// SourceAPI is the Source of a rollout applied through the policy API.
const SourceAPI = "api"

const sourceFilePrefix = "file:"

// FileSource is the Source of a rollout read from the plan file path.
func FileSource(path string) string { return sourceFilePrefix + path }

// SourceFile returns the plan file of a file-sourced rollout.
func SourceFile(source string) (path string, ok bool) {
	return strings.CutPrefix(source, sourceFilePrefix)
}
