package signals

import (
	"errors"
	"log/slog"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSignalsBecomeSentinels(t *testing.T) {
	h := New(slog.New(slog.DiscardHandler))
	defer h.Close()
	for _, tc := range []struct {
		sig  syscall.Signal
		want error
	}{
		{syscall.SIGUSR1, ErrRestart},
		{syscall.SIGTERM, ErrStop},
		{syscall.SIGINT, ErrStop},
	} {
		run, _ := h.Actor()
		require.NoError(t, syscall.Kill(syscall.Getpid(), tc.sig))
		err := run()
		require.ErrorIs(t, err, tc.want)
		var se *Error
		require.True(t, errors.As(err, &se))
		require.Equal(t, tc.sig, se.Signal)
	}
}

func TestInterruptIsIdempotent(t *testing.T) {
	h := New(slog.New(slog.DiscardHandler))
	defer h.Close()
	run, interrupt := h.Actor()
	interrupt(nil)
	interrupt(nil)
	require.NoError(t, run())
	interrupt(nil) // after execute returned
}

// During a restart a second SIGUSR1 is coalesced and a stop is remembered.
func TestAbsorb(t *testing.T) {
	h := New(slog.New(slog.DiscardHandler))
	defer h.Close()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGTERM))
	require.Eventually(t, func() bool { return len(h.sigc) == 2 }, 5e9, 1e6, "both signals queued")
	done := make(chan struct{})
	stopped := make(chan bool)
	go func() { stopped <- h.Absorb(done) }()
	require.Eventually(t, func() bool { return len(h.sigc) == 0 }, 5e9, 1e6, "both absorbed")
	close(done)
	require.True(t, <-stopped)

	// Nothing is left over to start another restart.
	run, interrupt := h.Actor()
	interrupt(nil)
	require.NoError(t, run())
}
