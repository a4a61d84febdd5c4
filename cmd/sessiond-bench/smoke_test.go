package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSmoke runs every kind of run of `make bench` (each workload and mode, every store
// shape, both systems, the goal and snapshot runs) for a fraction of a second on tiny
// stores, so that the tool never rots. The figures mean nothing; that they exist does.
func TestSmoke(t *testing.T) {
	out := t.TempDir()
	doc := filepath.Join(out, "BENCHMARKS.md")
	require.NoError(t, os.WriteFile(doc, []byte("# Benchmarks\n\nprose\n\n"+docBegin+"\nold\n"+docEnd+"\n\nmore prose\n"), 0o644))
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-smoke", "-scenario", "all", "-out", out, "-update-doc", doc}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())

	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	require.NoError(t, err)
	var rep Report
	require.NoError(t, json.Unmarshal(b, &rep))
	require.True(t, rep.Smoke)
	require.Len(t, rep.Fsync, 2)
	require.Positive(t, rep.FsyncMs)
	require.Positive(t, rep.FsyncPausedMs)

	kinds := map[string]bool{}
	for _, r := range rep.Results {
		kinds[r.Group+"/"+r.System+"/"+r.Shape+"/"+r.Workload+"/"+r.Mode] = true
		require.Positive(t, r.Ops, "%s %s %s %s made no progress", r.System, r.Shape, r.Workload, r.Mode)
		require.Positive(t, r.Latency.P50ms)
		if r.System == systemSessiond {
			require.Empty(t, r.Errors, "sessiond %s %s %s", r.Shape, r.Workload, r.Mode)
			require.NotNil(t, r.Daemon)
			require.Positive(t, r.Daemon.PeakRSSMB)
			require.Positive(t, r.Daemon.LoadMs, "the load time comes from the daemon's log")
			require.Empty(t, r.Daemon.Problems)
		} else {
			require.NotNil(t, r.Baseline)
			require.Positive(t, r.Baseline.CPUs)
		}
	}
	for _, want := range []string{
		"matrix/sessiond/1k/patch/closed", "matrix/baseline/1k/patch/closed",
		"matrix/sessiond/10k/patch/open", "matrix/baseline/10k/patch/open",
		"matrix/sessiond/10k/mixed/closed", "matrix/baseline/10k/mixed/closed",
		"matrix/sessiond/1kx50k/put/closed", "matrix/baseline/1kx50k/put/closed",
		"goal/sessiond/10k/patch/closed", "goal/baseline/10k/patch/closed",
		"snapshots/sessiond/1kx50k/patch/open",
	} {
		require.True(t, kinds[want], "no %s run", want)
	}
	snaps, noIDs := 0, 0
	for _, r := range rep.Results {
		if r.Group == groupGoal && r.System == systemSessiond && r.Clients == 1 {
			require.NotNil(t, r.FsyncBetween, "the 1-client goal run probes between its requests")
			require.InDelta(t, float64(r.Latency.Count)/probeEvery, float64(r.FsyncBetween.Samples), 1,
				"one fsync after every %dth measured request", probeEvery)
			require.Positive(t, r.FsyncBetween.FsyncMs)
		} else {
			require.Nil(t, r.FsyncBetween, "only the 1-client goal runs probe between requests")
		}
		if r.Group == groupSnapshots && r.SnapshotInterval != snapshotsOff {
			snaps += r.Daemon.Snapshots
		}
		if r.NoRequestIDs {
			noIDs++
		}
	}
	require.Positive(t, snaps, "snapshot durations come from the daemon's log")
	require.Equal(t, 1, noIDs, "one snapshot run without request_id")
	require.Len(t, rep.Goals, 9, "every goal of the issue is checked, peak RSS with and without request_id")

	svg, err := os.ReadFile(filepath.Join(out, "chart.svg"))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(svg), "<svg"))
	require.Contains(t, string(svg), "polyline")

	d, err := os.ReadFile(doc)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(d), "# Benchmarks\n\nprose\n\n"+docBegin+"\n"), "text before the section is kept")
	require.True(t, strings.HasSuffix(string(d), docEnd+"\n\nmore prose\n"), "text after the section is kept")
	require.NotContains(t, string(d), "\nold\n")
	require.Contains(t, string(d), "go run ./cmd/sessiond-bench -smoke")
	require.Contains(t, string(d), "#### Goals of issue 4")
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"-store-shape", "1k,1kx50k", "-clients", "1,256", "-workload", "put,mixed", "-mode", "open"}, true},
		{[]string{"-store-shape", "2k"}, false},
		{[]string{"-clients", "0"}, false},
		{[]string{"-workload", "incr"}, false},
		{[]string{"-mode", "half"}, false},
		{[]string{"-scenario", "everything"}, false},
		{[]string{"-rate", "0"}, false},
		{[]string{"-baseline-parse", "lazy"}, false},
		{[]string{"extra"}, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cfg, err := parseFlags(tt.args, &bytes.Buffer{})
			if tt.ok {
				require.NoError(t, err)
				require.NotNil(t, cfg)
			} else {
				require.ErrorIs(t, err, errUsage)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	cfg, err := parseFlags([]string{"-scenario", "all"}, &bytes.Buffer{})
	require.NoError(t, err)
	count := map[string]int{}
	for _, c := range plan(cfg) {
		count[c.group+"/"+c.system]++
		if c.system == systemBaseline && c.shape.Name == "1kx50k" && c.load.workload == workloadMixed {
			require.LessOrEqual(t, c.load.clients, baselineMixedCap1kx50k)
		}
	}
	// 3 shapes x 3 workloads x 2 modes x 4 client counts, less the capped baseline cells.
	require.Equal(t, 72, count["matrix/sessiond"])
	require.Equal(t, 72-4, count["matrix/baseline"])
	require.Equal(t, 6, count["goal/sessiond"])
	require.Equal(t, 6, count["goal/baseline"], "both parse modes")
	require.Equal(t, 9, count["snapshots/sessiond"], "3 reps: snapshots on, off, on without request_id")

	cfg, err = parseFlags([]string{"-store-shape", "1k", "-clients", "1,2", "-reps", "2", "-baseline=false"}, &bytes.Buffer{})
	require.NoError(t, err)
	cells := plan(cfg)
	require.Len(t, cells, 4)
	for _, c := range cells {
		require.Equal(t, systemSessiond, c.system)
	}
}

func TestRestartSmoke(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-smoke", "-scenario", "restart", "-out", t.TempDir()}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	require.Contains(t, stdout.String(), "| 1k | 20 |", stdout.String())
	require.Contains(t, stdout.String(), "| 2 | 0 |", "two restarts, none refused")
}
