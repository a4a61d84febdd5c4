package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The 1-client goal pairs each run's p50 with the fsync probed between its own requests,
// and is judged by the median of those ratios.
func TestOneClientGoal(t *testing.T) {
	run := func(p50, fsync float64) Result {
		return Result{Shape: "10k", Latency: Latency{P50ms: p50}, FsyncBetween: &FsyncBetween{Samples: 100, FsyncMs: fsync}}
	}
	_, ok := oneClientGoal(nil, 0.1)
	require.False(t, ok, "no 1-client runs")

	// Ratios 1.5, 2.5 and 1.9: the median, 1.9, meets the goal although the median p50
	// (0.25) over the median fsync (0.10) would not.
	g, ok := oneClientGoal([]Result{run(0.30, 0.20), run(0.25, 0.10), run(0.19, 0.10)}, 0.125)
	require.True(t, ok)
	require.True(t, g.Met)
	require.Contains(t, g.Measured, "1.90x, the median of 3 runs'")
	require.Contains(t, g.Measured, "0.300 / 0.200 ms = 1.50x; 0.190 / 0.100 ms = 1.90x; 0.250 / 0.100 ms = 2.50x")
	require.Contains(t, g.Measured, "0.250 / 0.125 ms = 2.00x", "the median p50 over the back-to-back fsync")

	g, _ = oneClientGoal([]Result{run(0.19, 0.10), run(0.30, 0.10)}, 0.1)
	require.False(t, g.Met, "ratios 1.9 and 3.0: of two, the higher middle one counts")
	require.Contains(t, g.Measured, "3.00x, the median of 2 runs'")

	g, ok = oneClientGoal([]Result{run(0.15, 0.10), {Shape: "10k", Latency: Latency{P50ms: 0.3}}, run(0.15, 0)}, 0.1)
	require.True(t, ok)
	require.False(t, g.Met, "a run without the fsync between its requests fails the goal, not drops out")
	require.Contains(t, g.Measured, "2 of 3 runs took no fsync")
}
