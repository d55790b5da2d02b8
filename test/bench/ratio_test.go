package bench

import (
	"math"
	"testing"
	"time"
)

func TestRatioInterval(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	floor := ms(10, 12, 11, 30, 10, 13, 11, 10, 50, 12)
	scaled := make([]time.Duration, len(floor))
	for i, d := range floor {
		scaled[i] = d * 6 / 5
	}
	// Paired resampling keeps round i of both series together: a series
	// that is the floor's times 1.2 has that ratio in every draw.
	if lo, hi := RatioInterval(scaled, floor, 99, 0.9); math.Abs(lo-1.2) > 1e-9 || math.Abs(hi-1.2) > 1e-9 {
		t.Errorf("1.2 × floor: interval %.3f – %.3f, want 1.2 – 1.2", lo, hi)
	}
	// A server whose slow rounds are slower than the floor's: the point
	// estimate lies inside the interval, which has some width.
	noisy := ms(11, 12, 12, 45, 10, 14, 12, 11, 52, 13)
	point := float64(Percentile(noisy, 50)) / float64(Percentile(floor, 50))
	lo, hi := RatioInterval(noisy, floor, 50, 0.9)
	if lo > point || hi < point || hi-lo <= 0 {
		t.Errorf("p50 ratio %.3f, interval %.3f – %.3f: want the ratio inside an interval of some width", point, lo, hi)
	}
	if again, _ := RatioInterval(noisy, floor, 50, 0.9); again != lo {
		t.Errorf("not deterministic: %v then %v", lo, again)
	}
	if lo, hi := RatioInterval(nil, floor, 99, 0.9); lo != 0 || hi != 0 {
		t.Errorf("no steps: %v – %v, want 0 – 0", lo, hi)
	}
}
