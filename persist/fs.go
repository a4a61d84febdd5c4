package persist

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// FS is the file system as persist uses it. OS is the real one; tests wrap it to inject
// faults at one step at a time (write, fsync, rename, directory fsync).
type FS interface {
	ReadFile(name string) ([]byte, error)
	Stat(name string) (os.FileInfo, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	ReadDir(name string) ([]os.DirEntry, error)
	// NewPending starts a file that replaces path atomically (temp file in the same
	// directory, mode 0600).
	NewPending(path string) (Pending, error)
	// OpenAppend opens an existing file for appending, and for reading at an offset.
	OpenAppend(path string) (File, error)
	// SyncDir fsyncs a directory so that a rename in it survives power loss.
	SyncDir(dir string) error
	// TruncateSync cuts the file at path to size through a new descriptor and fsyncs
	// that descriptor, so the cut is durable.
	TruncateSync(path string, size int64) error
	// Link makes newpath a second name of the file at oldpath.
	Link(oldpath, newpath string) error
	// Shrink frees a retired file's blocks a step at a time (see OS.Shrink).
	Shrink(name string, step int64, pause time.Duration, stop <-chan struct{}) error
}

// File is an open file that is written and synced, and read at an offset.
type File interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Close() error
}

// Pending is a file that replaces its target on CloseAtomicallyReplace; Cleanup removes it
// otherwise (a no-op after a successful replace).
type Pending interface {
	io.Writer
	Stat() (os.FileInfo, error)
	Sync() error
	CloseAtomicallyReplace() error
	Cleanup() error
}

// OS is the real file system.
type OS struct{}

func (OS) ReadFile(name string) ([]byte, error)       { return os.ReadFile(name) }
func (OS) Stat(name string) (os.FileInfo, error)      { return os.Stat(name) }
func (OS) Rename(oldpath, newpath string) error       { return os.Rename(oldpath, newpath) }
func (OS) Link(oldpath, newpath string) error         { return os.Link(oldpath, newpath) }
func (OS) Remove(name string) error                   { return os.Remove(name) }
func (OS) ReadDir(name string) ([]os.DirEntry, error) { return os.ReadDir(name) }
func (OS) OpenAppend(path string) (File, error)       { return os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0) }

// NewPending uses renameio with the temp file forced into the target's directory: a
// TMPDIR on another file system would make the rename fail, and a temp file elsewhere
// would escape the leftover clean-up at start.
func (OS) NewPending(path string) (Pending, error) {
	return renameio.NewPendingFile(path,
		renameio.WithTempDir(filepath.Dir(path)),
		renameio.WithStaticPermissions(0o600))
}

// TruncateSync opens a fresh descriptor: the one whose write or fsync failed is never
// fsync'd again, and the cut only needs the inode's size made durable.
func (OS) TruncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cut %s to %d bytes: %w", path, size, err)
	}
	return nil
}

// paced returns a writer to p that has the disk take what was written a stretch at a
// time (sync_file_range), when p is a real file. A snapshot or a new journal of many
// megabytes otherwise sits in the page cache until its fsync and reaches the disk in
// one burst, and the journal's fsyncs (one per batch of writes) queue behind that burst
// for tens of milliseconds. Paced, at most two stretches are in flight while a Throttle
// limits the write, and a megabyte once nothing does (hurriedDepth). Durability is
// unchanged: the file is still fsync'd before it is used. A write error that
// sync_file_range reports is returned by Write: reported once, it would not show at
// the fsync again.
//
// With a Throttle, the stretches also go no faster than its rate.
func paced(p Pending, t *Throttle) io.Writer {
	sc, ok := p.(syscall.Conn)
	if !ok {
		return p
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return p
	}
	return &pacedWriter{w: p, rc: rc, throttle: t}
}

// Throttle bounds the rate at which a background snapshot or new journal is handed to
// the disk. A journal fsync waits for the disk's write cache, and with it for whatever
// else was written meanwhile: while a 48 MB snapshot went to the disk as fast as it
// could take it (~0.1 s), the journal's fsyncs took about three times as long (median)
// as between snapshots; at 100 MB/s, hardly longer. A nil *Throttle does not limit.
// Goroutine-safe. The token bucket is golang.org/x/time/rate's, a megabyte deep (a write
// held up for a while catches up) and empty at first.
type Throttle struct {
	lim   *rate.Limiter
	done  context.Context // ended by Hurry or Abort: wakes a write waiting for tokens
	end   context.CancelFunc
	abort atomic.Bool
}

// ErrAborted is what a write whose Throttle was aborted fails with.
var ErrAborted = errors.New("write abandoned for a newer one")

// NewThrottle limits to bytesPerSec; nil (no limit) if it is not positive.
func NewThrottle(bytesPerSec float64) *Throttle {
	if bytesPerSec <= 0 {
		return nil
	}
	done, end := context.WithCancel(context.Background())
	lim := rate.NewLimiter(rate.Limit(bytesPerSec), bucket)
	lim.AllowN(time.Now(), bucket) // it starts full: no free first stretches
	return &Throttle{lim: lim, done: done, end: end}
}

// Hurry lifts the limit for the rest of the write: somebody waits for it (a flush, a
// stop). Safe on nil.
func (t *Throttle) Hurry() {
	if t != nil {
		t.end()
	}
}

// wait blocks until n more bytes may go to the disk, or the write is hurried or aborted.
func (t *Throttle) wait(n int64) {
	for t != nil && n > 0 && t.done.Err() == nil {
		k := min(n, bucket) // WaitN takes no more than the bucket holds
		if t.lim.WaitN(t.done, int(k)) != nil {
			return
		}
		n -= k
	}
}

// Abort makes the write fail with ErrAborted at its next stretch, unless it is past its
// last one: a newer snapshot supersedes it and somebody waits for that one. Safe on nil.
func (t *Throttle) Abort() {
	if t != nil {
		t.abort.Store(true)
		t.end()
	}
}

func (t *Throttle) aborted() bool { return t != nil && t.abort.Load() }

// limiting says whether the write still keeps to the rate: not hurried, not aborted.
func (t *Throttle) limiting() bool { return t != nil && t.done.Err() == nil }

// bucket is how deep the throttle's token bucket is.
const bucket = 1 << 20

// pace is the stretch pacedWriter hands to the disk at a time. A journal fsync that comes
// while a stretch is on its way waits for it: with stretches of 1 MiB, an fsync during a
// snapshot at 100 MB/s had a p99 of 1.7-3.5 ms here, with 128 KiB 0.6-0.8 ms (0.4-0.6 ms
// with no snapshot).
const pace = 128 << 10

// hurriedDepth is how much of a write that nothing limits (any more) is left in flight:
// a flush or a stop waits for it, and with two stretches in flight, a disk that takes
// milliseconds a write would hold it to a few tens of MB/s.
const hurriedDepth = 8 * pace

// syncFileRange is unix.SyncFileRange; tests watch the calls.
var syncFileRange = unix.SyncFileRange

type pacedWriter struct {
	w        io.Writer
	rc       syscall.RawConn
	off      int64 // bytes written
	end      int64 // bytes handed to the disk
	waited   int64 // bytes the disk has taken, as far as handOver waited for them
	unpaced  bool  // sync_file_range is not supported here: plain writes
	throttle *Throttle
	metered  int64 // bytes the throttle has let through
}

// Write cuts b at the stretches' ends: a snapshot and a new journal are written through a
// buffer of a megabyte.
func (p *pacedWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		m, err := p.w.Write(b[:min(int64(len(b)), p.end+pace-p.off)])
		n += m
		p.off += int64(m)
		b = b[m:]
		if err != nil {
			return n, err
		}
		if p.off-p.end < pace {
			continue // b is all written
		}
		if !p.unpaced {
			if err := p.handOver(); err != nil {
				return n, err
			}
		}
		p.end = p.off
		p.throttle.wait(p.off - p.metered)
		p.metered = p.off
		if p.throttle.aborted() {
			return n, ErrAborted
		}
	}
	return n, nil
}

// handOver starts the stretch written since the last, then waits for the disk to have
// taken all but the last stretch handed to it before (or the last hurriedDepth, once
// nothing limits the write).
func (p *pacedWriter) handOver() error {
	depth := int64(hurriedDepth)
	if p.throttle.limiting() {
		depth = pace
	}
	from, to, upTo := p.end, p.off, max(p.off-depth, p.waited)
	var serr error
	if cerr := p.rc.Control(func(fd uintptr) {
		serr = syncFileRange(int(fd), from, to-from, unix.SYNC_FILE_RANGE_WRITE)
		if serr == nil && upTo > p.waited {
			serr = syncFileRange(int(fd), p.waited, upTo-p.waited,
				unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
		}
	}); cerr != nil {
		return cerr
	}
	if serr == nil {
		p.waited = upTo
	}
	switch {
	case errors.Is(serr, unix.ENOSYS), errors.Is(serr, unix.EINVAL), errors.Is(serr, unix.ESPIPE):
		p.unpaced = true
	case serr != nil:
		return os.NewSyscallError("sync_file_range", serr)
	}
	return nil
}

// SyncDir is the step renameio leaves to its caller: without it a rename can be lost on
// power failure even though both files were fsync'd.
func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
