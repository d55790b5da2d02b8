package main

import (
	"html/template"
	"net/http"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/xds"
)

// stepOf is the 1-based "step 3/5" every surface shows.
func stepOf(i int) int { return i + 1 }

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{"step": stepOf}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>shiftplane</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
.bar{background:#eee;width:200px;height:12px;display:inline-block}.fill{background:#3a7;height:12px;display:block}</style></head>
<body><h1>shiftplane</h1>
<h2>Rollouts</h2>
<table><tr><th>name</th><th>phase</th><th>canary weight</th><th>step</th><th>signal</th><th>reason</th></tr>
{{range .Rollouts}}<tr><td>{{.Plan.Name}}</td><td>{{.State.Phase}}</td>
<td><span class="bar"><span class="fill" style="width:{{.State.Weight}}%"></span></span> {{.State.Weight}}%</td>
<td>{{step .State.StepIndex}}/{{.StepCount}}</td><td>{{.Signal.State}}</td><td>{{.State.Reason}}</td></tr>
{{else}}<tr><td colspan="6">no rollouts</td></tr>{{end}}</table>
<h2>Recent snapshots</h2>
<table><tr><th>version</th><th>time</th><th>types changed</th><th>reason</th></tr>
{{range .Snapshots}}<tr><td>{{.Version}}</td><td>{{.Time.Format "15:04:05.000"}}</td><td>{{.Changed}}</td><td>{{.Reason}}</td></tr>{{end}}</table>
</body></html>`))

func writeStatusPage(w http.ResponseWriter, rollouts []policy.Status, snaps []xds.Published) {
	// Newest snapshot first.
	rev := make([]xds.Published, len(snaps))
	for i, s := range snaps {
		rev[len(snaps)-1-i] = s
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusPage.Execute(w, struct {
		Rollouts  []policy.Status
		Snapshots []xds.Published
	}{rollouts, rev})
}
