package main

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"sessiond/ipc"
)

// Workloads of the issue. Every write is durable (the default of the wire contract).
const (
	workloadPatch = "patch" // single-entry merge patch of updatedAt, counters, routing
	workloadMixed = "mixed" // 80% get, 20% patch, random existing keys
	workloadPut   = "put"   // put of a new key with a value of the shape's entry size
	// workloadIncr increments a counter of one entry; only the baseline knows it, for
	// the test that proves two legacy writers never interleave.
	workloadIncr = "incr"
)

// Load modes.
const (
	modeClosed = "closed" // each client sends its next request when the previous is answered
	modeOpen   = "open"   // requests at a fixed rate whatever the answers do
)

// workSet is what the operations of a run draw from. Read-only once built.
type workSet struct {
	keys []string          // the store's keys (patch, get)
	puts []json.RawMessage // values for put
}

// loadSpec says how to drive a system.
type loadSpec struct {
	workload string
	mode     string
	clients  int
	rate     float64       // open loop: offered operations per second, all clients together
	warmup   time.Duration // operations started before warmup ends are not measured
	duration time.Duration // measured window; no operation starts after it
	// noRequestIDs sends sessiond's writes without a request_id (ipc.NoRequestID), so
	// the daemon keeps no outcome for them.
	noRequestIDs bool
	// between, if set, is called by each closed-loop client after every probeEvery-th
	// measured operation, outside its timing: the fsync probe of a 1-client goal run,
	// which is not goroutine-safe (one client only). Open-loop runs ignore it.
	between func()
}

// loadOutcome is what driving a system measured.
type loadOutcome struct {
	rec    *recorder
	start  time.Time // of the measured window
	end    time.Time // of the measured window (last operation ended, or window end)
	unsent int64     // open loop: operations due in the window that were never sent
}

// sessiondOp is one operation of the workload against the daemon: client idx's seq-th.
// It reports whether the operation wrote.
func sessiondOp(ctx context.Context, c *ipc.Client, ws *workSet, spec loadSpec, r *rand.Rand, idx, seq int, buf []byte) (bool, error) {
	var opts []ipc.WriteOption
	if spec.noRequestIDs {
		opts = append(opts, ipc.NoRequestID())
	}
	switch workload := spec.workload; workload {
	case workloadMixed:
		if r.IntN(5) != 0 {
			_, err := c.Get(ctx, ws.keys[r.IntN(len(ws.keys))])
			return false, err
		}
		fallthrough
	case workloadPatch:
		merge := patchMerge(buf[:0], r, time.Now().UnixMilli())
		_, err := c.Patch(ctx, ws.keys[r.IntN(len(ws.keys))], json.RawMessage(merge), opts...)
		return true, err
	case workloadPut:
		_, err := c.Put(ctx, benchKey(idx, seq), ws.puts[seq%len(ws.puts)], opts...)
		return true, err
	}
	return false, errors.New("unknown workload " + spec.workload)
}

// reasonOf names why an operation failed: the wire contract's reason, or what the
// client saw when there was no response.
func reasonOf(err error) string {
	if r := ipc.ReasonOf(err); r != "" {
		return r
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "client_timeout"
	case errors.Is(err, ipc.ErrConnectionLost):
		return "connection_lost"
	case errors.Is(err, ipc.ErrClientClosed):
		return "client_closed"
	}
	return "other"
}

// driveSessiond runs spec against the daemon at socket with one connection (one
// ipc.Client) per client. Blocks for warmup + duration + the answers still due.
func driveSessiond(ctx context.Context, socket string, ws *workSet, spec loadSpec, seed uint64, atStart func()) (loadOutcome, error) {
	clients := make([]*ipc.Client, spec.clients)
	for i := range clients {
		clients[i] = ipc.NewClient(socket, ipc.WithRetryFor(10*time.Second))
		defer clients[i].Close()
		// Connect before the clock starts: dialling is not what is measured.
		if _, err := clients[i].Status(ctx); err != nil {
			return loadOutcome{}, err
		}
	}
	out := loadOutcome{rec: newRecorder()}
	begin := time.Now()
	out.start = begin.Add(spec.warmup)
	stop := out.start.Add(spec.duration)
	opCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The window opens on its own clock: samplers (CPU of the daemon) run at that instant.
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		select {
		case <-time.After(time.Until(out.start)):
			if atStart != nil {
				atStart()
			}
		case <-opCtx.Done():
		}
	}()

	var wg sync.WaitGroup
	if spec.mode == modeClosed {
		for i, c := range clients {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(i)))
				buf := make([]byte, 0, 256)
				for seq := 0; ; seq++ {
					t0 := time.Now()
					if !t0.Before(stop) || opCtx.Err() != nil {
						return
					}
					write, err := sessiondOp(opCtx, c, ws, spec, r, i, seq, buf)
					t1 := time.Now()
					if t0.Before(out.start) {
						continue
					}
					if err != nil {
						out.rec.fail(reasonOf(err), t1)
					} else {
						out.rec.ok(t1.Sub(t0), t1, write)
					}
					if spec.between != nil && seq%probeEvery == probeEvery-1 {
						spec.between()
					}
				}
			})
		}
	} else {
		out.unsent = openLoop(opCtx, clients, ws, spec, seed, begin, stop, out.rec, &wg)
	}
	wg.Wait()
	cancel()
	<-opened
	out.end = later(stop, out.rec.last)
	return out, ctx.Err()
}

// maxInFlight bounds the requests an open-loop run has outstanding. Beyond it the
// dispatcher waits, and because latency counts from the intended send time the wait
// still shows in the figures; it only keeps a hopeless overload from exhausting memory.
const maxInFlight = 8192

// openLoopGrace is how late after the window a request that was due in it is still
// sent (and measured from when it was due). Later than that the run would never end
// under hopeless overload: those requests are counted as unsent instead.
const openLoopGrace = time.Second

// openLoop sends requests at spec.rate from begin until stop, round robin over the
// clients, each in its own goroutine added to wg. Latency counts from the time a
// request was due, not when it was sent, so queueing anywhere shows. It returns how
// many requests were due before stop but never sent.
func openLoop(ctx context.Context, clients []*ipc.Client, ws *workSet, spec loadSpec, seed uint64,
	begin, stop time.Time, rec *recorder, wg *sync.WaitGroup) int64 {
	interval := time.Duration(float64(time.Second) / spec.rate)
	measureFrom := begin.Add(spec.warmup)
	sem := make(chan struct{}, maxInFlight)
	k := 0
	for ; ; k++ {
		due := begin.Add(time.Duration(k) * interval)
		if !due.Before(stop) {
			return 0
		}
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return 0
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return 0
		}
		if time.Now().After(stop.Add(openLoopGrace)) {
			break
		}
		n, idx := k, k%len(clients)
		wg.Go(func() {
			defer func() { <-sem }()
			r := rand.New(rand.NewPCG(seed, uint64(n)))
			write, err := sessiondOp(ctx, clients[idx], ws, spec, r, idx, n, make([]byte, 0, 256))
			t1 := time.Now()
			if due.Before(measureFrom) {
				return
			}
			if err != nil {
				rec.fail(reasonOf(err), t1)
			} else {
				rec.ok(t1.Sub(due), t1, write)
			}
		})
	}
	// Dispatch fell behind by more than the grace.
	<-sem
	return int64(stop.Sub(begin)/interval) - int64(k)
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
