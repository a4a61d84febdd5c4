package persist

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Freeing a large file's blocks at once (in the rename that replaces it, or in its
// unlink) stalls every fsync on the file system while it runs: the journal's fsync needs
// a commit of the file system's own journal, and that waits for the transaction freeing
// the blocks, and with online discard for the discards too. Measured on this machine
// (ext4 mounted with discard, a 48 MB file replaced every half second while a journal
// appends 700 B + fsync every 2 ms): each rename took 11-22 ms, and the journal fsync's
// p99.9 was 9-10 ms, against 2-4 ms when the replaced file was kept.
//
// So a replace first links the file it replaces to a temp name beside it (the kind
// RemoveTemps removes after a crash), and ReleaseFile frees it a stretch at a time.

// releaseStep and releasePause pace ReleaseFile: a 48 MB snapshot takes about 60 ms.
const (
	releaseStep  = 1 << 20
	releasePause = time.Millisecond
)

// retire links the file at path, which is about to be replaced, to a temp name beside
// it, and returns the name. It returns "" when there is no file or it cannot be linked:
// the rename then frees its blocks, as it would anyway.
func retire(fsys FS, path string) string {
	name := filepath.Join(dirOf(path), "."+filepath.Base(path)+strconv.FormatUint(rand.Uint64(), 10))
	if fsys.Link(path, name) != nil {
		return ""
	}
	return name
}

// ReleaseFile removes name, a file a replace retired, freeing its blocks a megabyte at
// a time. It first waits delay, so that a reader whose open of the old path raced the
// rename has the file open by then; and it only shrinks the file while no other process
// has it open (a write lease tells), since a reader of the old version must still read
// all of it. Otherwise, or once stop is closed, it removes the file whole. Blocks; the
// error is for logging only, the file is gone either way unless removing it failed.
func ReleaseFile(fsys FS, name string, delay time.Duration, stop <-chan struct{}) error {
	var err error
	select {
	case <-stop:
	case <-time.After(delay):
		err = fsys.Shrink(name, releaseStep, releasePause, stop)
	}
	if rerr := fsys.Remove(name); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", name, rerr)
	}
	return err
}

// Shrink truncates the file at name by step bytes at a time, pausing between steps,
// while it holds a write lease on it: it does nothing if another descriptor has the file
// open, and stops when one opens it (the lease is being broken) or stop is closed. It
// also does nothing unless name is the file's only name and not a symlink: the file
// replaced may have been a user's link to a file that must stay as it is.
func (OS) Shrink(name string, step int64, pause time.Duration, stop <-chan struct{}) error {
	f, err := os.OpenFile(name, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !fi.Mode().IsRegular() || st.Nlink != 1 {
		return nil
	}
	fd := f.Fd()
	if _, err := unix.FcntlInt(fd, unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		// EAGAIN: open elsewhere, and that reader keeps the old version whole. Or the
		// file system has no leases, or the file is another user's (EINVAL, EACCES):
		// with no way to tell, it goes whole too.
		return nil
	}
	defer unix.FcntlInt(fd, unix.F_SETLEASE, unix.F_UNLCK) //nolint:errcheck // closing releases it too
	t := time.NewTimer(pause)
	defer t.Stop()
	for size := fi.Size(); size > 0; {
		select {
		case <-stop:
			return nil
		default:
		}
		if lease, err := unix.FcntlInt(fd, unix.F_GETLEASE, 0); err != nil || lease != unix.F_WRLCK {
			return err // someone is opening it: leave the rest
		}
		size = max(size-step, 0)
		if err := f.Truncate(size); err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		case <-t.C:
			t.Reset(pause)
		}
	}
	return nil
}
