package main

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// loadWith loads the config from args with env set, as `serve` would.
func loadWith(t *testing.T, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	addConfigFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return loadConfig(fs)
}

func TestConfigSources(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeFile(t, dir, "token", "s3cret\n")
	file := writeFile(t, dir, "c.yaml", "engine:\n  tick: 250ms\nlog:\n  level: warn\nhooks:\n  allowExec: true\n  allowHosts: [hooks.internal]\n")
	other := writeFile(t, dir, "other.yaml", "engine:\n  tick: 3s\n")
	tests := map[string]struct {
		env  map[string]string
		args []string
		want func(c Config) any
		val  any
	}{
		"flag-named env var":               {env: map[string]string{"SHIFTPLANE_HOOKS_ALLOW_EXEC": "true"}, want: func(c Config) any { return c.Hooks.AllowExec }, val: true},
		"old env spelling still read":      {env: map[string]string{"SHIFTPLANE_HOOKS_ALLOWEXEC": "true"}, want: func(c Config) any { return c.Hooks.AllowExec }, val: true},
		"token file, new spelling":         {env: map[string]string{"SHIFTPLANE_API_TOKEN_FILE": tokenFile}, want: func(c Config) any { return c.API.TokenFile }, val: tokenFile},
		"token file, old spelling":         {env: map[string]string{"SHIFTPLANE_API_TOKENFILE": tokenFile}, want: func(c Config) any { return c.API.TokenFile }, val: tokenFile},
		"both spellings agreeing":          {env: map[string]string{"SHIFTPLANE_API_TOKENFILE": tokenFile, "SHIFTPLANE_API_TOKEN_FILE": tokenFile}, want: func(c Config) any { return c.API.TokenFile }, val: tokenFile},
		"client CA, new spelling":          {env: map[string]string{"SHIFTPLANE_API_TLS_CERT": "c.pem", "SHIFTPLANE_API_TLS_KEY": "k.pem", "SHIFTPLANE_API_TLS_CLIENT_CA": "ca.pem"}, want: func(c Config) any { return c.API.TLS.ClientCA }, val: "ca.pem"},
		"list from env":                    {env: map[string]string{"SHIFTPLANE_HOOKS_ALLOW_HOSTS": "a.example, b.example"}, want: func(c Config) any { return c.Hooks.AllowHosts }, val: []string{"a.example", "b.example"}},
		"duration from env":                {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "2s"}, want: func(c Config) any { return c.Engine.Tick }, val: 2 * time.Second},
		"duration from file":               {args: []string{"--config", file}, want: func(c Config) any { return c.Engine.Tick }, val: 250 * time.Millisecond},
		"env over file":                    {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "2s"}, args: []string{"--config", file}, want: func(c Config) any { return c.Engine.Tick }, val: 2 * time.Second},
		"flag over env":                    {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "2s"}, args: []string{"--engine-tick", "5s"}, want: func(c Config) any { return c.Engine.Tick }, val: 5 * time.Second},
		"file keeps what env lacks":        {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "2s"}, args: []string{"--config", file}, want: func(c Config) any { return c.Log.Level }, val: "warn"},
		"SHIFTPLANE_CONFIG names the file": {env: map[string]string{"SHIFTPLANE_CONFIG": file}, want: func(c Config) any { return c.Engine.Tick }, val: 250 * time.Millisecond},
		"--config over SHIFTPLANE_CONFIG":  {env: map[string]string{"SHIFTPLANE_CONFIG": file}, args: []string{"--config", other}, want: func(c Config) any { return c.Engine.Tick }, val: 3 * time.Second},
		"default":                          {want: func(c Config) any { return c.Engine.Tick }, val: time.Second},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := loadWith(t, tc.env, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.want(c); !reflect.DeepEqual(got, tc.val) {
				t.Errorf("got %#v, want %#v", got, tc.val)
			}
		})
	}
}

func TestConfigTraps(t *testing.T) {
	dir := t.TempDir()
	file := func(name, body string) string { return writeFile(t, dir, name, body) }
	bareTick := file("bare.yaml", "engine:\n  tick: 100\n")
	floatTick := file("float.yaml", "engine:\n  tick: 0.5\n")
	badLevel := file("level.yaml", "log:\n  level: loud\n")
	listTick := file("list.yaml", "signal:\n  scrapeEvery: [1s]\n")
	tests := map[string]struct {
		env  map[string]string
		args []string
		want []string
	}{
		"bare integer in a file": {args: []string{"--config", bareTick},
			want: []string{"engine.tick: 100 from " + bareTick + ": a bare number is not a duration (write e.g. 100ms or 1s)"}},
		"bare float in a file": {args: []string{"--config", floatTick},
			want: []string{"engine.tick: 0.5 from " + floatTick + ": a bare number is not a duration"}},
		"bare integer in env": {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "100"},
			want: []string{`engine.tick: "100" from SHIFTPLANE_ENGINE_TICK: a bare number is not a duration (write e.g. 100ms or 1s)`}},
		"bare integer as flag": {args: []string{"--engine-tick", "100"},
			want: []string{`engine.tick: "100" from --engine-tick: a bare number is not a duration`}},
		"word in env": {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "fast"},
			want: []string{`engine.tick: "fast" from SHIFTPLANE_ENGINE_TICK: not a duration`}},
		"list for a duration": {args: []string{"--config", listTick},
			want: []string{"signal.scrapeEvery: [1s] from " + listTick + ": not a duration"}},
		"bad bool in env": {env: map[string]string{"SHIFTPLANE_HOOKS_ALLOW_EXEC": "maybe"},
			want: []string{`hooks.allowExec: "maybe" from SHIFTPLANE_HOOKS_ALLOW_EXEC: not true or false`}},
		"spellings disagree": {env: map[string]string{"SHIFTPLANE_HOOKS_ALLOW_EXEC": "true", "SHIFTPLANE_HOOKS_ALLOWEXEC": "false"},
			want: []string{`hooks.allowExec: SHIFTPLANE_HOOKS_ALLOW_EXEC="true" and SHIFTPLANE_HOOKS_ALLOWEXEC="false" disagree`}},
		"every problem reported": {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "fast", "SHIFTPLANE_SIGNAL_SCRAPE_EVERY": "7"},
			want: []string{`engine.tick: "fast" from SHIFTPLANE_ENGINE_TICK`, `signal.scrapeEvery: "7" from SHIFTPLANE_SIGNAL_SCRAPE_EVERY`}},
		"validation names the env var": {env: map[string]string{"SHIFTPLANE_LOG_LEVEL": "loud"},
			want: []string{`log.level: must be debug, info, warn or error, got "loud" (log.level from SHIFTPLANE_LOG_LEVEL)`}},
		"validation names the file": {args: []string{"--config", badLevel},
			want: []string{`log.level: must be debug, info, warn or error, got "loud" (log.level from ` + badLevel + ")"}},
		"validation names the flag": {args: []string{"--http-address", "nowhere"},
			want: []string{`http.address: must be host:port, got "nowhere" (http.address from --http-address)`}},
		"zero duration": {env: map[string]string{"SHIFTPLANE_ENGINE_TICK": "0s"},
			want: []string{"engine.tick: must be > 0, got 0s (engine.tick from SHIFTPLANE_ENGINE_TICK)"}},
		"load reporting interval out of range": {args: []string{"--xds-load-reporting-interval", "10ms"},
			want: []string{"xds.loadReportingInterval: must be 100ms..1m, got 10ms (xds.loadReportingInterval from --xds-load-reporting-interval)"}},
		"unknown key names the file": {args: []string{"--config", file("unknown.yaml", "engine:\n  tik: 1s\n")},
			want: []string{"engine.tik: unknown key in " + filepath.Join(dir, "unknown.yaml") + ` (set to "1s")`}},
		"missing file from SHIFTPLANE_CONFIG": {env: map[string]string{"SHIFTPLANE_CONFIG": filepath.Join(dir, "nope.yaml")},
			want: []string{"config file " + filepath.Join(dir, "nope.yaml") + " (from SHIFTPLANE_CONFIG)"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := loadWith(t, tc.env, tc.args...)
			if err == nil {
				t.Fatalf("loaded without error; want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// The example server config sets every key to its default.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	fromFile, err := loadWith(t, nil, "--config", "../../examples/server/shiftplane.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defaults, err := loadWith(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defaults.Hooks.AllowHosts = fromFile.Hooks.AllowHosts // the file spells out loopback; the default is empty = loopback
	defaults.Notify.AllowHosts = fromFile.Notify.AllowHosts
	if len(fromFile.Notifications) == 0 {
		defaults.Notifications = fromFile.Notifications // an empty list in the file is no sinks, as the default
	}
	if !reflect.DeepEqual(fromFile, defaults) {
		t.Errorf("example config %+v\ndiffers from the defaults %+v", fromFile, defaults)
	}
}

// Every key has an environment name following its flag.
func TestEnvNames(t *testing.T) {
	tests := map[string]struct {
		key, flag string
		want      []string
	}{
		"same either way": {"xds.address", "xds-address", []string{"SHIFTPLANE_XDS_ADDRESS"}},
		"camel case key":  {"hooks.allowExec", "hooks-allow-exec", []string{"SHIFTPLANE_HOOKS_ALLOW_EXEC", "SHIFTPLANE_HOOKS_ALLOWEXEC"}},
		"nested":          {"api.tls.clientCA", "api-tls-client-ca", []string{"SHIFTPLANE_API_TLS_CLIENT_CA", "SHIFTPLANE_API_TLS_CLIENTCA"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := envNames(tc.key, tc.flag); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("envNames = %v, want %v", got, tc.want)
			}
		})
	}
}
