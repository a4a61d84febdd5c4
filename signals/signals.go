// Package signals turns the operator's signals into run.Group actors: SIGTERM and SIGINT
// end the group with ErrStop, SIGUSR1 with ErrRestart.
//
// Concurrency: a Handler's methods are goroutine-safe. It never calls os.Exit or
// syscall.Exec; cmd/sessiond decides what a stop or a restart does.
package signals

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Sentinels returned (wrapped in *Error) by Run.
var (
	// ErrStop: the operator asked the daemon to stop (SIGTERM, SIGINT).
	ErrStop = errors.New("stop requested")
	// ErrRestart: the operator asked the daemon to flush and re-exec (SIGUSR1).
	ErrRestart = errors.New("restart requested")
)

// Error is the signal that ended Run; errors.Is matches ErrStop or ErrRestart.
type Error struct {
	Signal os.Signal
	kind   error
}

func (e *Error) Error() string { return fmt.Sprintf("%v (%s)", e.kind, e.Signal) }
func (e *Error) Unwrap() error { return e.kind }

// Handler receives the signals from the moment New returns, so a signal that arrives
// during a slow start-up is not lost and does not kill the process.
type Handler struct {
	log  *slog.Logger
	sigc chan os.Signal
}

// New registers for SIGTERM, SIGINT and SIGUSR1 at once.
func New(log *slog.Logger) *Handler {
	h := &Handler{log: log.With("component", "signals"), sigc: make(chan os.Signal, 4)}
	signal.Notify(h.sigc, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	return h
}

// Actor returns a run.Group actor: execute blocks until a signal arrives (returning
// *Error) or interrupt is called (returning nil). interrupt is idempotent and safe after
// execute returned. Each call makes a fresh actor, so the handler outlives one group.
func (h *Handler) Actor() (execute func() error, interrupt func(error)) {
	done := make(chan struct{})
	var once sync.Once
	return func() error {
			return h.Wait(done)
		}, func(error) {
			once.Do(func() { close(done) })
		}
}

// Wait blocks until a signal arrives (*Error) or done is closed (nil).
func (h *Handler) Wait(done <-chan struct{}) error {
	select {
	case sig := <-h.sigc:
		kind := ErrStop
		if sig == syscall.SIGUSR1 {
			kind = ErrRestart
		}
		h.log.Info("signal received", "signal", sig.String(), "action", kind.Error())
		return &Error{Signal: sig, kind: kind}
	case <-done:
		return nil
	}
}

// Absorb logs and drops the signals that arrive while a restart is under way, so a
// second SIGUSR1 is coalesced into the one being handled instead of starting another.
// It returns when done is closed, reporting whether a stop (SIGTERM, SIGINT) arrived
// meanwhile, which the caller must still honour.
func (h *Handler) Absorb(done <-chan struct{}) (stop bool) {
	for {
		select {
		case sig := <-h.sigc:
			if sig == syscall.SIGUSR1 {
				h.log.Info("SIGUSR1 coalesced: a restart is already under way")
				continue
			}
			h.log.Info("stop requested during a restart; stopping once it is done", "signal", sig.String())
			stop = true
		case <-done:
			return stop
		}
	}
}

// Leftover reports whether a stop signal is still queued, after Close: one that arrived
// just before delivery stopped must not vanish with the process image.
func (h *Handler) Leftover() (stop bool) {
	for {
		select {
		case sig := <-h.sigc:
			stop = stop || sig != syscall.SIGUSR1
		default:
			return stop
		}
	}
}

// Close stops delivery. SIGUSR1 becomes ignored rather than going back to its default
// action, which would kill the process: across execve caught signals revert to the
// default while ignored ones stay ignored, until the new image registers again.
func (h *Handler) Close() {
	signal.Ignore(syscall.SIGUSR1)
	signal.Stop(h.sigc)
}
