package xds

import (
	"github.com/prometheus/client_golang/prometheus"
)

// servedTypes are the resource types shiftplane serves; their push and NACK
// counters exist at 0 from the start, so a rate() or an alert on the first
// NACK sees it.
var servedTypes = knownTypes[:]

// Metrics are the xDS server's Prometheus metrics.
type Metrics struct {
	streams     prometheus.Gauge
	pushes      *prometheus.CounterVec
	pushesOf    [numKnownTypes]prometheus.Counter // pushes counter by knownType
	nacks       *prometheus.CounterVec
	convergence prometheus.Histogram
	refused     *prometheus.CounterVec
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
			Help:    "Time from publishing a version to every connected node ACKing it; only publishes that some node had to ACK.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shiftplane_xds_refused_total", Help: "xDS and stats streams refused, by reason (identity, limit).",
		}, []string{"reason"}),
	}
	for _, r := range []string{"identity", "limit"} {
		m.refused.WithLabelValues(r)
	}
	for i, t := range servedTypes {
		m.pushesOf[i] = m.pushes.WithLabelValues(shortType(t))
		m.nacks.WithLabelValues(shortType(t))
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.pushes, m.nacks, m.convergence, m.refused)
	}
	return m
}

// pushed counts a response sent of typeURL.
func (m *Metrics) pushed(typeURL string) {
	if i := knownType(typeURL); i >= 0 {
		m.pushesOf[i].Inc()
		return
	}
	m.pushes.WithLabelValues(shortType(typeURL)).Inc()
}
