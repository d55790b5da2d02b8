package policy

import (
	"fmt"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// wholeNumberProblems finds YAML floats written where the plan wants a whole
// number. yaml.v3 truncates them silently (weight: 10.9 would decode as 10),
// so they are looked for in the node tree, against the Go type each field
// decodes into, and refused.
func wholeNumberProblems(n *yaml.Node, t reflect.Type, path, file string) Problems {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var ps Problems
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			ps = append(ps, wholeNumberProblems(c, t, path, file)...)
		}
	case yaml.MappingNode:
		if t.Kind() != reflect.Struct {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if ft, ok := yamlField(t, k.Value); ok {
				ps = append(ps, wholeNumberProblems(v, ft, joinPath(path, k.Value), file)...)
			}
		}
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice {
			return nil
		}
		for i, c := range n.Content {
			ps = append(ps, wholeNumberProblems(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), file)...)
		}
	case yaml.ScalarNode:
		if n.Tag == "!!float" && isIntKind(t.Kind()) {
			ps = append(ps, Problem{File: file, Field: path, Msg: fmt.Sprintf("must be a whole number, got %s", n.Value)})
		}
	}
	return ps
}

func yamlField(t reflect.Type, key string) (reflect.Type, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == key {
			return f.Type, true
		}
	}
	return nil, false
}

func isIntKind(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}
