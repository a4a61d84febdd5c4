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
	done chan struct{}
	once sync.Once
}

// New registers for SIGTERM, SIGINT and SIGUSR1 at once.
func New(log *slog.Logger) *Handler {
	h := &Handler{log: log.With("component", "signals"), sigc: make(chan os.Signal, 4), done: make(chan struct{})}
	signal.Notify(h.sigc, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	return h
}

// Run blocks until a signal arrives (returning *Error) or Interrupt is called (nil).
func (h *Handler) Run() error {
	select {
	case sig := <-h.sigc:
		kind := ErrStop
		if sig == syscall.SIGUSR1 {
			kind = ErrRestart
		}
		h.log.Info("signal received", "signal", sig.String(), "action", kind.Error())
		return &Error{Signal: sig, kind: kind}
	case <-h.done:
		return nil
	}
}

// Interrupt makes Run return; idempotent, safe after Run returned.
func (h *Handler) Interrupt(error) { h.once.Do(func() { close(h.done) }) }

// Absorb logs and drops signals that arrive while a stop or restart is under way, so a
// second SIGUSR1 is coalesced into the one being handled instead of killing the process.
// It returns when stop is closed.
func (h *Handler) Absorb(stop <-chan struct{}) {
	for {
		select {
		case sig := <-h.sigc:
			h.log.Info("signal ignored: a stop or restart is already under way", "signal", sig.String())
		case <-stop:
			return
		}
	}
}

// Close stops delivery. SIGUSR1 stays ignored rather than going back to its default
// action, which would kill the process (this matters across execve, where caught
// signals revert to default but ignored ones stay ignored).
func (h *Handler) Close() {
	signal.Ignore(syscall.SIGUSR1)
	signal.Stop(h.sigc)
}
