package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
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

// FsyncBetween is what the probes measured between the requests of a 1-client goal run
// (one sample of each after every probeEvery-th request): the disk at the moments the
// requests ran, which drifts by 2x within minutes on a shared machine.
type FsyncBetween struct {
	Samples int `json:"samples"`
	// FsyncMs is the median append of 700 B + fsync: "one fsync" of the goal.
	FsyncMs float64 `json:"fsync_median_ms"`
	// DatasyncMs is the median write of 700 B over zeros + fdatasync: what sessiond's
	// journal does (it writes ahead into zeros), so its floor.
	DatasyncMs float64 `json:"datasync_median_ms"`
}

// probeEvery is how many requests of a 1-client goal run go between two probe samples.
const probeEvery = 10

// probeRecord is the size of a patch's journal record, roughly.
const probeRecord = 700

// syncProbe times durable writes of probeRecord bytes to a scratch file, one per sample:
// appends with fsync, or with overwrite, writes over zeros the file already has with
// fdatasync (the size stays, so only the data is written).
type syncProbe struct {
	f         *os.File
	overwrite bool
	off, wrap int64
	rec       []byte
	lat       []time.Duration
	err       error // the first failure; sample does nothing after it
}

func newSyncProbe(dir, name string, overwrite bool) (*syncProbe, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	p := &syncProbe{f: f, overwrite: overwrite, rec: make([]byte, probeRecord)}
	for i := range p.rec {
		p.rec[i] = 'a' + byte(i%26)
	}
	if overwrite {
		p.wrap = 4 << 20
		if _, err := f.Write(make([]byte, p.wrap)); err != nil {
			p.close()
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			p.close()
			return nil, fmt.Errorf("fsync probe: %w", err)
		}
	}
	return p, nil
}

// sample times one durable write.
func (p *syncProbe) sample() {
	if p.err != nil {
		return
	}
	if p.overwrite && p.off+int64(len(p.rec)) > p.wrap {
		p.off = 0
	}
	start := time.Now()
	_, err := p.f.WriteAt(p.rec, p.off)
	if err == nil && p.overwrite {
		err = unix.Fdatasync(int(p.f.Fd()))
	} else if err == nil {
		err = p.f.Sync()
	}
	if err != nil {
		p.err = fmt.Errorf("fsync probe: %w", err)
		return
	}
	p.lat = append(p.lat, time.Since(start))
	p.off += int64(len(p.rec))
}

// close removes the scratch file and returns the first failure of a sample.
func (p *syncProbe) close() error {
	os.Remove(p.f.Name())
	p.f.Close()
	return p.err
}

// probeFsync appends probeRecord bytes and fsyncs, n times, in a scratch file in dir,
// each after pause idle, and returns the latencies. Blocks for n fsyncs and pauses.
func probeFsync(dir string, n int, pause time.Duration) ([]time.Duration, error) {
	p, err := newSyncProbe(dir, "fsync-probe", false)
	if err != nil {
		return nil, err
	}
	for range n {
		time.Sleep(pause)
		p.sample()
	}
	return p.lat, p.close()
}
