package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// FsyncProbe is the cost of one durable append on the disk the stores live on: the
// floor under any durable write, measured in the same run as the writes it explains.
type FsyncProbe struct {
	When     string  `json:"when"` // "start" or "end" of the run
	Samples  int     `json:"samples"`
	MedianMs float64 `json:"median_ms"`
	P99ms    float64 `json:"p99_ms"`
}

// probeFsync appends 700 bytes (a patch's journal record, roughly) and fsyncs, n times,
// in a scratch file in dir, and returns the latencies. Blocks for n fsyncs.
func probeFsync(dir string, n int) ([]time.Duration, error) {
	path := filepath.Join(dir, "fsync-probe")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(path)
	defer f.Close()
	rec := make([]byte, 700)
	for i := range rec {
		rec[i] = 'a' + byte(i%26)
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := f.Write(rec); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}
