package main

import (
	"slices"
	"sync"
	"time"
)

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the nearest-rank
// method: the smallest sample with at least p% of the samples at or below it. Nearest
// rank never interpolates, so every figure reported is a latency that was observed;
// with fewer than 1,000 samples p99.9 is the maximum. Empty input gives 0.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// Integer arithmetic on the rank: float rounding would make p99 of 100 samples
	// the 100th instead of the 99th when p*n is not exact in binary.
	perMille := int64(p*1000 + 0.5)
	rank := (perMille*int64(n) + 100_000 - 1) / 100_000 // ceil(p/100 * n)
	rank = min(max(rank, 1), int64(n))
	return sorted[rank-1]
}

// median returns the middle of xs (the lower middle for an even count); 0 when empty.
// Medians of repetitions are taken this way so that the figure is one that was measured.
func median[T float64 | time.Duration | int64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// Latency is the summary of one run's latencies, in the units results.json uses.
type Latency struct {
	Count  int     `json:"count"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	P999ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
}

// summarize sorts lat in place and summarises it.
func summarize(lat []time.Duration) Latency {
	if len(lat) == 0 {
		return Latency{}
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	return Latency{
		Count:  len(lat),
		P50ms:  ms(percentile(lat, 50)),
		P99ms:  ms(percentile(lat, 99)),
		P999ms: ms(percentile(lat, 99.9)),
		MaxMs:  ms(lat[len(lat)-1]),
		MeanMs: ms(sum / time.Duration(len(lat))),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// recorder collects the outcome of every operation of a run. Goroutine-safe.
type recorder struct {
	mu     sync.Mutex
	lat    []time.Duration  // successful operations only
	errs   map[string]int64 // failed operations by reason
	last   time.Time        // when the last operation ended
	writes int64            // successful operations that wrote
}

func newRecorder() *recorder {
	return &recorder{errs: make(map[string]int64)}
}

// ok records a success; write says it changed the store (patch, put).
func (r *recorder) ok(lat time.Duration, end time.Time, write bool) {
	r.mu.Lock()
	r.lat = append(r.lat, lat)
	if write {
		r.writes++
	}
	if end.After(r.last) {
		r.last = end
	}
	r.mu.Unlock()
}

// fail records a failure under reason.
func (r *recorder) fail(reason string, end time.Time) {
	r.mu.Lock()
	r.errs[reason]++
	if end.After(r.last) {
		r.last = end
	}
	r.mu.Unlock()
}
