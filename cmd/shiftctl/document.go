package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// A rollout document is what `get -o json|yaml` prints: the protojson of
// shiftplane.v1.Rollout with every status field, but in the words a person
// and a plan file use. Phases and signal states carry the names the tables
// show (PAUSED, CLEAR), durations are Go duration strings (status ones
// rounded), and `plan` is in plan-file form, so `apply -f` takes the
// document back: it applies `plan` and ignores the status around it, as
// kubectl ignores `status`.

// statusDurations are rounded for a reader; plan durations are kept exact.
var statusDurations = map[string]bool{"holdRemaining": true, "holdCounted": true}

// planDurations are the plan's duration fields.
var planDurations = map[string]bool{
	"hold": true, "interval": true, "baseEjectionTime": true, "every": true, "stableFor": true,
	"staleAfter": true, "rollbackAfter": true, "drainTimeout": true, "timeout": true,
}

// enumPrefixes are cut from enum names: PHASE_PAUSED is PAUSED everywhere.
var enumPrefixes = map[string]string{
	"phase": "PHASE_", "fromPhase": "PHASE_", "toPhase": "PHASE_", "state": "SIGNAL_STATE_",
}

// rolloutNode is r as a rollout document.
func rolloutNode(r *shiftplanev1.Rollout) (*yaml.Node, error) {
	status := proto.Clone(r).(*shiftplanev1.Rollout)
	status.Plan = nil
	doc, err := protoNode(status, protojson.MarshalOptions{EmitUnpopulated: true})
	if err != nil {
		return nil, err
	}
	plan, err := planNode(r.GetPlan())
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "plan" {
			doc.Content[i+1] = plan
		}
	}
	return doc, nil
}

// planNode is p in the plan file's form.
func planNode(p *shiftplanev1.Plan) (*yaml.Node, error) {
	if p == nil {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
	}
	n, err := protoNode(p, protojson.MarshalOptions{})
	if err != nil {
		return nil, err
	}
	execToArgv(n)
	return n, nil
}

// protoNode marshals m with o and parses the JSON into a YAML mapping in
// the JSON's field order, enums and durations rewritten.
func protoNode(m proto.Message, o protojson.MarshalOptions) (*yaml.Node, error) {
	b, err := o.Marshal(m)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, err
	}
	if n.Kind != yaml.DocumentNode || len(n.Content) != 1 {
		return nil, errors.New("unexpected protojson shape")
	}
	root := n.Content[0]
	rewrite(root)
	return root, nil
}

// rewrite walks n: block style, short enum names, Go durations; an unset
// message (null: a finished rollout's current observed step, a time not
// known yet) is left out rather than printed as null.
func rewrite(n *yaml.Node) {
	n.Style = 0
	if n.Kind == yaml.MappingNode {
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			// plan is the placeholder rolloutNode fills in.
			if v := n.Content[i+1]; v.Kind == yaml.ScalarNode && v.Tag == "!!null" && n.Content[i].Value != "plan" {
				continue
			}
			kept = append(kept, n.Content[i], n.Content[i+1])
		}
		n.Content = kept
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]
			if v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
				if p, ok := enumPrefixes[k]; ok {
					v.Value = strings.TrimPrefix(v.Value, p)
				}
				if statusDurations[k] || planDurations[k] {
					if d, err := time.ParseDuration(v.Value); err == nil {
						if statusDurations[k] {
							d = roundDuration(d)
						}
						v.Value = d.String()
					}
				}
			}
		}
	}
	for _, c := range n.Content {
		rewrite(c)
	}
}

// roundDuration keeps what a person can read: whole seconds from 10s,
// tenths below that, milliseconds under a second.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// execToArgv turns the proto's `exec: {argv: [...]}` into the plan file's
// `exec: [...]`.
func execToArgv(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			v := n.Content[i+1]
			if n.Content[i].Value == "exec" && v.Kind == yaml.MappingNode && len(v.Content) == 2 && v.Content[0].Value == "argv" {
				n.Content[i+1] = v.Content[1]
			}
		}
	}
	for _, c := range n.Content {
		execToArgv(c)
	}
}

// encodeYAML writes n as one block YAML document.
func encodeYAML(n *yaml.Node) ([]byte, error) {
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// encodeJSON writes n as indented JSON, keeping the mapping order.
func encodeJSON(n *yaml.Node) ([]byte, error) {
	var b bytes.Buffer
	if err := nodeJSON(&b, n); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func nodeJSON(b *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		b.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			k, _ := json.Marshal(n.Content[i].Value)
			b.Write(k)
			b.WriteByte(':')
			if err := nodeJSON(b, n.Content[i+1]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case yaml.SequenceNode:
		b.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := nodeJSON(b, c); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			b.WriteString("null")
		case "!!bool", "!!int", "!!float":
			if _, err := strconv.ParseFloat(n.Value, 64); err != nil && n.Tag != "!!bool" {
				return fmt.Errorf("number %q", n.Value)
			}
			b.WriteString(n.Value)
		default:
			s, _ := json.Marshal(n.Value)
			b.Write(s)
		}
	default:
		return fmt.Errorf("unexpected YAML node kind %d", n.Kind)
	}
	return nil
}

// planFromDocument returns the plan YAML that apply sends for one input
// document: a plan document as it is, or the `plan` of a rollout document
// (`get -o yaml|json`), whose status is ignored. A `{"items": [...]}` list
// (`list -o json`) yields one plan per item.
func planFromDocument(doc string) ([]string, error) {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &n); err != nil || n.Kind != yaml.DocumentNode || len(n.Content) != 1 {
		return []string{doc}, nil // the server names the YAML error
	}
	root := n.Content[0]
	if root.Kind != yaml.MappingNode {
		return []string{doc}, nil
	}
	if items := mapValue(root, "items"); items != nil && items.Kind == yaml.SequenceNode {
		var out []string
		for i, it := range items.Content {
			p := mapValue(it, "plan")
			if p == nil {
				return nil, fmt.Errorf("items[%d]: not a rollout document (no plan)", i)
			}
			plainStyle(p)
			b, err := encodeYAML(p)
			if err != nil {
				return nil, err
			}
			out = append(out, string(b))
		}
		return out, nil
	}
	if p := mapValue(root, "plan"); p != nil && p.Kind == yaml.MappingNode {
		plainStyle(p)
		b, err := encodeYAML(p)
		if err != nil {
			return nil, err
		}
		return []string{string(b)}, nil
	}
	return []string{doc}, nil
}

// plainStyle drops the flow style and quotes a JSON input parsed with, so
// the plan sent reads like a plan file.
func plainStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plainStyle(c)
	}
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}
