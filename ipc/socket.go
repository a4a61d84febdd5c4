package ipc

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors of Listen; test with errors.Is.
var (
	// ErrSocketInUse means a live process accepts connections on the socket path: another
	// sessiond instance. Listen never takes its socket away.
	ErrSocketInUse = errors.New("socket in use by another process")
	// ErrNotSocket means the socket path holds something that is not a socket.
	ErrNotSocket = errors.New("path exists and is not a socket")
	// ErrUnsafeDir means others can write to the socket's directory (see the package doc).
	ErrUnsafeDir = errors.New("socket directory is writable by others")
)

// staleDialTimeout bounds the probe of an existing socket; a live listener answers at once.
const staleDialTimeout = time.Second

// Listen creates the socket at path and listens on it, mode 0600. It refuses a directory
// others can write to (ErrUnsafeDir, see the package doc), a live socket (ErrSocketInUse)
// and a path that is not a socket (ErrNotSocket); a stale socket, one nobody accepts on,
// is removed first. The listener is returned as net.ListenUnix gives it (it unlinks the
// path on Close). Blocks for at most about a second; goroutine-safe, but two processes
// racing to replace the same stale socket must be kept apart by the caller (a store lock).
func Listen(path string) (*net.UnixListener, error) {
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Between bind and chmod the umask decides; peer credentials are checked on every
	// connection, so the window only lets someone be refused, never served.
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return ln, nil
}

// checkSocketDir enforces the directory rule of the package doc.
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s: not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 == 0 {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("socket directory %s: %w (owner unknown)", dir, ErrUnsafeDir)
	}
	owner := int(st.Uid)
	if fi.Mode()&fs.ModeSticky != 0 && (owner == os.Getuid() || owner == 0) {
		return nil
	}
	return fmt.Errorf("socket directory %s (mode %v, owner uid %d): %w", dir, fi.Mode(), owner, ErrUnsafeDir)
}

// removeStale makes path free for bind: nothing there, or a socket nobody listens on,
// which it removes. Probing by dialing is the only reliable test: a leftover socket file
// looks exactly like a live one.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket %s: %w (mode %v)", path, ErrNotSocket, fi.Mode())
	}
	c, err := net.DialTimeout("unix", path, staleDialTimeout)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("socket %s: %w", path, ErrSocketInUse)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // removed since the Lstat
	case errors.Is(err, unix.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket %s: %w", path, err)
		}
		return nil
	case errors.Is(err, unix.EAGAIN):
		// The listen queue is full: someone is listening, just busy.
		return fmt.Errorf("socket %s: %w", path, ErrSocketInUse)
	default:
		return fmt.Errorf("probe socket %s: %w", path, err)
	}
}
