// Package proto_test checks that the committed Go code of the policy API
// matches its .proto sources.
//
// Running buf here would cost minutes on a cold module cache (buf is built
// from source), so this test works from a stamp instead: `make proto` records
// the tool versions and the SHA-256 of every input (.proto files, buf.yaml,
// buf.gen.yaml) and output (.pb.go files) in proto/generated.stamp, and this
// test recomputes it. A .proto edited without regenerating, a hand-edited or
// stray .pb.go, or a tool version bumped in Makefile.proto all fail it.
// `make proto-check` does the full regeneration and byte comparison.
package proto_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite proto/generated.stamp from the files as they are (make proto does this after generating)")

const stampFile = "generated.stamp"

// repoRoot is relative to this package's directory, where go test runs.
const repoRoot = ".."

func TestGeneratedStamp(t *testing.T) {
	got, err := computeStamp(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(stampFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(stampFile)
	if err != nil {
		t.Fatalf("%v: run 'make proto'", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("proto/%s is stale: the .proto files, the generated code or the tool versions changed without 'make proto'. Run 'make proto' and commit the result.\n%s",
			stampFile, lineDiff(string(want), string(got)))
	}
}

func TestComputeStampNoticesChanges(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("Makefile.proto", "BUF_VERSION := v1\nPROTOC_GEN_GO_VERSION := v2\nPROTOC_GEN_GO_GRPC_VERSION := v3\n")
	write("buf.yaml", "version: v2\n")
	write("buf.gen.yaml", "version: v2\n")
	write("proto/a/v1/a.proto", "syntax = \"proto3\";\n")
	write("proto/a/v1/a.pb.go", "package a\n")
	write("proto/a/v1/doc.go", "package a\n")
	base, err := computeStamp(dir)
	if err != nil {
		t.Fatal(err)
	}

	for name, tc := range map[string]struct {
		change  func()
		changes bool
	}{
		"proto edited":          {func() { write("proto/a/v1/a.proto", "syntax = \"proto3\";\n// x\n") }, true},
		"generated code edited": {func() { write("proto/a/v1/a.pb.go", "package a // x\n") }, true},
		"stray generated file":  {func() { write("proto/b/v1/b_grpc.pb.go", "package b\n") }, true},
		"generation config":     {func() { write("buf.gen.yaml", "version: v2\nplugins: []\n") }, true},
		"plugin version bumped": {func() {
			write("Makefile.proto", "BUF_VERSION := v1\nPROTOC_GEN_GO_VERSION := v9\nPROTOC_GEN_GO_GRPC_VERSION := v3\n")
		}, true},
		"hand-written Go changed": {func() { write("proto/a/v1/doc.go", "// Package a.\npackage a\n") }, false},
	} {
		t.Run(name, func(t *testing.T) {
			saved := snapshotDir(t, dir)
			t.Cleanup(func() { restoreDir(t, dir, saved) })
			tc.change()
			got, err := computeStamp(dir)
			if err != nil {
				t.Fatal(err)
			}
			if changed := !bytes.Equal(got, base); changed != tc.changes {
				t.Errorf("stamp changed = %v, want %v\n%s", changed, tc.changes, lineDiff(string(base), string(got)))
			}
		})
	}
}

// toolVersion matches the pins of Makefile.proto, e.g. `BUF_VERSION := v1.75.0`.
var toolVersion = regexp.MustCompile(`(?m)^(BUF|PROTOC_GEN_GO|PROTOC_GEN_GO_GRPC)_VERSION\s*:?=\s*(\S+)\s*$`)

// computeStamp returns the stamp for the repository at root: the tool
// versions, then one "sha256 HEX PATH" line per input and output file,
// sorted by path.
func computeStamp(root string) ([]byte, error) {
	mk, err := os.ReadFile(filepath.Join(root, "Makefile.proto"))
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("# Written by 'make proto', checked by 'go test ./proto'. Do not edit.\n")
	pins := toolVersion.FindAllSubmatch(mk, -1)
	if len(pins) != 3 {
		return nil, fmt.Errorf("Makefile.proto: want BUF_VERSION, PROTOC_GEN_GO_VERSION and PROTOC_GEN_GO_GRPC_VERSION, found %d pins", len(pins))
	}
	for _, m := range pins {
		fmt.Fprintf(&b, "tool %s %s\n", strings.ToLower(string(m[1])), m[2])
	}

	files := []string{"buf.yaml", "buf.gen.yaml"}
	err = filepath.WalkDir(filepath.Join(root, "proto"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, ".proto") || strings.HasSuffix(p, ".pb.go") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f)))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(&b, "sha256 %s %s\n", hex.EncodeToString(sum[:]), f)
	}
	return []byte(b.String()), nil
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	set := func(s string) map[string]bool {
		m := map[string]bool{}
		sc := bufio.NewScanner(strings.NewReader(s))
		for sc.Scan() {
			m[sc.Text()] = true
		}
		return m
	}
	w, g := set(want), set(got)
	var out []string
	for l := range w {
		if !g[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range g {
		if !w[l] {
			out = append(out, "+ "+l)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Compare(a[2:], b[2:]) })
	return strings.Join(out, "\n")
}

func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		m[p] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func restoreDir(t *testing.T, dir string, saved map[string][]byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if _, ok := saved[p]; !ok {
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, data := range saved {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
