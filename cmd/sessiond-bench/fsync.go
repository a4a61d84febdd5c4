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
	MedianMs float64 `json:"median_ms"` // back to back
	P99ms    float64 `json:"p99_ms"`
	// PausedMs is the median of as many samples each after the probe slept for
	// probePause; PauseMs is the median time it was idle (the sleep overshoots).
	PausedMs float64 `json:"after_pause_median_ms"`
	PauseMs  float64 `json:"pause_median_ms"`
}

// probePause is the sleep before each paused sample. A shorter sleep would not be
// shorter: Go's timers round a sleep under a millisecond up to about one here.
const probePause = time.Millisecond

// FsyncBetween is what the probe measured between the requests of a 1-client goal run
// (one sample after every probeEvery-th measured request): the disk at the moments the
// requests ran, which drifts by 2x within minutes on a shared machine.
type FsyncBetween struct {
	Samples int     `json:"samples"`
	FsyncMs float64 `json:"fsync_median_ms"`
}

// probeEvery is how many requests of a 1-client goal run go between two probe samples.
const probeEvery = 10

// syncProbe times appends of 700 bytes (a patch's journal record, roughly) with fsync to
// a scratch file, one per sample.
type syncProbe struct {
	f   *os.File
	rec []byte
	lat []time.Duration
	err error // the first failure; sample does nothing after it
}

func newSyncProbe(dir, name string) (*syncProbe, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	p := &syncProbe{f: f, rec: make([]byte, 700)}
	for i := range p.rec {
		p.rec[i] = 'a' + byte(i%26)
	}
	return p, nil
}

// sample times one append and fsync.
func (p *syncProbe) sample() {
	if p.err != nil {
		return
	}
	start := time.Now()
	_, err := p.f.Write(p.rec)
	if err == nil {
		err = p.f.Sync()
	}
	if err != nil {
		p.err = fmt.Errorf("fsync probe: %w", err)
		return
	}
	p.lat = append(p.lat, time.Since(start))
}

// close removes the scratch file and returns the first failure of a sample. Idempotent.
func (p *syncProbe) close() error {
	if p.f != nil {
		os.Remove(p.f.Name())
		p.f.Close()
		p.f = nil
	}
	return p.err
}

// probeFsync takes n samples in a scratch file in dir, each after sleeping for pause
// (none if 0), and returns their latencies and the median time each sleep took. Blocks
// for n fsyncs and sleeps.
func probeFsync(dir string, n int, pause time.Duration) (lat []time.Duration, slept time.Duration, err error) {
	p, err := newSyncProbe(dir, "fsync-probe")
	if err != nil {
		return nil, 0, err
	}
	var gaps []time.Duration
	for range n {
		if pause > 0 {
			start := time.Now()
			time.Sleep(pause)
			gaps = append(gaps, time.Since(start))
		}
		p.sample()
	}
	return p.lat, median(gaps), p.close()
}
