package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"sessiond/persist"
)

// handoverEnv carries what a re-exec'd image inherits: the descriptors of the listening
// socket and of the ownership lock, the generation, and when the restart began. It is
// removed from the environment as soon as it is read, and replaced (never appended to)
// when the next exec builds its environment, so nothing piles up.
const handoverEnv = "SESSIOND_HANDOVER"

type handover struct {
	listenFD   int
	lockFD     int
	generation int
	started    time.Time // when this daemon (pid) first started
	signaled   time.Time // when the restart's SIGUSR1 arrived
	stop       bool      // a SIGTERM/SIGINT arrived during the restart
}

func (h handover) encode() string {
	return fmt.Sprintf("listen=%d,lock=%d,generation=%d,started=%d,signaled=%d,stop=%t",
		h.listenFD, h.lockFD, h.generation, h.started.UnixNano(), h.signaled.UnixNano(), h.stop)
}

// takeHandover reads and unsets the handover variable; nil when this is a first start.
func takeHandover() (*handover, error) {
	v, ok := os.LookupEnv(handoverEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(handoverEnv)
	h := &handover{}
	for _, kv := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(kv, "=")
		var err error
		var n int64
		switch k {
		case "stop":
			h.stop, err = strconv.ParseBool(val)
		default:
			n, err = strconv.ParseInt(val, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: bad %s: %w", handoverEnv, k, err)
		}
		switch k {
		case "listen":
			h.listenFD = int(n)
		case "lock":
			h.lockFD = int(n)
		case "generation":
			h.generation = int(n)
		case "started":
			h.started = time.Unix(0, n)
		case "signaled":
			h.signaled = time.Unix(0, n)
		}
	}
	if h.listenFD < 3 || h.lockFD < 3 || h.generation < 1 {
		return nil, fmt.Errorf("%s=%q is incomplete", handoverEnv, v)
	}
	return h, nil
}

// envWithout returns env minus every entry for name.
func envWithout(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// adoptListener takes the inherited listening socket, after checking it is what the
// configuration says: a listening Unix stream socket bound to path. The path is never
// unlinked here: it is the same socket the clients have been queueing on.
func adoptListener(fd int, path string) (*net.UnixListener, error) {
	unix.CloseOnExec(fd)
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return nil, fmt.Errorf("inherited fd %d is not a listening socket (%v)", fd, err)
	}
	f := os.NewFile(uintptr(fd), "inherited listener")
	defer f.Close() // FileListener made its own descriptor
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited fd %d: %w", fd, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("inherited fd %d is a %T, not a Unix socket", fd, l)
	}
	if got := ul.Addr().String(); got != path {
		ul.Close()
		return nil, fmt.Errorf("inherited socket is bound to %q, not %q", got, path)
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// inheritable returns a descriptor of f without close-on-exec, for execve to pass on.
func inheritable(fd uintptr) error {
	_, err := unix.FcntlInt(fd, unix.F_SETFD, 0)
	return err
}

// takeOwnership acquires the store's lock, or adopts the one inherited across exec.
func takeOwnership(path string, h *handover) (*persist.Owner, error) {
	if h == nil {
		return persist.Acquire(path)
	}
	o, err := persist.Adopt(h.lockFD, path)
	if err != nil {
		return nil, errors.Join(err, errors.New("the inherited ownership lock is not usable"))
	}
	return o, nil
}

// sdNotify tells systemd (when NOTIFY_SOCKET is set) what the daemon is doing. The
// variable is kept: the re-exec'd image notifies on the same socket.
func sdNotify(log *slog.Logger, state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		log.Warn("systemd notify failed", "err", err)
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
