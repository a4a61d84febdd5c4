package main

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"sessiond/actor"
	"sessiond/ipc"
)

// stallBackend answers every request at once but its first patch, which it holds for
// stall. reset makes the next patch the first again.
type stallBackend struct {
	patches atomic.Int64
	stall   time.Duration
}

func (b *stallBackend) reset() { b.patches.Store(0) }

func (b *stallBackend) Submit(method string, params []byte) <-chan actor.Reply {
	ch := make(chan actor.Reply, 1)
	if method == "patch" && b.patches.Add(1) == 1 {
		time.Sleep(b.stall)
	}
	ch <- actor.Reply{Result: []byte(`{"key":"k","rev":1,"value":{}}`)}
	return ch
}

func (b *stallBackend) SubmitOrRun(method string, params []byte) <-chan actor.Reply {
	return b.Submit(method, params)
}

func (*stallBackend) Stats() actor.Stats { return actor.Stats{} }

// A closed-loop run measures the requests that start in its window, also one that a
// stall makes outlast it; one begun in the warmup is not measured however long it
// runs. So without a warmup a run always measures at least a request, which is why the
// smoke runs have none (a disk stall once left one with nothing measured).
func TestClosedLoopMeasuresWhatStartsInTheWindow(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdb") // short: sun_path holds 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s.sock")
	ln, err := ipc.Listen(socket)
	require.NoError(t, err)
	backend := &stallBackend{stall: 400 * time.Millisecond}
	srv := ipc.NewServer(ipc.ServerConfig{Backend: backend, Socket: socket})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Shutdown(context.Background(), "shutdown"))
		require.NoError(t, <-served)
		ln.Close()
	})
	ws := &workSet{keys: []string{"k"}}

	for _, tc := range []struct {
		warmup   time.Duration
		measured bool
	}{
		{50 * time.Millisecond, false}, // the first patch starts in the warmup and stalls past the window
		{0, true},                      // it starts in the window: measured when it ends
	} {
		backend.reset()
		spec := loadSpec{workload: workloadPatch, mode: modeClosed, clients: 1, warmup: tc.warmup, duration: 100 * time.Millisecond}
		out, err := driveSessiond(context.Background(), socket, ws, spec, 1, nil)
		require.NoError(t, err)
		if tc.measured {
			require.NotEmpty(t, out.rec.lat, "warmup %v", tc.warmup)
			require.GreaterOrEqual(t, out.rec.lat[0], 400*time.Millisecond)
		} else {
			require.Empty(t, out.rec.lat, "warmup %v", tc.warmup)
		}
	}
}
