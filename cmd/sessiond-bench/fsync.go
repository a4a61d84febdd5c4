package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"sessiond/persist"
)

// FsyncProbe is the cost of one durable write of a journal record on the disk the stores
// live on: the floor under any durable write, measured in the same run as the writes it
// explains.
type FsyncProbe struct {
	When string `json:"when"` // "start" or "end" of the run
	// Kind: "append" writes at the end of the file, so each fsync also commits its new
	// size; "allocated" writes into space allocated ahead, as sessiond's journal does.
	Kind     string  `json:"kind"`
	Samples  int     `json:"samples"`
	MedianMs float64 `json:"median_ms"`
	P99ms    float64 `json:"p99_ms"`
}

const (
	probeAppend    = "append"
	probeAllocated = "allocated"
)

// probeFsync writes 700 bytes (a patch's journal record, roughly) after the last and
// fsyncs, n times, in a scratch file in dir, and returns the latencies. With allocated,
// the file's space is allocated first (persist.File.Allocate, as the journal does it), so
// that the writes change no file size. Blocks for n fsyncs.
func probeFsync(dir string, n int, allocated bool) ([]time.Duration, error) {
	path := filepath.Join(dir, "fsync-probe")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(path)
	f, err := persist.OS{}.OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	defer f.Close()
	rec := make([]byte, 700)
	for i := range rec {
		rec[i] = 'a' + byte(i%26)
	}
	if allocated {
		if err := f.Allocate(0, int64(n*len(rec))); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
	}
	lat := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		if _, err := f.WriteAt(rec, int64(i*len(rec))); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}
