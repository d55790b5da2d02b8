package model

import "testing"

func TestCompletedRequests(t *testing.T) {
	tests := map[string]struct {
		stats  map[string]float64
		want   float64
		wantOK bool
	}{
		"completed": {stats: map[string]float64{"cluster.a.upstream_rq_completed": 12, "cluster.a.upstream_rq_2xx": 10}, want: 12, wantOK: true},
		"classes without completed": {stats: map[string]float64{"cluster.a.upstream_rq_2xx": 10, "cluster.a.upstream_rq_5xx": 3, "cluster.b.upstream_rq_2xx": 99},
			want: 13, wantOK: true},
		"another cluster only": {stats: map[string]float64{"cluster.b.upstream_rq_completed": 5}},
		"gauges only":          {stats: map[string]float64{"cluster.a.upstream_rq_active": 5}},
		"nil":                  {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := CompletedRequests(tc.stats, "a")
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("CompletedRequests = %g, %v; want %g, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}
