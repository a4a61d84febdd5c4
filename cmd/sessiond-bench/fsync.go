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
	// PausedMs is the median of as many samples each after probePause idle: a disk
	// that was not kept busy answers more slowly, and a client's requests have gaps.
	PausedMs float64 `json:"after_pause_median_ms"`
}

// probePause is the idle time before each paused sample: about a request's round trip.
const probePause = 300 * time.Microsecond

// FsyncBetween is what the probe measured between the requests of a 1-client goal run
// (one sample after every probeEvery-th request): the disk at the moments the requests
// ran, which drifts by 2x within minutes on a shared machine.
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

// close removes the scratch file and returns the first failure of a sample.
func (p *syncProbe) close() error {
	os.Remove(p.f.Name())
	p.f.Close()
	return p.err
}

// probeFsync takes n samples in a scratch file in dir, each after pause idle, and
// returns the latencies. Blocks for n fsyncs and pauses.
func probeFsync(dir string, n int, pause time.Duration) ([]time.Duration, error) {
	p, err := newSyncProbe(dir, "fsync-probe")
	if err != nil {
		return nil, err
	}
	for range n {
		time.Sleep(pause)
		p.sample()
	}
	return p.lat, p.close()
}
