package xds

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the xDS server's Prometheus metrics.
type Metrics struct {
	streams     prometheus.Gauge
	pushes      *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	convergence prometheus.Histogram
}

// NewMetrics registers the xDS metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shiftplane_xds_streams", Help: "Open xDS streams (SotW and delta).",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shiftplane_xds_pushes_total", Help: "xDS responses sent, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shiftplane_xds_nacks_total", Help: "xDS NACKs received, by resource type.",
		}, []string{"type"}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shiftplane_convergence_seconds",
			Help:    "Time from publishing a version to every connected node ACKing it.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.pushes, m.nacks, m.convergence)
	}
	return m
}
