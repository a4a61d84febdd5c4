package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// seq returns 1..n milliseconds, sorted.
func seq(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample is every percentile", []time.Duration{7}, 0.1, 7},
		{"one sample p99.9", []time.Duration{7}, 99.9, 7},
		{"three p50 is the middle", seq(3), 50, 2 * time.Millisecond},
		{"three p99 is the max", seq(3), 99, 3 * time.Millisecond},
		{"ten p90", seq(10), 90, 9 * time.Millisecond},
		{"ten p91 rounds the rank up", seq(10), 91, 10 * time.Millisecond},
		{"hundred p50", seq(100), 50, 50 * time.Millisecond},
		{"hundred p99 is the 99th, not the max", seq(100), 99, 99 * time.Millisecond},
		{"hundred p99.9 is the max", seq(100), 99.9, 100 * time.Millisecond},
		{"thousand p99", seq(1000), 99, 990 * time.Millisecond},
		{"thousand p99.9 is the 999th", seq(1000), 99.9, 999 * time.Millisecond},
		{"999 p99.9 is the max", seq(999), 99.9, 999 * time.Millisecond},
		{"p100 is the max", seq(1000), 100, 1000 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, percentile(tt.samples, tt.p))
		})
	}
}

func TestMedian(t *testing.T) {
	require.Equal(t, 0.0, median([]float64(nil)))
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.0, median([]float64{4, 1, 3, 2}), "even count: the lower middle, a measured value")
	xs := []time.Duration{3, 1, 2}
	require.Equal(t, time.Duration(2), median(xs))
	require.Equal(t, []time.Duration{3, 1, 2}, xs, "median must not reorder its input")
}

func TestSummarize(t *testing.T) {
	lat := seq(1000)
	// Reverse, so that summarize has to sort.
	for i, j := 0, len(lat)-1; i < j; i, j = i+1, j-1 {
		lat[i], lat[j] = lat[j], lat[i]
	}
	s := summarize(lat)
	require.Equal(t, Latency{Count: 1000, P50ms: 500, P99ms: 990, P999ms: 999, MaxMs: 1000, MeanMs: 500.5}, s)
	require.Equal(t, Latency{}, summarize(nil))
}

func TestRecorder(t *testing.T) {
	r := newRecorder()
	t0 := time.Unix(100, 0)
	r.ok(time.Millisecond, t0, true)
	r.ok(2*time.Millisecond, t0.Add(-time.Second), false)
	r.fail("busy", t0.Add(time.Second))
	require.Equal(t, []time.Duration{time.Millisecond, 2 * time.Millisecond}, r.lat)
	require.Equal(t, int64(1), r.writes)
	require.Equal(t, map[string]int64{"busy": 1}, r.errs)
	require.Equal(t, t0.Add(time.Second), r.last, "last is the latest end, whatever the order")
}
