package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"sessiond/ipc"
)

// reader is the harness's "reader" child: it parses sessions.json in a loop until killed.
type reader struct {
	cmd    *exec.Cmd
	stdout *syncBuffer // one line per 50 successful parses
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

func startReader(t *testing.T, store string) *reader {
	t.Helper()
	r := &reader{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(os.Args[0], store)
	r.cmd.Env = append(os.Environ(), "SESSIOND_TEST_CHILD=reader")
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	require.NoError(t, r.cmd.Start())
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
	})
	return r
}

// requireRunning checks that the reader has not failed so far.
func (r *reader) requireRunning(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		t.Fatalf("the reader exited (%v): %s", r.err, r.stderr.String())
	default:
	}
}

// entryN returns the "n" field of an entry's value.
func entryN(t *testing.T, raw []byte) int {
	t.Helper()
	var v struct{ N *int }
	require.NoError(t, json.Unmarshal(raw, &v), string(raw))
	require.NotNil(t, v.N, string(raw))
	return *v.N
}

// TestConcurrentWritersWithReader: 32 clients write while another process keeps parsing
// sessions.json, which is rewritten every few milliseconds; the file is always valid and,
// after flush, holds every acknowledged write.
func TestConcurrentWritersWithReader(t *testing.T) {
	d := startDaemon(t, newDir(t), "--snapshot-interval", "5ms", "--log-level", "info")
	rd := startReader(t, d.store)
	ctx := ctxTimeout(t, 60*time.Second)

	const clients = 32
	type outcome struct {
		key   string
		acked int // writes 1..acked were acknowledged
		err   error
	}
	results := make(chan outcome, clients)
	stopAt := time.Now().Add(3 * time.Second)
	for i := range clients {
		c := d.client()
		go func() {
			o := outcome{key: fmt.Sprintf("c%02d", i)}
			for n := 1; n <= 2000 && time.Now().Before(stopAt); n++ {
				opts := []ipc.WriteOption{ipc.RequestID(fmt.Sprintf("%s-%d", o.key, n))}
				if n%2 == 0 {
					opts = append(opts, ipc.Durable(false)) // flush must cover these too
				}
				var err error
				merge := json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))
				if n%10 == 0 {
					_, err = c.Txn(ctx, []ipc.TxnOp{
						{Op: "patch", Key: o.key, Merge: merge},
						{Op: "put", Key: fmt.Sprintf("%s/%d", o.key, n), Value: json.RawMessage(`{}`)},
					}, opts...)
				} else {
					_, err = c.Patch(ctx, o.key, merge, opts...)
				}
				if err != nil {
					o.err = fmt.Errorf("%s write %d: %w", o.key, n, err)
					break
				}
				o.acked = n
			}
			results <- o
		}()
	}
	acked := make(map[string]int)
	total := 0
	for range clients {
		o := <-results
		require.NoError(t, o.err)
		acked[o.key] = o.acked
		total += o.acked
	}
	rd.requireRunning(t)

	fr, err := d.client().Flush(ctx)
	require.NoError(t, err)
	t.Logf("%d writes acknowledged in ~3s by %d clients; rev %d", total, clients, fr.Rev)
	rd.requireRunning(t)
	parses := strings.Count(rd.stdout.String(), "\n") * 50
	t.Logf("the reader parsed sessions.json at least %d times", parses)
	require.GreaterOrEqual(t, parses, 50, "the reader hardly ran")

	onDisk := readStore(t, d.store)
	want := 0
	for key, n := range acked {
		raw, found := onDisk[key]
		require.True(t, found, key)
		require.Equal(t, n, entryN(t, raw), "%s: the counter on disk differs from the acknowledged writes", key)
		for k := 10; k <= n; k += 10 {
			_, found := onDisk[fmt.Sprintf("%s/%d", key, k)]
			require.True(t, found, "txn %d of %s missing", k, key)
		}
		want += 1 + n/10
	}
	require.Len(t, onDisk, want, "entries that no acknowledged write made")
	d.stop()
}

// rawLoad is one pipelined connection sending puts without waiting for answers.
type rawLoad struct {
	c      *net.UnixConn
	goaway chan struct{} // closed by the reading side when goaway arrives

	// Written by the writing goroutine, read after it is done.
	sent       int   // puts 1..sent were written completely before any write error
	writeErr   error // the write that failed, if any
	errBeforeG bool  // it failed before goaway was seen

	// Written by the reading goroutine, read after it is done.
	ok         map[int]bool   // answered with success
	refused    map[int]string // answered with an error (executed:false checked), by reason
	violations []string       // answers breaking the contract
	sawGoaway  bool
	readErr    error
}

func (l *rawLoad) write(prefix string) {
	var buf bytes.Buffer
	for id := 1; id <= 200000; {
		select {
		case <-l.goaway:
			// A client that received goaway sends nothing more; closing our side tells
			// the server it may close as soon as everything is answered.
			l.c.CloseWrite()
			return
		default:
		}
		buf.Reset()
		for j := 0; j < 8; j++ {
			fmt.Fprintf(&buf, `{"jsonrpc":"2.0","id":%d,"method":"put","params":{"key":"%s-%d","value":{"id":%d}}}`+"\n", id+j, prefix, id+j, id+j)
		}
		if _, err := l.c.Write(buf.Bytes()); err != nil {
			l.writeErr = err
			select {
			case <-l.goaway:
			default:
				l.errBeforeG = true
			}
			return
		}
		id += 8
		l.sent = id - 1
	}
	l.c.CloseWrite()
}

func (l *rawLoad) read(answered *atomic.Int64) {
	l.ok, l.refused = make(map[int]bool), make(map[int]string)
	r := bufio.NewReader(l.c)
	for {
		l.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := r.ReadBytes('\n')
		if err != nil {
			if len(line) > 0 {
				l.violations = append(l.violations, fmt.Sprintf("partial last message %q", line))
			}
			l.readErr = err
			return
		}
		var m struct {
			JSONRPC string
			ID      *int
			Method  string
			Result  json.RawMessage
			Error   *struct {
				Data struct {
					Reason   string
					Executed *bool
				}
			}
		}
		if err := json.Unmarshal(line, &m); err != nil {
			l.violations = append(l.violations, fmt.Sprintf("undecodable %q", line))
			continue
		}
		switch {
		case m.JSONRPC != "2.0":
			l.violations = append(l.violations, fmt.Sprintf("no jsonrpc 2.0: %q", line))
		case m.Method == "goaway":
			if !l.sawGoaway {
				l.sawGoaway = true
				close(l.goaway)
			}
		case m.ID == nil:
			l.violations = append(l.violations, fmt.Sprintf("answer without id: %q", line))
		case m.Error != nil:
			if m.Error.Data.Executed == nil || *m.Error.Data.Executed {
				l.violations = append(l.violations, fmt.Sprintf("error without executed:false: %q", line))
			}
			l.refused[*m.ID] = m.Error.Data.Reason
		default:
			l.ok[*m.ID] = true
			answered.Add(1)
		}
	}
}

// TestSigtermUnderLoad: pipelined connections and retrying clients keep writing while
// the daemon is stopped. Every request the server read is answered (success, or an error
// with executed:false that indeed did not happen), the exit status is 0, the socket is
// gone and sessions.json holds every acknowledged write.
func TestSigtermUnderLoad(t *testing.T) {
	// A long grace so that a slow machine still writes within it; closing our side ends it early.
	d := startDaemon(t, newDir(t), "--log-level", "info", "--goaway-grace", "5s")

	var answered atomic.Int64
	const raws = 4
	loads := make([]*rawLoad, raws)
	var rawWG sync.WaitGroup
	for i := range loads {
		c, err := net.Dial("unix", d.socket)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		l := &rawLoad{c: c.(*net.UnixConn), goaway: make(chan struct{})}
		loads[i] = l
		rawWG.Add(2)
		go func() { defer rawWG.Done(); l.write(fmt.Sprintf("raw%d", i)) }()
		go func() { defer rawWG.Done(); l.read(&answered) }()
	}

	// Clients retry on their own (shutting_down, lost connections) until the daemon is gone.
	loopCtx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		<-d.done
		cancel()
	}()
	const clients = 8
	type chain struct {
		key              string
		acked, attempted int // writes 1..acked were acknowledged, 1..attempted tried
		err              error
	}
	chains := make(chan chain, clients)
	var clientAcks atomic.Int64
	for i := range clients {
		c := d.client()
		go func() {
			ch := chain{key: fmt.Sprintf("c%d", i)}
			for n := 1; n <= 100000; n++ {
				ch.attempted = n
				_, err := c.Patch(loopCtx, ch.key, json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)), ipc.RequestID(fmt.Sprintf("%s-%d", ch.key, n)))
				if err != nil {
					if loopCtx.Err() == nil {
						ch.err = err // the daemon is still there: this should not fail
					}
					break
				}
				ch.acked = n
				clientAcks.Add(1)
			}
			chains <- ch
		}()
	}

	require.Eventually(t, func() bool {
		return answered.Load() >= 500 && clientAcks.Load() >= 50
	}, 30*time.Second, 5*time.Millisecond, "no load built up")
	d.signal(syscall.SIGTERM)

	rawDone := make(chan struct{})
	go func() {
		rawWG.Wait()
		close(rawDone)
	}()
	select {
	case <-rawDone:
	case <-time.After(60 * time.Second):
		t.Fatal("pipelined connections were not closed after SIGTERM")
	}
	require.NoError(t, d.wait(), "exit status after SIGTERM")
	_, err := os.Stat(d.socket)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket was left behind")
	onDisk := readStore(t, d.store)

	var totalOK, totalRefused, notSent int
	for i, l := range loads {
		require.Empty(t, l.violations, "conn %d", i)
		require.True(t, l.sawGoaway, "conn %d got no goaway before the close", i)
		require.False(t, l.errBeforeG, "conn %d: write failed before goaway: %v", i, l.writeErr)
		for id := 1; id <= l.sent; id++ {
			_, ok := l.ok[id]
			reason, refused := l.refused[id]
			require.True(t, ok || refused, "conn %d: request %d was sent and never answered (read error %v)", i, id, l.readErr)
			// Plain map lookups: require.Contains on a map is linear.
			raw, found := onDisk[fmt.Sprintf("raw%d-%d", i, id)]
			if ok {
				require.True(t, found, "conn %d: acknowledged write %d is missing", i, id)
				require.Equal(t, id, entryIDField(t, raw))
			} else {
				require.False(t, found, "conn %d: write %d refused with %s happened", i, id, reason)
				require.Contains(t, []string{"shutting_down", "busy"}, reason)
			}
		}
		// A write that failed may have sent part of its 8 lines.
		for id := range l.ok {
			require.LessOrEqual(t, id, l.sent+8, "conn %d: an answer to a request never sent", i)
		}
		for id := range l.refused {
			require.LessOrEqual(t, id, l.sent+8, "conn %d: an answer to a request never sent", i)
		}
		totalOK += len(l.ok)
		totalRefused += len(l.refused)
		if l.writeErr != nil {
			notSent += 8
		}
	}
	t.Logf("pipelined: %d answered ok, %d refused (executed:false), %d in a write that failed after goaway", totalOK, totalRefused, notSent)

	// Every acknowledged write of the clients is there; the attempt in flight when the
	// daemon went away may or may not be.
	for range clients {
		ch := <-chains
		require.NoError(t, ch.err)
		raw, ok := onDisk[ch.key]
		if ch.acked == 0 && !ok {
			continue
		}
		require.True(t, ok, ch.key)
		n := entryN(t, raw)
		require.GreaterOrEqual(t, n, ch.acked, "%s: acknowledged write %d lost", ch.key, ch.acked)
		require.LessOrEqual(t, n, ch.attempted, ch.key)
	}
}

func entryIDField(t *testing.T, raw []byte) int {
	t.Helper()
	var v struct{ ID int }
	require.NoError(t, json.Unmarshal(raw, &v), string(raw))
	return v.ID
}

// casWrite is one write of a client's compare-and-set chain on its own key: value n, valid
// only on top of the revision the previous write produced.
type casWrite struct {
	n     int
	ifRev int64
	rid   string
}

// casChain is what one client knows after the crash.
type casChain struct {
	key      string
	last     *casWrite // the last acknowledged write
	lastRev  int64     // its revision
	inDoubt  *casWrite // the write in flight when the daemon died, outcome unknown
	failures error
}

// TestKill9UnderLoad: clients run compare-and-set chains (each write valid only on top of
// the previous one's revision, with a request_id) while the daemon is killed with SIGKILL.
// After a restart every acknowledged write is there; resending the last acknowledged write
// and the in-doubt one with their request_ids returns their original outcome and never
// applies one twice (a second application would fail its if_rev and answer conflict).
func TestKill9UnderLoad(t *testing.T) {
	dir := newDir(t)
	d := startDaemon(t, dir, "--log-level", "info", "--snapshot-interval", "5ms")

	loopCtx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		<-d.done
		cancel()
	}()
	const clients = 16
	chains := make(chan casChain, clients)
	var acks atomic.Int64
	for i := range clients {
		c := d.client()
		go func() {
			ch := casChain{key: fmt.Sprintf("k%d", i)}
			for n := 1; n <= 100000; n++ {
				w := &casWrite{n: n, rid: fmt.Sprintf("k%d-%d", i, n)}
				if ch.last != nil {
					w.ifRev = ch.lastRev
				}
				rev, err := c.Put(loopCtx, ch.key, json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)), ipc.IfRev(w.ifRev), ipc.RequestID(w.rid))
				if err != nil {
					if loopCtx.Err() != nil {
						ch.inDoubt = w
					} else {
						ch.failures = fmt.Errorf("%s write %d: %w", ch.key, n, err)
					}
					break
				}
				ch.last, ch.lastRev = w, rev
				acks.Add(1)
			}
			chains <- ch
		}()
	}
	require.Eventually(t, func() bool { return acks.Load() >= 1000 }, 30*time.Second, 5*time.Millisecond, "no load built up")
	d.signal(syscall.SIGKILL)
	err := d.wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	require.Equal(t, -1, exitErr.ExitCode(), "killed by the signal")
	got := make([]casChain, 0, clients)
	for range clients {
		ch := <-chains
		require.NoError(t, ch.failures)
		got = append(got, ch)
	}

	d2 := startDaemon(t, dir, "--log-level", "info")
	c := d2.client()
	ctx := ctxTimeout(t, 60*time.Second)
	applied, notApplied := 0, 0
	for _, ch := range got {
		lastN, lastRev := 0, int64(0) // nothing acknowledged: the key must not exist
		if ch.last != nil {
			lastN, lastRev = ch.last.n, ch.lastRev
		}
		n, rev := 0, int64(0)
		e, err := c.Get(ctx, ch.key)
		if ipc.ReasonOf(err) != "not_found" {
			require.NoError(t, err, ch.key)
			n, rev = entryN(t, e.Value), e.Rev
		}
		if ch.inDoubt == nil || n != ch.inDoubt.n {
			require.Equal(t, lastN, n, "%s: acknowledged write %d lost (found %d)", ch.key, lastN, n)
			require.Equal(t, lastRev, rev, ch.key)
		}

		// The last acknowledged write, resent: its original revision, nothing applied.
		if w := ch.last; w != nil {
			got, err := c.Put(ctx, ch.key, json.RawMessage(fmt.Sprintf(`{"n":%d}`, w.n)), ipc.IfRev(w.ifRev), ipc.RequestID(w.rid))
			require.NoError(t, err, "%s: resending acknowledged write %d after the crash", ch.key, w.n)
			require.Equal(t, lastRev, got, "%s: the resent write was not answered with its original revision", ch.key)
		}

		want := lastN
		if w := ch.inDoubt; w != nil {
			value := json.RawMessage(fmt.Sprintf(`{"n":%d}`, w.n))
			got, err := c.Put(ctx, ch.key, value, ipc.IfRev(w.ifRev), ipc.RequestID(w.rid))
			require.NoError(t, err, "%s: resending in-doubt write %d", ch.key, w.n)
			if n == w.n {
				applied++
				require.Equal(t, rev, got, "%s: the in-doubt write was applied before the crash; its retry must answer that revision", ch.key)
			} else {
				notApplied++
				require.Greater(t, got, rev)
			}
			again, err := c.Put(ctx, ch.key, value, ipc.IfRev(w.ifRev), ipc.RequestID(w.rid))
			require.NoError(t, err)
			require.Equal(t, got, again, "%s: a second retry got another outcome", ch.key)
			want = w.n
		}
		e, err = c.Get(ctx, ch.key)
		require.NoError(t, err)
		require.Equal(t, want, entryN(t, e.Value), "%s: the counter differs from the distinct acknowledged request_ids", ch.key)
	}
	t.Logf("after kill -9: %d acknowledged writes, in-doubt writes found applied %d, not applied %d", acks.Load(), applied, notApplied)
	d2.stop()
}
