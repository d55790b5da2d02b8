package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// SourcedPlan is a plan and the file it came from.
type SourcedPlan struct {
	Plan Plan
	File string
}

// ParseYAML reads every plan document in data. Unknown fields and type
// mismatches are problems naming the field path. file is used only in
// messages. It does not validate the plans' values; see Plan.Validate.
func ParseYAML(data []byte, file string) ([]Plan, Problems) {
	docs, ps := parseDocs(data, file)
	var plans []Plan
	for _, d := range docs {
		ps = append(ps, d.problems...)
		if len(d.problems) == 0 {
			plans = append(plans, d.plan)
		}
	}
	return plans, ps
}

// ParseAndValidate parses every plan document in data and validates each
// plan on its own (not as a set). A field that failed to decode is reported
// once, not again by validation.
func ParseAndValidate(data []byte, file string, opts ValidateOptions) ([]Plan, Problems) {
	docs, ps := parseDocs(data, file)
	var plans []Plan
	for _, d := range docs {
		bad := map[string]bool{}
		for _, p := range d.problems {
			bad[p.Field] = true
		}
		ps = append(ps, d.problems...)
		for _, p := range d.plan.Validate(opts) {
			if !bad[p.Field] {
				p.File = file
				ps = append(ps, p)
			}
		}
		plans = append(plans, d.plan)
	}
	return plans, ps
}

type parsedDoc struct {
	plan     Plan
	problems Problems
}

func parseDocs(data []byte, file string) ([]parsedDoc, Problems) {
	var (
		docs []parsedDoc
		ps   Problems
	)
	// Two decoders walk the same documents in step: one keeps the node tree
	// (for field paths), the other decodes strictly into Plan.
	nodes := yaml.NewDecoder(bytes.NewReader(data))
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	for doc := 1; ; doc++ {
		var node yaml.Node
		err := nodes.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			ps = append(ps, Problem{File: file, Msg: fmt.Sprintf("document %d: %v", doc, err)})
			break
		}
		var p Plan
		err = strict.Decode(&p)
		if len(node.Content) == 0 || (node.Content[0].Kind == yaml.ScalarNode && node.Content[0].Tag == "!!null") {
			continue // an empty document, e.g. after a trailing ---
		}
		var dp Problems
		if err != nil {
			dp = decodeProblems(&node, file, err)
		}
		for _, w := range wholeNumberProblems(&node, reflect.TypeOf(p), "", file) {
			if !hasField(dp, w.Field) { // yaml.v3 may have refused it already
				dp = append(dp, w)
			}
		}
		docs = append(docs, parsedDoc{plan: p, problems: dp})
	}
	return docs, ps
}

func hasField(ps Problems, field string) bool {
	for _, p := range ps {
		if p.Field == field {
			return true
		}
	}
	return false
}

// decodeProblems turns yaml.v3's "line N: ..." errors back into field paths.
func decodeProblems(node *yaml.Node, file string, err error) Problems {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return Problems{lineProblem(node, file, err.Error())}
	}
	var ps Problems
	for _, msg := range te.Errors {
		ps = append(ps, lineProblem(node, file, msg))
	}
	return ps
}

var (
	lineRE    = regexp.MustCompile(`^line (\d+)(?: column (\d+))?: (.*)$`)
	valueRE   = regexp.MustCompile("cannot unmarshal !!\\w+ `([^`]*)`")
	tagRE     = regexp.MustCompile(`cannot unmarshal !!(\w+)`)
	unknownRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
)

// lineProblem maps a yaml.v3 "line N: ..." message onto a field path; when
// the path cannot be found the line is kept in the message.
func lineProblem(root *yaml.Node, file, msg string) Problem {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return Problem{File: file, Msg: msg}
	}
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	text := m[3]
	if u := unknownRE.FindStringSubmatch(text); u != nil {
		if path := findKey(root, line, u[1], ""); path != "" {
			return Problem{File: file, Field: path, Msg: "unknown field"}
		}
		return Problem{File: file, Msg: fmt.Sprintf("line %d: unknown field %q", line, u[1])}
	}
	value := ""
	if v := valueRE.FindStringSubmatch(text); v != nil {
		value = v[1]
	}
	kind := yaml.ScalarNode
	if tg := tagRE.FindStringSubmatch(text); tg != nil {
		switch tg[1] {
		case "map":
			kind = yaml.MappingNode
		case "seq":
			kind = yaml.SequenceNode
		}
	}
	if path := findValue(root, line, col, kind, value, ""); path != "" {
		return Problem{File: file, Field: path, Msg: cleanTypeMsg(text)}
	}
	return Problem{File: file, Msg: msg}
}

func cleanTypeMsg(s string) string {
	// "cannot unmarshal !!str `abc` into int" → "must be int, got `abc`"
	if i := strings.Index(s, "cannot unmarshal !!"); i >= 0 {
		rest := s[i+len("cannot unmarshal !!"):]
		parts := strings.SplitN(rest, " into ", 2)
		if len(parts) == 2 {
			tag := strings.Fields(parts[0])[0]
			got := strings.TrimSpace(strings.TrimPrefix(parts[0], tag))
			switch {
			case tag == "map":
				got = "a mapping"
			case tag == "seq":
				got = "a list"
			case got == "":
				got = tag
			}
			return fmt.Sprintf("must be %s, got %s", friendlyType(parts[1]), got)
		}
	}
	return s
}

func friendlyType(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "policy."):
		return "a mapping"
	case strings.HasPrefix(t, "uint"):
		return "a whole number >= 0"
	case strings.HasPrefix(t, "int"):
		return "a whole number"
	case strings.HasPrefix(t, "float"):
		return "a number"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	}
	return t
}

func findKey(n *yaml.Node, line int, key, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p := findKey(c, line, key, path); p != "" {
				return p
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := joinPath(path, k.Value)
			if k.Line == line && k.Value == key {
				return kp
			}
			if p := findKey(v, line, key, kp); p != "" {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if p := findKey(c, line, key, fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
	}
	return ""
}

// findValue returns the path of the node of kind on line (and at col, when
// col > 0, and with text value, when value is not empty).
func findValue(n *yaml.Node, line, col int, kind yaml.Kind, value, path string) string {
	// yaml.v3 shortens long values in its messages to "abc...".
	prefix, short := strings.CutSuffix(value, "...")
	match := func(v *yaml.Node) bool {
		if v.Kind != kind || v.Line != line || (col > 0 && v.Column != col) {
			return false
		}
		return value == "" || v.Value == value || (short && strings.HasPrefix(v.Value, prefix))
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p := findValue(c, line, col, kind, value, path); p != "" {
				return p
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := joinPath(path, k.Value)
			if match(v) {
				return kp
			}
			if p := findValue(v, line, col, kind, value, kp); p != "" {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			ip := fmt.Sprintf("%s[%d]", path, i)
			if match(c) {
				return ip
			}
			if p := findValue(c, line, col, kind, value, ip); p != "" {
				return p
			}
		}
	}
	return ""
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// LoadPaths reads plans from files and folders (every *.yaml and *.yml in a
// folder, not recursive), validates each plan and the set, and returns them
// sorted by name. Problems name the file and the field.
func LoadPaths(paths []string, opts ValidateOptions) ([]SourcedPlan, Problems) {
	files, ps := expandPaths(paths)
	var out []SourcedPlan
	for _, f := range files {
		data, _, err := ReadPlanFile(f)
		if err != nil {
			ps = append(ps, ReadProblem(f, err))
			continue
		}
		plans, perr := ParseAndValidate(data, f, opts)
		ps = append(ps, perr...)
		for _, p := range plans {
			out = append(out, SourcedPlan{Plan: p, File: f})
		}
	}
	plans := make([]Plan, len(out))
	srcs := make([]string, len(out))
	for i, sp := range out {
		plans[i], srcs[i] = sp.Plan, sp.File
	}
	ps = append(ps, ValidateSet(plans, srcs)...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Plan.Name < out[j].Plan.Name })
	return out, ps
}

func expandPaths(paths []string) ([]string, Problems) {
	var files []string
	var ps Problems
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			ps = append(ps, Problem{File: p, Msg: err.Error()})
			continue
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			ps = append(ps, Problem{File: p, Msg: err.Error()})
			continue
		}
		for _, e := range entries {
			ext := filepath.Ext(e.Name())
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
	}
	return files, ps
}
