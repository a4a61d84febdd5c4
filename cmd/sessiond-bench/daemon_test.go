package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The daemon's JSON log gives the load, snapshot, compaction and slow fsync durations;
// slow fsyncs are the disk's, not problems, and what comes after the stop is not counted.
func TestParseDaemonLog(t *testing.T) {
	log := `{"time":"2026-11-27T10:00:00Z","level":"INFO","msg":"store loaded","took":125000000}
{"time":"2026-11-27T10:00:01Z","level":"DEBUG","msg":"request","took":5}
{"time":"2026-11-27T10:00:01Z","level":"DEBUG","msg":"snapshot written","took":54000000}
{"time":"2026-11-27T10:00:02Z","level":"INFO","msg":"journal compacted","took":98000000}
{"time":"2026-11-27T10:00:02Z","level":"DEBUG","msg":"journal fsync was slow; durable writes waited for the disk","took":12000000}
{"time":"2026-11-27T10:00:03Z","level":"WARN","msg":"journal fsync was slow; durable writes waited for the disk","took":180000000}
{"time":"2026-11-27T10:00:03Z","level":"WARN","msg":"something else"}
panic: oops
{"time":"2026-11-27T10:00:09Z","level":"DEBUG","msg":"snapshot written","took":1}
`
	path := filepath.Join(t.TempDir(), "log")
	require.NoError(t, os.WriteFile(path, []byte(log), 0o600))
	lg, err := parseDaemonLog(path, time.Date(2026, 11, 27, 10, 0, 5, 0, time.UTC))
	require.NoError(t, err)
	require.Equal(t, 125*time.Millisecond, lg.Load)
	require.Equal(t, []time.Duration{54 * time.Millisecond}, lg.Snapshots)
	require.Equal(t, []time.Duration{98 * time.Millisecond}, lg.Compactions)
	require.Equal(t, []time.Duration{12 * time.Millisecond, 180 * time.Millisecond}, lg.SlowFsyncs)
	require.Len(t, lg.Problems, 2)
	require.Contains(t, lg.Problems[0], "something else")
	require.Equal(t, "panic: oops", lg.Problems[1])
}
