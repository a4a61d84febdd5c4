package persist

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrOwned means another live process holds the store's ownership lock.
var ErrOwned = errors.New("store is owned by another sessiond")

// Owner is the ownership lock of a store: an exclusive flock on path (sessions.json.owner)
// held for the life of the process. The kernel drops it when the process dies, so it can
// never go stale, and it survives execve as long as the descriptor stays open. The file
// holds the owner's pid for the error message a second instance prints; its existence
// alone means nothing.
type Owner struct {
	f *os.File
}

// Acquire takes the lock at path without waiting. If another process holds it, the error
// wraps ErrOwned and names that process's pid.
func Acquire(path string) (*Owner, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ownership lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid := "unknown"
			if b, rerr := os.ReadFile(path); rerr == nil && len(b) > 0 {
				pid = strings.TrimSpace(string(b))
			}
			return nil, fmt.Errorf("%w: %s is locked by pid %s", ErrOwned, path, pid)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	o := &Owner{f: f}
	if err := o.writePID(); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// Adopt takes over a lock inherited across execve on descriptor fd, checking that it is
// the file at path and that this process does hold the lock.
func Adopt(fd int, path string) (*Owner, error) {
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), path)
	var got, want unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		return nil, fmt.Errorf("inherited lock fd %d: %w", fd, err)
	}
	if err := unix.Stat(path, &want); err != nil || got.Ino != want.Ino || got.Dev != want.Dev {
		f.Close()
		return nil, fmt.Errorf("inherited lock fd %d is not %s", fd, path)
	}
	// Re-locking a lock this open file description already holds succeeds at once; if it
	// were not held, LOCK_NB tells us instead of waiting.
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("inherited lock fd %d on %s: %w", fd, path, err)
	}
	o := &Owner{f: f}
	return o, o.writePID()
}

func (o *Owner) writePID() error {
	if err := o.f.Truncate(0); err != nil {
		return fmt.Errorf("write pid to %s: %w", o.f.Name(), err)
	}
	if _, err := o.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return fmt.Errorf("write pid to %s: %w", o.f.Name(), err)
	}
	return nil
}

// File is the locked file, for handing the lock to an execve'd successor.
func (o *Owner) File() *os.File { return o.f }

// Close releases the lock; idempotent.
func (o *Owner) Close() error {
	if o == nil || o.f == nil {
		return nil
	}
	err := o.f.Close()
	o.f = nil
	return err
}
