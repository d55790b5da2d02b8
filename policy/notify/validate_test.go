package notify_test

import (
	"strings"
	"testing"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/notify"
)

func TestValidateNamesTheField(t *testing.T) {
	for name, tc := range map[string]struct {
		sinks []notify.SinkConfig
		allow []string
		want  string // "" = valid
	}{
		"loopback by default":   {sinks: []notify.SinkConfig{{URL: "http://127.0.0.1:9/x"}}},
		"allowed host":          {sinks: []notify.SinkConfig{{URL: "https://hooks.slack.com/x", Format: "slack"}}, allow: []string{"hooks.slack.com"}},
		"host not allowed":      {sinks: []notify.SinkConfig{{URL: "https://example.com/x"}}, want: `notifications[0].url: host "example.com" is not in notify.allowHosts`},
		"no url":                {sinks: []notify.SinkConfig{{}}, want: "notifications[0].url: must be set"},
		"not http":              {sinks: []notify.SinkConfig{{URL: "ftp://127.0.0.1/"}}, want: "notifications[0].url: must be an http or https URL"},
		"bad format":            {sinks: []notify.SinkConfig{{URL: "http://127.0.0.1/", Format: "xml"}}, want: "notifications[0].format: must be json or slack"},
		"unknown event":         {sinks: []notify.SinkConfig{{URL: "http://127.0.0.1/"}, {URL: "http://127.0.0.1/", Events: []string{"hold", "phases"}}}, want: `notifications[1].events[1]: unknown event "phases"`},
		"bad rollout pattern":   {sinks: []notify.SinkConfig{{URL: "http://127.0.0.1/", Rollouts: []string{"[a"}}}, want: "notifications[0].rollouts[0]: bad pattern"},
		"duplicate name":        {sinks: []notify.SinkConfig{{Name: "a", URL: "http://127.0.0.1/"}, {Name: "a", URL: "http://127.0.0.1/"}}, want: `notifications[1].name: "a" is also the name of notifications[0]`},
		"secret and secretFile": {sinks: []notify.SinkConfig{{URL: "http://127.0.0.1/", Secret: "x", SecretFile: "/nonexistent"}}, want: "notifications[0].secret: give secret or secretFile"},
		"missing secretFile":    {sinks: []notify.SinkConfig{{URL: "http://127.0.0.1/", SecretFile: "/nonexistent"}}, want: "notifications[0].secretFile:"},
	} {
		t.Run(name, func(t *testing.T) {
			err := notify.Validate(tc.sinks, tc.allow)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	for name, tc := range map[string]struct {
		ev   policy.Event
		want string
	}{
		"created":      {policy.Event{To: policy.PhasePending, Reason: "created from api"}, "phase"},
		"step":         {policy.Event{From: policy.PhaseProgressing, To: policy.PhaseProgressing, Reason: "step 1: weight 20"}, "step"},
		"hold on nack": {policy.Event{From: policy.PhaseProgressing, To: policy.PhaseHolding, Reason: "fleet rejected route version 7: e1: bad"}, "phase,hold,nack"},
		"rollback":     {policy.Event{From: policy.PhaseHolding, To: policy.PhaseRollingBack, Reason: "signal fired"}, "phase,rollback"},
		"aborted":      {policy.Event{From: policy.PhaseRollingBack, To: policy.PhaseAborted}, "phase,rollback"},
		"success":      {policy.Event{From: policy.PhasePromoting, To: policy.PhaseSucceeded}, "phase,success"},
		"hook failed":  {policy.Event{From: policy.PhasePending, To: policy.PhaseFailed, Reason: "beforeShift hook failed, no traffic moved"}, "phase,hookFailure"},
		"hook running": {policy.Event{From: policy.PhasePending, To: policy.PhasePending, Reason: "running 1 beforeShift hook(s)"}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, k := range notify.Classify(tc.ev) {
				got = append(got, string(k))
			}
			if strings.Join(got, ",") != tc.want {
				t.Fatalf("Classify = %v, want %s", got, tc.want)
			}
		})
	}
}
