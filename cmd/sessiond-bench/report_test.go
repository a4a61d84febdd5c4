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
	_, ok := oneClientGoal([]Result{{Shape: "10k"}}, 0.1)
	require.False(t, ok, "no run probed between its requests")

	// Ratios 1.5, 2.5 and 1.9: the median, 1.9, meets the goal although the median p50
	// (0.25) over the median fsync (0.10) would not.
	g, ok := oneClientGoal([]Result{run(0.30, 0.20), run(0.25, 0.10), run(0.19, 0.10)}, 0.125)
	require.True(t, ok)
	require.True(t, g.Met)
	require.Contains(t, g.Measured, "1.90x: p50 0.250 ms, one fsync 0.100 ms")
	require.Contains(t, g.Measured, "1.50x, 2.50x, 1.90x")
	require.Contains(t, g.Measured, "(0.125 ms): 2.00x")

	g, _ = oneClientGoal([]Result{run(0.21, 0.10), run(0.30, 0.10)}, 0.1)
	require.False(t, g.Met, "ratios 2.1 and 3.0: the median (the lower middle) is over 2")
}
