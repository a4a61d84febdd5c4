package actor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"sessiond/persist"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type harness struct {
	t      *testing.T
	dir    string
	fs     *faultFS
	cfg    Config
	a      *Actor
	cancel context.CancelFunc
	done   chan error
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), fs: &faultFS{}}
	h.cfg = Config{Store: storePath(h.dir), FS: h.fs, SnapshotInterval: -1, RetryInterval: 5 * time.Millisecond}
	if mod != nil {
		mod(&h.cfg)
	}
	return h
}

// open loads the store without running the actor yet.
func (h *harness) open() *harness {
	h.t.Helper()
	a, err := Open(h.cfg)
	require.NoError(h.t, err)
	h.a = a
	return h
}

func (h *harness) run() *harness {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.a.Run(ctx) }()
	h.t.Cleanup(func() {
		if h.cancel != nil {
			h.stop()
		}
	})
	return h
}

func (h *harness) start() *harness { return h.open().run() }

func (h *harness) stop() error {
	h.cancel()
	h.cancel = nil
	err := <-h.done
	require.NoError(h.t, h.a.Close())
	return err
}

// stopWithoutSnapshot stops the actor with its final snapshot failing, as after a crash:
// sessions.json keeps its last version and the journal holds the rest.
func (h *harness) stopWithoutSnapshot() {
	h.t.Helper()
	h.fs.setFail(func(op, path string) error {
		if op == "rename" && path == h.cfg.Store {
			return syscall.EIO
		}
		return nil
	})
	require.Error(h.t, h.stop())
	h.fs.setFail(nil)
}

// restart stops the actor and opens the same store again.
func (h *harness) restart() *harness {
	h.t.Helper()
	require.NoError(h.t, h.stop())
	return h.start()
}

func (h *harness) call(method, params string) Reply {
	h.t.Helper()
	select {
	case r := <-h.a.Submit(method, []byte(params)):
		return r
	case <-time.After(10 * time.Second):
		h.t.Fatalf("%s %s: no reply", method, params)
		return Reply{}
	}
}

// ok calls and decodes a successful result.
func (h *harness) ok(method, params string) map[string]any {
	h.t.Helper()
	r := h.call(method, params)
	require.Nil(h.t, r.Err, "%s %s", method, params)
	var m map[string]any
	require.NoError(h.t, json.Unmarshal(r.Result, &m), string(r.Result))
	return m
}

func (h *harness) fails(method, params, reason string) *Error {
	h.t.Helper()
	r := h.call(method, params)
	require.NotNil(h.t, r.Err, "%s %s: want %s, got %s", method, params, reason, r.Result)
	require.Equal(h.t, reason, r.Err.Reason, r.Err.Message)
	return r.Err
}

func TestMethods(t *testing.T) {
	h := newHarness(t, nil).start()
	require.Equal(t, map[string]any{"key": "a", "rev": 1.0}, h.ok("put", `{"key":"a","value":{"x":1}}`))
	require.Equal(t, map[string]any{"key": "a", "rev": 1.0, "value": map[string]any{"x": 1.0}}, h.ok("get", `{"key":"a"}`))
	require.Equal(t, map[string]any{"key": "a", "rev": 2.0, "value": map[string]any{"x": 1.0, "y": "z"}},
		h.ok("patch", `{"key":"a","merge":{"y":"z"}}`))
	require.Equal(t, map[string]any{"key": "b", "rev": 3.0, "value": map[string]any{"n": 2.0}},
		h.ok("patch", `{"key":"b","merge":{"n":2,"gone":null}}`), "patching a missing key creates it")
	require.Equal(t, map[string]any{"key": "b", "rev": 4.0, "deleted": true}, h.ok("delete", `{"key":"b"}`))
	require.Equal(t, map[string]any{"key": "b", "rev": 4.0, "deleted": false}, h.ok("delete", `{"key":"b"}`),
		"deleting a missing key uses no revision")
	h.fails("get", `{"key":"b"}`, ReasonNotFound)
	require.Equal(t, map[string]any{"items": []any{map[string]any{"key": "a", "rev": 2.0}}, "next": nil, "rev": 4.0},
		h.ok("list", `{}`))
	require.Equal(t, map[string]any{"rev": 4.0, "snapshot_rev": 4.0}, h.ok("flush", ``))
	require.Equal(t, "{\n  \"a\": {\n    \"x\": 1,\n    \"y\": \"z\"\n  }\n}", readFile(h.cfg.Store))
}

func TestInvalidParams(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxValueBytes = 100; c.MaxDepth = 4 }).start()
	for _, tc := range []struct{ method, params, reason string }{
		{"nope", `{}`, ReasonMethodNotFound},
		{"get", `[1]`, ReasonInvalidParams},
		{"get", `{}`, ReasonInvalidParams},
		{"get", `{"key":""}`, ReasonInvalidParams},
		{"get", `{"key":"` + strings.Repeat("k", 4097) + `"}`, ReasonInvalidParams},
		{"get", `{"key":"\ud800"}`, ReasonInvalidParams},
		{"get", `{"key":7}`, ReasonInvalidParams},
		{"put", `{"key":"a","value":[1]}`, ReasonInvalidParams},
		{"put", `{"key":"a","value":{"x":"` + strings.Repeat("v", 100) + `"}}`, ReasonTooLarge},
		{"put", `{"key":"a","value":{"a":{"b":{"c":{}}}}}`, ReasonInvalidParams},
		{"put", `{"key":"a","value":{},"if_rev":-1}`, ReasonInvalidParams},
		{"put", `{"key":"a","value":{},"if_rev":1.5}`, ReasonInvalidParams},
		{"put", `{"key":"a","value":{},"request_id":""}`, ReasonInvalidParams},
		{"put", `{"key":"a","value":{},"durable":"yes"}`, ReasonInvalidParams},
		{"patch", `{"key":"a","merge":null}`, ReasonInvalidParams},
		{"list", `{"limit":0}`, ReasonInvalidParams},
		{"list", `{"limit":10001}`, ReasonInvalidParams},
		{"list", `{"cursor":"zz"}`, ReasonInvalidParams},
		{"txn", `{"ops":{}}`, ReasonInvalidParams},
		{"txn", `{"ops":[{"op":"check","key":"a"}]}`, ReasonInvalidParams},
		{"txn", `{"ops":[{"op":"frob","key":"a"}]}`, ReasonInvalidParams},
	} {
		t.Run(tc.method+tc.params[:min(len(tc.params), 40)], func(t *testing.T) {
			r := h.call(tc.method, tc.params)
			require.NotNil(t, r.Err)
			require.Equal(t, tc.reason, r.Err.Reason, r.Err.Message)
		})
	}
	require.Equal(t, 0.0, h.ok("list", `{}`)["rev"], "nothing was written")
}

func TestOrderAndGroupCommit(t *testing.T) {
	h := newHarness(t, nil).open()
	const n = 300
	before := h.fs.syncs.Load()
	// Queued before the actor runs: one batch, in submission order.
	var replies []<-chan Reply
	for i := range n {
		replies = append(replies, h.a.Submit("patch", fmt.Appendf(nil, `{"key":"k","merge":{"n":%d,"f%d":true}}`, i, i)))
	}
	h.run()
	for i, ch := range replies {
		r := <-ch
		require.Nil(t, r.Err)
		require.Contains(t, string(r.Result), fmt.Sprintf(`"rev":%d,`, i+1))
	}
	require.Equal(t, int64(1), h.fs.syncs.Load()-before, "one fsync for the whole batch")
	v := h.ok("get", `{"key":"k"}`)["value"].(map[string]any)
	require.Equal(t, float64(n-1), v["n"])
	require.Len(t, v, n+1)
}

// A queue of large writes is split into batches of about maxBatchFrames bytes, so that
// their frames, entries and answers are not all in memory at once; the order holds.
func TestGroupCommitBoundedByBytes(t *testing.T) {
	h := newHarness(t, nil).open()
	const n = 20
	before := h.fs.syncs.Load()
	big := strings.Repeat("x", 1<<20)
	var replies []<-chan Reply
	for i := range n {
		replies = append(replies, h.a.Submit("put", fmt.Appendf(nil, `{"key":"k%d","value":{"big":%q}}`, i, big)))
	}
	h.run()
	for i, ch := range replies {
		r := <-ch
		require.Nil(t, r.Err)
		require.Contains(t, string(r.Result), fmt.Sprintf(`"rev":%d}`, i+1))
	}
	syncs := h.fs.syncs.Load() - before
	require.GreaterOrEqual(t, syncs, int64(n*(1<<20)/maxBatchFrames))
	require.Less(t, syncs, int64(n), "still grouped")
}

func TestBusyWhenQueueFull(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.QueueSize = 1 }).open()
	first := h.a.Submit("put", []byte(`{"key":"a","value":{}}`))
	r := <-h.a.Submit("put", []byte(`{"key":"b","value":{}}`))
	require.Equal(t, ReasonBusy, r.Err.Reason)
	require.True(t, r.Err.Retryable)
	require.Equal(t, 10, r.Err.Data["retry_after_ms"])
	h.run()
	require.Nil(t, (<-first).Err)
	h.fails("get", `{"key":"b"}`, ReasonNotFound)
}

func TestCompareAndSet(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{},"if_rev":0}`)
	e := h.fails("put", `{"key":"a","value":{},"if_rev":0}`, ReasonConflict)
	require.Equal(t, int64(1), e.Data["current_rev"])
	e = h.fails("patch", `{"key":"a","merge":{"x":1},"if_rev":7}`, ReasonConflict)
	require.Equal(t, int64(1), e.Data["current_rev"])
	e = h.fails("delete", `{"key":"zz","if_rev":3}`, ReasonConflict)
	require.Equal(t, int64(0), e.Data["current_rev"])
	require.Equal(t, 2.0, h.ok("patch", `{"key":"a","merge":{"x":1},"if_rev":1}`)["rev"])
	require.Equal(t, 3.0, h.ok("delete", `{"key":"a","if_rev":2}`)["rev"])
}

func TestTxnAllOrNothing(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"c","value":{"v":1}}`)
	e := h.fails("txn", `{"ops":[
		{"op":"put","key":"a","value":{}},
		{"op":"patch","key":"c","merge":{"v":2}},
		{"op":"delete","key":"c"},
		{"op":"check","key":"c","if_rev":1}]}`, ReasonConflict)
	require.Equal(t, 3, e.Data["index"])
	h.fails("get", `{"key":"a"}`, ReasonNotFound)
	require.Equal(t, map[string]any{"key": "c", "rev": 1.0, "value": map[string]any{"v": 1.0}}, h.ok("get", `{"key":"c"}`))

	res := h.ok("txn", `{"ops":[
		{"op":"check","key":"c","if_rev":1},
		{"op":"put","key":"a","value":{"a":1}},
		{"op":"patch","key":"c","merge":{"w":3}},
		{"op":"delete","key":"nope"},
		{"op":"put","key":"d","value":{},"if_rev":0}]}`)
	require.Equal(t, map[string]any{"rev": 2.0, "results": []any{
		map[string]any{"key": "c", "rev": 1.0},
		map[string]any{"key": "a", "rev": 2.0},
		map[string]any{"key": "c", "rev": 2.0},
		map[string]any{"key": "nope", "rev": 1.0, "deleted": false},
		map[string]any{"key": "d", "rev": 2.0},
	}}, res)
	require.Equal(t, 2.0, h.ok("list", `{}`)["rev"], "one revision for the whole txn")
}

func TestRequestIDDedup(t *testing.T) {
	h := newHarness(t, nil).start()
	first := h.ok("patch", `{"key":"n","merge":{"c":1},"request_id":"r1"}`)
	// A retry gets the original result and is not applied again, even with another
	// deadline or durability.
	require.Equal(t, first, h.ok("patch", `{"key":"n","merge":{"c":1},"request_id":"r1","durable":false,"deadline_ms":1}`))
	h.fails("patch", `{"key":"n","merge":{"c":2},"request_id":"r1"}`, ReasonRequestIDReused)
	// A final error is remembered too.
	h.ok("put", `{"key":"x","value":{}}`)
	h.fails("put", `{"key":"x","value":{},"if_rev":0,"request_id":"r2"}`, ReasonConflict)
	h.ok("delete", `{"key":"x"}`)
	h.fails("put", `{"key":"x","value":{},"if_rev":0,"request_id":"r2"}`, ReasonConflict)
	// A retryable error is not: the retry executes.
	h.fails("put", `{"key":"y","value":{},"request_id":"r3","deadline_ms":1}`, ReasonDeadline)
	h.ok("put", `{"key":"y","value":{},"request_id":"r3"}`)

	h.restart()
	require.Equal(t, first, h.ok("patch", `{"key":"n","merge":{"c":1},"request_id":"r1"}`), "records survive a restart")
	h.fails("put", `{"key":"x","value":{},"if_rev":0,"request_id":"r2"}`, ReasonConflict)
	require.Equal(t, 1.0, h.ok("get", `{"key":"n"}`)["rev"])
	require.Positive(t, h.a.Stats().DedupWindow)
}

func TestDedupWindowEviction(t *testing.T) {
	var now atomic.Int64
	now.Store(1_000_000)
	h := newHarness(t, func(c *Config) {
		c.DedupWindow = time.Minute
		c.DedupMax = 2
		c.Now = func() time.Time { return time.UnixMilli(now.Load()) }
	}).start()
	h.ok("put", `{"key":"a","value":{},"request_id":"1"}`)
	h.ok("put", `{"key":"a","value":{},"request_id":"2"}`)
	h.ok("put", `{"key":"a","value":{},"request_id":"3"}`) // evicts "1": over the count
	require.Equal(t, 2.0, h.ok("put", `{"key":"a","value":{},"request_id":"2"}`)["rev"])
	require.Equal(t, 4.0, h.ok("put", `{"key":"a","value":{},"request_id":"1"}`)["rev"], "1 was evicted, so it ran again")
	now.Add(2 * time.Minute.Milliseconds())
	require.Equal(t, 5.0, h.ok("put", `{"key":"a","value":{},"request_id":"3"}`)["rev"], "3 aged out of the window")
}

func TestDeadline(t *testing.T) {
	h := newHarness(t, nil).start()
	e := h.fails("put", `{"key":"a","value":{},"deadline_ms":1000}`, ReasonDeadline)
	require.True(t, e.Retryable)
	h.fails("get", `{"key":"a"}`, ReasonNotFound)
	future := time.Now().Add(time.Hour).UnixMilli()
	h.ok("put", fmt.Sprintf(`{"key":"a","value":{},"deadline_ms":%d}`, future))
}

func TestListPagesAndOrder(t *testing.T) {
	h := newHarness(t, nil).start()
	for _, k := range []string{"b", "7", "a:1", "10", "a:2", "a:3", "0", "x"} {
		h.ok("put", fmt.Sprintf(`{"key":%q,"value":{"k":%q}}`, k, k))
	}
	var keys []string
	cursor := "null"
	for {
		page := h.ok("list", `{"limit":3,"cursor":`+cursor+`}`)
		for _, it := range page["items"].([]any) {
			keys = append(keys, it.(map[string]any)["key"].(string))
		}
		if page["next"] == nil {
			break
		}
		cursor = fmt.Sprintf("%q", page["next"])
		if len(keys) == 3 {
			h.ok("delete", `{"key":"a:1"}`) // a delete between pages does not lose the place
		}
	}
	require.Equal(t, []string{"0", "7", "10", "b", "a:2", "a:3", "x"}, keys)
	page := h.ok("list", `{"prefix":"a:","values":true}`)
	require.Equal(t, []any{
		map[string]any{"key": "a:2", "rev": 5.0, "value": map[string]any{"k": "a:2"}},
		map[string]any{"key": "a:3", "rev": 6.0, "value": map[string]any{"k": "a:3"}},
	}, page["items"])
}

// A batch whose journal append or fsync fails is rolled back and answered storage_error;
// the next write goes to a new journal and nothing of the failed batch ever reappears.
func TestRollbackOnJournalFailure(t *testing.T) {
	for _, step := range []string{"write", "sync"} {
		for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EIO, syscall.EROFS} {
			t.Run(step+"/"+errno.Error(), func(t *testing.T) {
				h := newHarness(t, nil).start()
				h.ok("put", `{"key":"a","value":{"v":1}}`)
				h.fs.setFail(func(op, path string) error {
					if op == step && strings.HasSuffix(path, ".journal") {
						return errno
					}
					return nil
				})
				ch := h.a.Submit("patch", []byte(`{"key":"a","merge":{"v":2},"request_id":"q"}`))
				// With writes failing, no new journal can be written either and the
				// answer waits for one (see the next test); with fsync failing, the new
				// journal replaces the old at once.
				require.Eventually(t, func() bool { return h.a.Stats().Degraded != "" || len(ch) > 0 },
					5*time.Second, time.Millisecond)
				h.fs.setFail(nil)
				r := <-ch
				require.Equal(t, ReasonStorage, r.Err.Reason)
				require.True(t, r.Err.Retryable)
				require.Contains(t, r.Err.Message, errno.Error())
				require.Equal(t, map[string]any{"key": "a", "rev": 1.0, "value": map[string]any{"v": 1.0}}, h.ok("get", `{"key":"a"}`))
				// The retry with the same request_id executes now.
				require.Equal(t, 2.0, h.ok("patch", `{"key":"a","merge":{"v":3},"request_id":"q"}`)["rev"])
				require.Empty(t, h.a.Stats().Degraded)
				require.NoError(t, h.stop())
				h.start()
				require.Equal(t, map[string]any{"key": "a", "rev": 2.0, "value": map[string]any{"v": 3.0}}, h.ok("get", `{"key":"a"}`))
			})
		}
	}
}

// A full disk: the batch's frames are cut off the journal at once (that needs no
// space), so the error is answered at once even though no new journal can be written;
// later writes are refused at once until the disk has room again.
func TestDiskFullAnswersAtOnce(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{}}`)
	h.fs.setFail(func(op, path string) error {
		if strings.Contains(path, ".journal") && (op == "write" || op == "create") {
			return syscall.ENOSPC
		}
		return nil
	})
	h.fails("put", `{"key":"b","value":{}}`, ReasonStorage)
	h.fails("put", `{"key":"c","value":{}}`, ReasonStorage)
	require.Contains(t, h.a.Stats().Degraded, "no space")
	h.ok("get", `{"key":"a"}`)
	h.fs.setFail(nil)
	h.ok("put", `{"key":"d","value":{}}`)
	h.restart()
	h.fails("get", `{"key":"b"}`, ReasonNotFound)
	h.fails("get", `{"key":"c"}`, ReasonNotFound)
	h.ok("get", `{"key":"d"}`)
}

// While the failed frames can neither be cut off nor the journal replaced, the error
// answer for a batch that may have reached the journal waits: answering executed:false
// before then could be a lie after a crash.
func TestFailedBatchAnswerWaitsForNewJournal(t *testing.T) {
	h := newHarness(t, nil).start()
	h.fs.setFail(func(op, path string) error {
		if strings.Contains(path, ".journal") && (op == "sync" || op == "create" || op == "truncate") {
			return syscall.EIO
		}
		return nil
	})
	ch := h.a.Submit("put", []byte(`{"key":"a","value":{}}`))
	require.Eventually(t, func() bool { return h.a.Stats().Degraded != "" }, 5*time.Second, time.Millisecond)
	select {
	case r := <-ch:
		t.Fatalf("answered before the journal was replaced: %+v", r)
	default:
	}
	// Writes that reach no disk are refused at once meanwhile; reads carry on.
	h.fails("put", `{"key":"b","value":{}}`, ReasonStorage)
	h.fails("get", `{"key":"a"}`, ReasonNotFound)
	h.fs.setFail(nil)
	r := <-ch
	require.Equal(t, ReasonStorage, r.Err.Reason)
	h.fails("get", `{"key":"a"}`, ReasonNotFound)
	h.ok("put", `{"key":"c","value":{}}`)
}

func TestSnapshotFailureKeepsServingAndRecovers(t *testing.T) {
	for _, step := range []string{"write", "sync", "rename", "syncdir"} {
		for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EIO, syscall.EROFS} {
			t.Run(step+"/"+errno.Error(), func(t *testing.T) {
				testSnapshotFailure(t, step, errno)
			})
		}
	}
}

func testSnapshotFailure(t *testing.T, step string, errno syscall.Errno) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{}}`)
	h.ok("flush", ``)
	h.ok("put", `{"key":"b","value":{}}`)
	h.fs.setFail(func(op, path string) error {
		if op == step && (path == h.cfg.Store || path == h.dir) {
			return errno
		}
		return nil
	})
	h.fails("flush", ``, ReasonStorage)
	require.Contains(t, h.a.Stats().Degraded, errno.Error())
	h.ok("put", `{"key":"c","value":{}}`)
	if step != "syncdir" { // after a failed directory fsync the new file is in place already
		require.Equal(t, "{\n  \"a\": {}\n}", readFile(h.cfg.Store), "the old file stays whole")
	}
	h.fs.setFail(nil)
	require.Eventually(t, func() bool { return h.a.Stats().Degraded == "" }, 5*time.Second, time.Millisecond)
	h.ok("flush", ``)
	require.Equal(t, "{\n  \"a\": {},\n  \"b\": {},\n  \"c\": {}\n}", readFile(h.cfg.Store))
	require.Zero(t, h.a.Stats().External, "our own file is not taken for another writer's")
}

func TestRecoverFromJournalWithoutSnapshot(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{"v":1}}`)
	h.ok("flush", ``)
	h.ok("put", `{"key":"b","value":{}}`)
	h.ok("delete", `{"key":"a"}`)
	h.ok("put", `{"key":"a","value":{"v":2}}`)
	h.stopWithoutSnapshot()
	require.Equal(t, "{\n  \"a\": {\n    \"v\": 1\n  }\n}", readFile(h.cfg.Store), "sessions.json kept rev 1")
	h.start()
	require.Equal(t, map[string]any{"key": "a", "rev": 4.0, "value": map[string]any{"v": 2.0}}, h.ok("get", `{"key":"a"}`))
	require.Equal(t, 4.0, h.ok("list", `{}`)["rev"])
	h.ok("flush", ``)
	require.Equal(t, "{\n  \"b\": {},\n  \"a\": {\n    \"v\": 2\n  }\n}", readFile(h.cfg.Store))
	require.Equal(t, 5.0, h.ok("put", `{"key":"c","value":{}}`)["rev"], "revisions keep increasing across restarts")
}

func TestTornJournalTail(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{}}`)
	require.NoError(t, h.stop())
	j := h.cfg.Store + ".journal"
	f, err := os.OpenFile(j, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	frame := persist.AppendRecord(nil, &persist.Record{Rev: 2, Ops: []persist.Op{{Key: "b", Frag: []byte(`  "b": {}`)}}})
	_, err = f.Write(frame[:len(frame)-3])
	require.NoError(t, err)
	require.NoError(t, f.Close())
	h.start()
	h.fails("get", `{"key":"b"}`, ReasonNotFound)
	require.Equal(t, 2.0, h.ok("put", `{"key":"c","value":{}}`)["rev"])
}

func TestCorruptJournalRefusesToStart(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{"v":"aaaaaaaa"}}`)
	h.ok("put", `{"key":"b","value":{}}`)
	h.stopWithoutSnapshot()
	j := h.cfg.Store + ".journal"
	b, err := os.ReadFile(j)
	require.NoError(t, err)
	i := strings.Index(string(b), "aaaaaaaa")
	b[i] = 'X'
	require.NoError(t, os.WriteFile(j, b, 0o600))
	_, err = Open(h.cfg)
	require.ErrorIs(t, err, persist.ErrCorrupt)
	after, err := os.ReadFile(j)
	require.NoError(t, err)
	require.Equal(t, b, after, "a corrupt journal is left as it is")
}

func TestExternalChange(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{}}`)
	h.ok("flush", ``)
	// Another writer replaces the file while sessiond runs.
	require.NoError(t, os.WriteFile(h.cfg.Store, []byte(`{"intruder": {}}`), 0o600))
	h.ok("put", `{"key":"b","value":{}}`)
	h.ok("flush", ``)
	require.Equal(t, 1, h.a.Stats().External)
	asides, _ := filepath.Glob(h.cfg.Store + ".external-*")
	require.Len(t, asides, 1)
	require.Equal(t, `{"intruder": {}}`, readFile(asides[0]))
	require.Equal(t, "{\n  \"a\": {},\n  \"b\": {}\n}", readFile(h.cfg.Store))

	// And while it is down: its version is kept and taken as the base, with every
	// acknowledged write applied again on top.
	h.ok("put", `{"key":"c","value":{}}`)
	h.stopWithoutSnapshot()
	require.NoError(t, os.WriteFile(h.cfg.Store, []byte("{\n  \"z\": {\"q\": 1}\n}"), 0o600))
	h.start()
	require.Equal(t, 1, h.a.Stats().External)
	require.Equal(t, "{\n  \"z\": {\n    \"q\": 1\n  },\n  \"c\": {}\n}", readFile(h.cfg.Store))
	asides, _ = filepath.Glob(h.cfg.Store + ".external-*")
	require.Len(t, asides, 2)
}

func TestLegacyStoreImport(t *testing.T) {
	h := newHarness(t, nil)
	legacy := "{\n  \"agent:main:main\": {\n    \"sessionId\": \"s1\",\n    \"updatedAt\": 1732000000000\n  }\n}"
	require.NoError(t, os.WriteFile(h.cfg.Store, []byte(legacy), 0o600))
	h.start()
	require.Equal(t, 1.0, h.ok("get", `{"key":"agent:main:main"}`)["rev"])
	h.ok("flush", ``)
	require.Equal(t, legacy, readFile(h.cfg.Store), "loaded then flushed without changes: byte-identical")
	require.NoError(t, h.stop())
	h.start()
	require.Equal(t, 1.0, h.ok("get", `{"key":"agent:main:main"}`)["rev"])
	require.Equal(t, 0, h.a.Stats().External)
}

func TestUnparseableStoreRefused(t *testing.T) {
	h := newHarness(t, nil)
	bad := []byte("{\n  \"a\": {\n    \"x\": 1,\n  }\n}")
	require.NoError(t, os.WriteFile(h.cfg.Store, bad, 0o600))
	_, err := Open(h.cfg)
	require.ErrorContains(t, err, h.cfg.Store)
	require.ErrorContains(t, err, "offset")
	after, err := os.ReadFile(h.cfg.Store)
	require.NoError(t, err)
	require.Equal(t, bad, after)
	_, err = os.Stat(h.cfg.Store + ".journal")
	require.True(t, errors.Is(err, os.ErrNotExist), "nothing written beside it")
}

func TestLeftoverTempFilesRemoved(t *testing.T) {
	h := newHarness(t, nil)
	tmp := filepath.Join(h.dir, ".sessions.json12345")
	other := filepath.Join(h.dir, ".sessions.jsonx")
	require.NoError(t, os.WriteFile(tmp, []byte("{"), 0o600))
	require.NoError(t, os.WriteFile(other, []byte("{"), 0o600))
	h.start()
	_, err := os.Stat(tmp)
	require.True(t, errors.Is(err, os.ErrNotExist))
	_, err = os.Stat(other)
	require.NoError(t, err, "only renameio's temp names are touched")
}

// A lone client's request is run on its caller's goroutine while the actor is idle, and
// the timers that batch arms reach Run's select: the background snapshot and the fsync of
// a durable:false write, which only Run starts.
func TestSubmitOrRunRunsWhenIdle(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.SnapshotInterval, c.SyncInterval = 5*time.Millisecond, 5*time.Millisecond
	}).start()
	settled := func() bool {
		s := h.a.Stats()
		return s.SnapshotRev == s.Rev && s.DurableRev == s.Rev
	}
	h.ok("put", `{"key":"a","value":{}}`) // through Run: a batch of one
	ran := false
	for i := 0; i < 100 && !ran; i++ {
		require.Eventually(t, settled, 5*time.Second, time.Millisecond, "nothing left armed")
		// Run may still be finishing a turn; then the request is queued.
		ch := h.a.SubmitOrRun("put", fmt.Appendf(nil, `{"key":"b","value":{"i":%d},"durable":false}`, i))
		ran = len(ch) == 1
		require.Nil(t, (<-ch).Err)
	}
	require.True(t, ran, "never run on the caller's goroutine")
	require.Eventually(t, settled, 5*time.Second, time.Millisecond, "snapshot and fsync after a write run by SubmitOrRun")
}

// SubmitOrRun never overtakes a request queued before it: each sender's writes are
// applied in the order it made them, whichever goroutine runs them. (Under -race, also
// that Run's turns and the ones run by callers share nothing unguarded.)
func TestSubmitOrRunKeepsOrder(t *testing.T) {
	for _, senders := range []int{1, 4} {
		t.Run(fmt.Sprint(senders), func(t *testing.T) { testSubmitOrRunKeepsOrder(t, senders) })
	}
}

func testSubmitOrRunKeepsOrder(t *testing.T, senders int) {
	h := newHarness(t, func(c *Config) { c.SnapshotInterval = time.Millisecond }).start()
	errs := make(chan error, senders)
	var wg sync.WaitGroup
	for c := range senders {
		wg.Go(func() {
			rev := func(ch <-chan Reply) int64 {
				r := <-ch
				var res struct{ Rev int64 }
				if r.Err != nil || json.Unmarshal(r.Result, &res) != nil {
					return -1
				}
				return res.Rev
			}
			patch := func(n int) []byte { return fmt.Appendf(nil, `{"key":"c%d","merge":{"n":%d}}`, c, n) }
			for i := 0; i < 300; i += 3 {
				// A lone write (a batch of one: the next may run on this goroutine),
				// then one queued and one whose sender has nothing else to do.
				r0 := rev(h.a.SubmitOrRun("patch", patch(i)))
				first := h.a.Submit("patch", patch(i+1))
				second := h.a.SubmitOrRun("patch", patch(i+2))
				if r1, r2 := rev(first), rev(second); r0 < 0 || r1 <= r0 || r2 <= r1 {
					errs <- fmt.Errorf("sender %d, writes %d to %d: revisions %d, %d, %d", c, i, i+2, r0, r1, r2)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for c := range senders {
		require.Equal(t, 299.0, h.ok("get", fmt.Sprintf(`{"key":"c%d"}`, c))["value"].(map[string]any)["n"])
	}
}

// A batch run by SubmitOrRun takes nothing queued: Run may have taken a request from the
// mailbox and be waiting for own to run it, with a later one of the same connection
// behind it in the mailbox.
func TestBatchRunByCallerTakesNothingQueued(t *testing.T) {
	h := newHarness(t, nil).start()
	h.a.own.Lock() // as a SubmitOrRun running a batch does
	first := h.a.Submit("patch", []byte(`{"key":"k","merge":{"n":1}}`))
	require.Eventually(t, func() bool { return len(h.a.mailbox) == 0 }, 5*time.Second, time.Millisecond,
		"Run took it and waits for own")
	second := h.a.Submit("patch", []byte(`{"key":"k","merge":{"n":2}}`))
	other, err := h.a.parse("put", []byte(`{"key":"other","value":{}}`))
	require.Nil(t, err)
	ch := make(chan Reply, 1)
	other.reply = ch
	h.a.queued.Add(1)
	h.a.runBatch(other, false)
	h.a.own.Unlock()
	require.Nil(t, (<-ch).Err)
	require.Nil(t, (<-first).Err)
	require.Nil(t, (<-second).Err)
	require.Equal(t, 2.0, h.ok("get", `{"key":"k"}`)["value"].(map[string]any)["n"])
}

func TestBackgroundSnapshot(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SnapshotInterval = 5 * time.Millisecond }).start()
	h.ok("put", `{"key":"a","value":{}}`)
	require.Eventually(t, func() bool { return h.a.Stats().SnapshotRev == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "{\n  \"a\": {}\n}", readFile(h.cfg.Store))
}

func TestNonDurableWritesSyncedWithinInterval(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SyncInterval = 5 * time.Millisecond }).start()
	before := h.fs.syncs.Load()
	h.ok("put", `{"key":"a","value":{},"durable":false}`)
	require.Eventually(t, func() bool { return h.a.Stats().DurableRev == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, int64(1), h.fs.syncs.Load()-before)
}

// A journal rebuilt from memory (here after a failed append) holds at most three records
// per key written since the last snapshot (its last deletion, its current value where
// it was created and where it last changed), not every version. That replays to the
// same values, revisions and order in the file as the records it replaces.
func TestRebuiltJournalRecords(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"gone","value":{"v":0}}`)
	h.ok("put", `{"key":"back","value":{"v":0}}`)
	h.ok("put", `{"key":"same","value":{"v":0}}`)
	h.ok("flush", ``)
	for i := range 100 {
		h.ok("patch", fmt.Sprintf(`{"key":"hot","merge":{"n":%d}}`, i))
	}
	h.ok("delete", `{"key":"gone"}`)
	h.ok("delete", `{"key":"back"}`)
	h.ok("put", `{"key":"back","value":{"v":1}}`)
	want := h.ok("list", `{"values":true}`)
	failOneJournalAppend(h)
	require.Empty(t, h.a.Stats().Degraded, "the journal was replaced at once")

	r, err := persist.ReadJournal(persist.OS{}, h.cfg.Store+".journal")
	require.NoError(t, err)
	var keys []string
	for _, rec := range r.Records {
		for _, op := range rec.Ops {
			keys = append(keys, fmt.Sprintf("%s@%d deleted=%v", op.Key, rec.Rev, op.Frag == nil))
		}
	}
	require.Equal(t, []string{"hot@4 deleted=false", "hot@103 deleted=false", "gone@104 deleted=true",
		"back@105 deleted=true", "back@106 deleted=false"}, keys)

	h.stopWithoutSnapshot()
	h.start()
	require.Equal(t, want, h.ok("list", `{"values":true}`), "values, revisions and order")
	h.fails("get", `{"key":"gone"}`, ReasonNotFound)
	h.fails("get", `{"key":"refused"}`, ReasonNotFound)
}

func TestJournalCompaction(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes = 4096 }).start()
	for i := range 200 {
		h.ok("patch", fmt.Sprintf(`{"key":"k%d","merge":{"n":%d}}`, i%10, i))
	}
	h.ok("flush", ``)
	// Compaction runs in the background after the snapshot.
	require.Eventually(t, func() bool {
		fi, err := os.Stat(h.cfg.Store + ".journal")
		return err == nil && fi.Size() < 4096
	}, 5*time.Second, time.Millisecond)
	h.ok("patch", `{"key":"k9","merge":{"after":true}}`)
	h.restart()
	require.Equal(t, 201.0, h.ok("get", `{"key":"k9"}`)["rev"])
	require.Equal(t, 201.0, h.ok("get", `{"key":"k9"}`)["rev"])
}

// A journal that is mostly the dedup window's outcomes is not rewritten: the new one
// would have to hold them all. Once they expire, it is.
func TestCompactionWaitsForOutcomesToExpire(t *testing.T) {
	var now atomic.Int64
	now.Store(1_000_000)
	h := newHarness(t, func(c *Config) {
		c.CompactBytes = 4096
		c.DedupWindow = time.Minute
		c.Now = func() time.Time { return time.UnixMilli(now.Load()) }
	}).start()
	big := strings.Repeat("x", 2000)
	for i := range 10 { // 20 KB of outcomes, all in the window
		h.ok("patch", fmt.Sprintf(`{"key":"k%d","merge":{"v":"%s"},"request_id":"r%d"}`, i, big, i))
	}
	journal := h.cfg.Store + ".journal"
	compacting := func() bool { h.a.own.Lock(); defer h.a.own.Unlock(); return h.a.compacting }
	before, err := os.Stat(journal)
	require.NoError(t, err)
	h.ok("flush", ``)
	require.False(t, compacting(), "the outcomes are the journal")
	after, err := os.Stat(journal)
	require.NoError(t, err)
	require.True(t, os.SameFile(before, after), "the same journal")
	require.Greater(t, after.Size(), int64(20_000))
	dedupBytes := func() (counted, sum int64) {
		h.a.own.Lock()
		defer h.a.own.Unlock()
		for i := range h.a.dedup.recs {
			sum += h.a.dedup.recs[i].size()
		}
		return h.a.dedup.bytes, sum
	}
	counted, sum := dedupBytes()
	require.Equal(t, sum, counted)
	require.Greater(t, counted, int64(20_000))

	now.Add(2 * time.Minute.Milliseconds())
	h.ok("patch", `{"key":"k0","merge":{"after":true}}`) // evicts the expired records
	h.ok("flush", ``)
	require.Eventually(t, func() bool {
		fi, err := os.Stat(journal)
		return err == nil && fi.Size() < 4096
	}, 5*time.Second, time.Millisecond, "compacted once the outcomes expired")
	h.restart()
	require.Equal(t, 11.0, h.ok("get", `{"key":"k0"}`)["rev"])
	require.Equal(t, 12.0, h.ok("patch", `{"key":"k1","merge":{},"request_id":"r1"}`)["rev"], "r1 expired: it ran again")
	h.restart() // the record of r1 comes back from the journal, its entry as a ref
	counted, sum = dedupBytes()
	require.Equal(t, sum, counted)
	require.Greater(t, counted, int64(2000))
}

func TestStopAnswersQueuedAndRefusesLater(t *testing.T) {
	h := newHarness(t, nil).start()
	var chans []<-chan Reply
	for i := range 100 {
		chans = append(chans, h.a.Submit("put", fmt.Appendf(nil, `{"key":"k%d","value":{}}`, i)))
	}
	require.NoError(t, h.stop())
	for _, ch := range chans {
		require.Nil(t, (<-ch).Err)
	}
	r := <-h.a.Submit("put", []byte(`{"key":"late","value":{}}`))
	require.Equal(t, ReasonShuttingDown, r.Err.Reason)
	require.Contains(t, readFile(h.cfg.Store), `"k99": {}`)
}

// A restart whose final snapshot fails does not go ahead: Run can be called again and
// the store carries on with nothing lost.
func TestResumeAfterFailedFinalSnapshot(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{}}`)
	h.fs.setFail(func(op, path string) error {
		if op == "rename" && path == h.cfg.Store {
			return syscall.EROFS
		}
		return nil
	})
	h.cancel()
	require.ErrorContains(t, <-h.done, "read-only")
	r := <-h.a.Submit("put", []byte(`{"key":"late","value":{}}`))
	require.Equal(t, ReasonShuttingDown, r.Err.Reason, "refused while stopped")
	h.fs.setFail(nil)
	h.a.Resume()
	h.run()
	h.ok("put", `{"key":"b","value":{}}`)
	require.Equal(t, 2.0, h.ok("list", `{}`)["rev"])
	require.NoError(t, h.stop())
	require.Equal(t, "{\n  \"a\": {},\n  \"b\": {}\n}", readFile(h.cfg.Store))
}

func TestCheckWritesNothing(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{}}`)
	h.ok("flush", ``)
	h.ok("put", `{"key":"b","value":{}}`)
	require.NoError(t, h.stop())
	tmp := filepath.Join(h.dir, ".sessions.json999")
	require.NoError(t, os.WriteFile(tmp, nil, 0o600))
	before := dirState(t, h.dir)
	st, err := Check(h.cfg)
	require.NoError(t, err)
	require.Equal(t, 2, st.Entries)
	require.Equal(t, int64(2), st.Rev)
	require.Equal(t, before, dirState(t, h.dir))

	require.NoError(t, os.WriteFile(h.cfg.Store, []byte("{"), 0o600))
	_, err = Check(h.cfg)
	require.ErrorContains(t, err, "not a valid session index")
}

func dirState(t *testing.T, dir string) map[string]string {
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	m := map[string]string{}
	for _, e := range ents {
		m[e.Name()] = readFile(filepath.Join(dir, e.Name()))
	}
	return m
}

// What sessiond does with store files it did not write: the documented outcome for each,
// and the original bytes untouched whenever it refuses.
func TestHostileStoreFiles(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 20000) + "{}" + strings.Repeat("}", 20000)
	for _, tc := range []struct {
		name, file string
		refused    string // substring of the error; "" means accepted
		key, value string // accepted: a key and its value as get returns it
	}{
		{"empty file", "", "offset 0", "", ""},
		{"truncated", "{\n  \"a\": {\n    \"x\": 1", "offset", "", ""},
		{"trailing comma", `{"a": {},}`, "offset 9", "", ""},
		{"top level array", `[{"a": 1}]`, "top level is not an object", "", ""},
		{"top level string", `"sessions"`, "top level is not an object", "", ""},
		{"byte order mark", "\ufeff{}", "offset 0", "", ""},
		{"invalid UTF-8", "{\"a\": {\"s\": \"\xff\"}}", "UTF-8", "", ""},
		{"lone surrogate key", `{"\ud800": {}}`, "UTF-8", "", ""},
		{"too deep", `{"k": ` + deep + `}`, "deep", "", ""},
		{"duplicate keys: last value, first place", `{"a": {"v": 1}, "b": {}, "a": {"v": 2}}`, "", "a", `{"v":2}`},
		{"number beyond float64 is null, as in JavaScript", `{"a": {"big": 1e400, "n": 1.50}}`, "", "a", `{"big":null,"n":1.5}`},
		{"non-object entry kept", `{"a": [1, 2]}`, "", "a", `[1,2]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			require.NoError(t, os.WriteFile(h.cfg.Store, []byte(tc.file), 0o600))
			if tc.refused != "" {
				_, err := Open(h.cfg)
				require.ErrorContains(t, err, tc.refused)
				require.ErrorContains(t, err, h.cfg.Store)
				require.Equal(t, tc.file, readFile(h.cfg.Store), "left byte-identical")
				_, err = os.Stat(h.cfg.Store + ".journal")
				require.ErrorIs(t, err, os.ErrNotExist)
				return
			}
			h.start()
			r := h.call("get", `{"key":"`+tc.key+`"}`)
			require.Nil(t, r.Err)
			require.Contains(t, string(r.Result), `"value":`+tc.value+`}`)
		})
	}
}

// A retry that asks for durability is answered only once the first attempt's write is
// on disk, even when the first attempt did not ask for it.
func TestDurableRetryOfNonDurableWrite(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SyncInterval = time.Hour }).start()
	before := h.fs.syncs.Load()
	first := h.ok("put", `{"key":"a","value":{},"request_id":"r","durable":false}`)
	require.Equal(t, before, h.fs.syncs.Load(), "not synced yet")
	require.Equal(t, first, h.ok("put", `{"key":"a","value":{},"request_id":"r"}`))
	require.Equal(t, before+1, h.fs.syncs.Load(), "synced before the retry was answered")
}

// A slow journal fsync is logged: at debug, and as a warning once very slow. (Whether a
// fast one is logged depends on the disk the test runs on.)
func TestSlowFsyncIsLogged(t *testing.T) {
	var logs lockedBuffer
	h := newHarness(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}).start()
	// lastSlow is the level of the newest "journal fsync was slow" line, "" if none.
	lastSlow := func() string {
		level := ""
		for line := range strings.Lines(logs.String()) {
			var rec struct{ Level, Msg string }
			require.NoError(t, json.Unmarshal([]byte(line), &rec))
			if strings.HasPrefix(rec.Msg, "journal fsync was slow") {
				level = rec.Level
			}
		}
		return level
	}
	delay := func(d time.Duration) {
		h.fs.setFail(func(op, path string) error {
			if op == "sync" && strings.HasSuffix(path, ".journal") {
				time.Sleep(d)
			}
			return nil
		})
	}
	delay(slowSyncDebug + 5*time.Millisecond)
	h.ok("put", `{"key":"slow","value":{}}`) // logged before the answer
	require.Contains(t, []string{"DEBUG", "WARN"}, lastSlow())
	delay(slowSyncWarn + 5*time.Millisecond)
	h.ok("put", `{"key":"slower","value":{}}`)
	require.Equal(t, "WARN", lastSlow())
}

// A background snapshot is throttled, but not one that a flush or a stop waits for: at
// 10 KB/s these 3 MB would take five minutes. A flush that needs a newer snapshot than
// the running one abandons it; a stop that needs none waits for it at full speed.
func TestThrottledSnapshotHurried(t *testing.T) {
	big := strings.Repeat("x", 100_000)
	for _, end := range []string{"flush", "stop"} {
		t.Run(end, func(t *testing.T) {
			var logs lockedBuffer
			h := newHarness(t, func(c *Config) {
				c.FS = persist.OS{} // a real file: paced, so throttled
				c.SnapshotRate = 10e3
				c.SnapshotInterval = time.Millisecond
				c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}).start()
			for i := range 30 {
				h.ok("put", fmt.Sprintf(`{"key":"k%d","value":{"v":"%s"}}`, i, big))
			}
			if end == "stop" {
				// The running snapshot is to hold every write: the one the stop needs.
				h.ok("flush", `{}`)
				h.ok("put", `{"key":"k30","value":{}}`)
			}
			time.Sleep(100 * time.Millisecond) // a snapshot is running
			if end == "flush" {
				h.ok("put", `{"key":"k31","value":{}}`) // which that snapshot does not hold
			}
			mark := len(logs.String())
			done := make(chan error, 1)
			go func() {
				if end == "stop" {
					done <- h.stop()
					return
				}
				if r := <-h.a.Submit("flush", []byte(`{}`)); r.Err != nil {
					done <- r.Err
					return
				}
				done <- nil
			}()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Fatalf("%s waited for the throttle", end)
			}
			if end == "flush" {
				require.NoError(t, h.stop())
			}
			got, err := os.ReadFile(h.cfg.Store)
			require.NoError(t, err)
			require.Contains(t, string(got), `"k29"`)
			require.Equal(t, end == "flush", strings.Contains(logs.String()[mark:], "snapshot abandoned for a newer one"))
		})
	}
}

// A compaction is written no faster than a background snapshot, and one running when
// the actor stops goes at full speed: the stop does not wait for the throttle.
func TestThrottledCompactionHurriedAtStop(t *testing.T) {
	var logs lockedBuffer
	h := newHarness(t, func(c *Config) {
		c.FS = persist.OS{} // a real file: paced, so throttled
		c.SnapshotRate = 1e3
		c.CompactBytes = 1 << 20
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	}).start()
	big := strings.Repeat("x", 100_000)
	for i := range 15 { // 1.5 MB of journal, that the snapshot makes obsolete
		h.ok("patch", fmt.Sprintf(`{"key":"k%d","merge":{"v":"%s"}}`, i, big))
	}
	// A patch's outcome is its entry: the new journal's checkpoint holds 200 KB.
	h.ok("patch", fmt.Sprintf(`{"key":"k","merge":{"v":"%s%s"},"request_id":"r"}`, big, big))
	h.ok("flush", `{}`) // hurried; then a compaction starts, at 1 kB/s: minutes
	require.True(t, func() bool { h.a.own.Lock(); defer h.a.own.Unlock(); return h.a.compacting }(), "compacting")
	done := make(chan error, 1)
	go func() { done <- h.stop() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the stop waited for the throttle")
	}
	require.Contains(t, logs.String(), "journal compacted")
}

// Flushes with writes between them, faster than a snapshot is written: each snapshot
// that an earlier flush waits for is finished, not abandoned for the next flush, so
// flushes keep being answered.
func TestFlushesWithWritesBetweenAreAnswered(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.FS = persist.OS{} }).start() // paced: abortable
	big := strings.Repeat("x", 1_000_000)
	for i := range 10 { // 10 MB: tens of ms a snapshot
		h.ok("put", fmt.Sprintf(`{"key":"k%d","value":{"v":"%s"}}`, i, big))
	}
	var flushes []<-chan Reply
	for i := 0; i < 200; i++ {
		h.ok("put", fmt.Sprintf(`{"key":"s%d","value":{}}`, i))
		flushes = append(flushes, h.a.Submit("flush", []byte(`{}`)))
		time.Sleep(5 * time.Millisecond)
	}
	answered := 0
	for _, f := range flushes {
		select {
		case r := <-f:
			require.Nil(t, r.Err)
			answered++
		default:
		}
	}
	require.Positive(t, answered, "no flush answered while writes kept coming")
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader at a time.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFingerprintIgnoresParamOrder(t *testing.T) {
	h := newHarness(t, nil).start()
	first := h.ok("put", `{"key":"a","value":{"x":1,"y":2},"request_id":"r"}`)
	require.Equal(t, first, h.ok("put", `{"request_id":"r","value":{"x":1,"y":2},"key":"a"}`))
	h.fails("put", `{"key":"a","value":{"y":2,"x":1},"request_id":"r"}`, ReasonRequestIDReused)
}

func TestTxnTooLargeCarriesIndex(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxValueBytes = 64 }).start()
	e := h.fails("txn", `{"ops":[{"op":"put","key":"a","value":{}},{"op":"put","key":"b","value":{"x":"`+strings.Repeat("v", 80)+`"}}]}`, ReasonTooLarge)
	require.Equal(t, 1, e.Data["index"])
	require.Equal(t, 64, e.Data["limit"])
	require.Contains(t, e.Message, "ops[1]")
}

// A list cursor from before a restart resumes after its key; one whose key is gone
// meanwhile is refused rather than silently skipping or repeating keys.
func TestListCursorAcrossRestart(t *testing.T) {
	h := newHarness(t, nil).start()
	for _, k := range []string{"a", "b", "c", "d"} {
		h.ok("put", fmt.Sprintf(`{"key":%q,"value":{}}`, k))
	}
	next := h.ok("list", `{"limit":2}`)["next"].(string)
	page2 := h.ok("list", `{"limit":2,"cursor":"`+next+`"}`)
	h.restart()
	require.Equal(t, page2["items"], h.ok("list", `{"limit":2,"cursor":"`+next+`"}`)["items"],
		"resumes after the key the cursor names")
	h.ok("delete", `{"key":"b"}`)
	h.restart()
	h.fails("list", `{"cursor":"`+next+`"}`, ReasonInvalidParams)
}

// Writes that arrive while a compaction writes the new journal in the background are
// carried over into it: nothing is lost when it is put in place.
func TestCompactionCarriesWritesMadeMeanwhile(t *testing.T) {
	var logs lockedBuffer
	h := newHarness(t, func(c *Config) {
		c.CompactBytes = 2048
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	}).start()
	for i := range 50 {
		h.ok("patch", fmt.Sprintf(`{"key":"k%d","merge":{"n":%d}}`, i%5, i))
	}
	entered, release := h.holdOnce("create", func(path string) bool { return strings.HasSuffix(path, ".journal") })
	h.ok("flush", ``) // snapshot done: the compaction starts and blocks
	<-entered
	pad := strings.Repeat("p", 10_000) // 30 of them: more than catchUpSlack
	for i := range 30 {
		h.ok("put", fmt.Sprintf(`{"key":"during%d","value":{"i":%d,"pad":%q},"request_id":"d%d"}`, i, i, pad, i))
	}
	close(release)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "journal compacted") }, 5*time.Second, time.Millisecond)
	// Those writes were fsync'd before the new journal was written: its goroutine copied
	// them, and none was left for the commit on the actor goroutine.
	require.Contains(t, logs.String(), `"delta_at_commit":0,`)
	h.fs.setFail(nil)
	h.ok("put", `{"key":"after","value":{}}`)
	// Crash-like restart: the final snapshot fails, so everything must come from the
	// journal that the compaction put in place.
	h.stopWithoutSnapshot()
	h.start()
	for i := range 30 {
		require.Equal(t, map[string]any{"i": float64(i), "pad": pad}, h.ok("get", fmt.Sprintf(`{"key":"during%d"}`, i))["value"])
	}
	h.ok("get", `{"key":"after"}`)
	r := h.ok("put", fmt.Sprintf(`{"key":"during3","value":{"i":3,"pad":%q},"request_id":"d3"}`, pad))
	require.Equal(t, 54.0, r["rev"], "dedup records made during the compaction survive too")
}

// Held answers are released by whichever step replaces the broken journal; here the
// snapshot's intent does it before any retry timer fires.
func TestHeldAnswersReleasedByIntentRewrite(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RetryInterval = time.Hour }).start()
	h.fs.setFail(func(op, path string) error {
		if strings.Contains(path, ".journal") && (op == "sync" || op == "create" || op == "truncate") {
			return syscall.EIO
		}
		return nil
	})
	ch := h.a.Submit("put", []byte(`{"key":"a","value":{}}`))
	require.Eventually(t, func() bool { return h.a.Stats().Degraded != "" }, 5*time.Second, time.Millisecond)
	h.fs.setFail(nil)
	h.ok("flush", ``)
	r := <-ch
	require.Equal(t, ReasonStorage, r.Err.Reason)
	require.Empty(t, h.a.Stats().Degraded)
}

// A store file removed while sessiond was down is not silently replaced by an empty one.
func TestMissingStoreWithJournalRefused(t *testing.T) {
	h := newHarness(t, nil)
	require.NoError(t, os.WriteFile(h.cfg.Store, []byte(`{"old": {}}`), 0o600))
	h.start()
	h.ok("put", `{"key":"a","value":{}}`)
	require.NoError(t, h.stop())
	require.NoError(t, os.Remove(h.cfg.Store))
	_, err := Open(h.cfg)
	require.ErrorContains(t, err, "is missing, but its journal")
	_, err = os.Stat(h.cfg.Store)
	require.ErrorIs(t, err, os.ErrNotExist, "nothing written")
}

// Entries of a file another writer changed while sessiond was down get a new revision:
// a compare-and-set against the old one must not match the other writer's value.
func TestExternalChangeGetsNewRevisions(t *testing.T) {
	h := newHarness(t, nil).start()
	h.ok("put", `{"key":"a","value":{"v":1}}`)
	h.ok("flush", ``)
	require.NoError(t, h.stop())
	require.NoError(t, os.WriteFile(h.cfg.Store, []byte("{\n  \"a\": {\n    \"v\": 2\n  }\n}"), 0o600))
	h.start()
	got := h.ok("get", `{"key":"a"}`)
	require.Equal(t, map[string]any{"v": 2.0}, got["value"])
	require.Greater(t, got["rev"], 1.0)
	h.fails("put", `{"key":"a","value":{"v":3},"if_rev":1}`, ReasonConflict)
}

// A retried patch gets the value it originally produced, even after later writes to the
// key and across restarts (journal record, then checkpoint).
func TestPatchRetryReturnsOriginalValue(t *testing.T) {
	h := newHarness(t, nil).start()
	first := h.ok("patch", `{"key":"k","merge":{"v":1},"request_id":"p1"}`)
	h.ok("patch", `{"key":"k","merge":{"v":2}}`)
	require.Equal(t, first, h.ok("patch", `{"key":"k","merge":{"v":1},"request_id":"p1"}`))
	h.restart() // replayed from the write record
	require.Equal(t, first, h.ok("patch", `{"key":"k","merge":{"v":1},"request_id":"p1"}`))
	h.restart() // now from the checkpoint the last start wrote
	require.Equal(t, first, h.ok("patch", `{"key":"k","merge":{"v":1},"request_id":"p1"}`))
	require.Equal(t, map[string]any{"v": 2.0}, h.ok("get", `{"key":"k"}`)["value"])
}

// After ownFrags the store's entries no longer point into the buffer they were
// loaded from.
func TestOwnFragsLeavesFileBuffers(t *testing.T) {
	file := []byte("{\n  \"a\": {},\n  \"b\": {\n    \"x\": 1\n  }\n}") // as JSON.stringify writes it: entries alias it
	entries, err := persist.ParseStore(file, 0)
	require.NoError(t, err)
	st := newStore()
	for _, e := range entries {
		st.set(e.Key, e.Frag, 1)
	}
	st.commit()
	st.ownFrags()
	copy(file, bytes.Repeat([]byte{'X'}, len(file)))
	require.Equal(t, `  "a": {}`, string(st.get("a").frag))
	require.Equal(t, "  \"b\": {\n    \"x\": 1\n  }", string(st.get("b").frag))
}

// The dedup table with every request_id hashing alike: lookups walk the chain and
// compare ids, and undo and eviction keep the chain right.
func TestDedupTableCollisions(t *testing.T) {
	tb := newDedupTable()
	tb.hash = func(string) uint64 { return 7 }
	rec := func(id string, time int64) *persist.Dedup {
		return &persist.Dedup{ID: id, Time: time, Body: []byte(`{"body":"` + id + `"}`), Fingerprint: [16]byte{byte(time)}}
	}
	body := func(id string) string {
		d := tb.get(id)
		if d == nil {
			return "<none>"
		}
		return string(d.Body)
	}
	tb.add(rec("a", 1))
	tb.add(rec("b", 2))
	tb.add(rec("c", 3))
	require.Equal(t, `{"body":"a"}`, body("a"))
	require.Equal(t, `{"body":"c"}`, body("c"))
	require.Equal(t, "<none>", body("d"))
	tb.undoLast()
	require.Equal(t, "<none>", body("c"))
	require.Equal(t, `{"body":"b"}`, body("b"))
	tb.evict(12, 10, 100) // a (time 1) is older than 10 ms
	require.Equal(t, "<none>", body("a"))
	require.Equal(t, `{"body":"b"}`, body("b"))
	require.Equal(t, int64(2), tb.oldest())
	tb.add(rec("a", 20))
	require.Equal(t, [16]byte{20}, tb.get("a").Fingerprint, "the newest record of an id")
	tb.evict(20, 100, 1) // the count cap keeps only the newest
	require.Equal(t, "<none>", body("b"))
	require.Equal(t, `{"body":"a"}`, body("a"))
	require.Equal(t, []persist.Dedup{*rec("a", 20)}, tb.all())
	tb.undoLast()
	require.Equal(t, "<none>", body("a"))
	require.Zero(t, tb.len())
	require.Empty(t, tb.byHash)
	require.Zero(t, tb.bytes)
}

// The table counts the bytes a checkpoint copies: the request_ids, bodies and patch
// entries it holds, whether an entry's bytes are in memory or only in the journal.
func TestDedupTableBytes(t *testing.T) {
	tb := newDedupTable()
	frag := []byte(`  "k": {"v": 1}`)
	tb.add(&persist.Dedup{ID: "r1", Time: 1, Body: []byte(`{"rev":1}`), Frag: frag})
	tb.add(&persist.Dedup{ID: "r2", Time: 2, Body: []byte(`{"rev":2}`)})
	tb.add(&persist.Dedup{ID: "r3", Time: 3, Body: []byte(`{"rev":3}`), Ref: persist.FragRef{At: 100, Len: 40}})
	require.Equal(t, int64(3*(2+9)+len(frag)+40), tb.bytes)
	tb.place(0, persist.FragRef{At: 7, Len: int32(len(frag))}) // the entry is in the journal now
	require.Nil(t, tb.recs[0].frag)
	require.Equal(t, int64(3*(2+9)+len(frag)+40), tb.bytes)
	tb.undoLast()
	require.Equal(t, int64(2*(2+9)+len(frag)), tb.bytes)
	tb.evict(10, 5, 100)
	require.Zero(t, tb.bytes)
}

// Random puts, patches, deletes, txns and snapshots, then a journal rebuilt from memory
// and a crash: values, revisions and the order of the file come back as they were.
// (From a review: keeping only each key's last change lost the order.)
func TestRebuiltJournalReplaysRandomHistory(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 1))
			h := newHarness(t, nil).start()
			key := func() string { return fmt.Sprintf("k%d", r.IntN(6)) }
			for i := range 60 {
				switch r.IntN(10) {
				case 0, 1:
					h.ok("put", fmt.Sprintf(`{"key":%q,"value":{"i":%d}}`, key(), i))
				case 2, 3, 4:
					h.ok("patch", fmt.Sprintf(`{"key":%q,"merge":{"p%d":%d}}`, key(), r.IntN(3), i))
				case 5, 6:
					h.ok("delete", fmt.Sprintf(`{"key":%q}`, key()))
				case 7:
					h.ok("txn", fmt.Sprintf(`{"ops":[{"op":"delete","key":%q},{"op":"put","key":%q,"value":{"t":%d}},{"op":"patch","key":%q,"merge":{"t":%d}}]}`,
						key(), key(), i, key(), i))
				case 8:
					if r.IntN(3) == 0 {
						h.ok("flush", ``)
					}
				}
			}
			h.ok("patch", `{"key":"k0","merge":{"end":1}}`)
			want := h.ok("list", `{"values":true}`)
			failOneJournalAppend(h)
			h.stopWithoutSnapshot()
			h.start()
			require.Equal(t, want, h.ok("list", `{"values":true}`))
		})
	}
}

// holdOnce makes the first op on a path that matches block until release is closed;
// entered is closed when it is reached. The caller clears the hook (h.fs.setFail(nil)).
func (h *harness) holdOnce(op string, match func(path string) bool) (entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.fs.setFail(func(o, path string) error {
		if o == op && match(path) {
			once.Do(func() { close(entered); <-release })
		}
		return nil
	})
	return entered, release
}

// failOneJournalAppend makes one journal append fail (a refused put): the actor cuts the
// batch off and writes a new journal from memory.
func failOneJournalAppend(h *harness) {
	h.t.Helper()
	var failed atomic.Bool
	h.fs.setFail(func(op, path string) error {
		if op == "write" && strings.HasSuffix(path, ".journal") && failed.CompareAndSwap(false, true) {
			return syscall.EIO
		}
		return nil
	})
	h.fails("put", `{"key":"refused","value":{}}`, ReasonStorage)
	h.fs.setFail(nil)
}

// A compaction whose tail holds writes made while the snapshot was renamed, then a
// crash: the order of the file survives (from a review).
func TestCompactedJournalKeepsOrder(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes = 1 }).start()
	for i := range 20 {
		h.ok("put", fmt.Sprintf(`{"key":"pad%d","value":{"n":%d}}`, i, i))
	}
	entered, release := h.holdOnce("rename", func(path string) bool { return path == h.cfg.Store })
	flushed := h.a.Submit("flush", nil)
	<-entered
	h.ok("put", `{"key":"a","value":{}}`)
	h.ok("put", `{"key":"b","value":{}}`)
	h.ok("patch", `{"key":"a","merge":{"x":1}}`)
	close(release)
	require.Nil(t, (<-flushed).Err)
	h.fs.setFail(nil)
	require.Eventually(t, func() bool {
		r, err := persist.ReadJournal(persist.OS{}, h.cfg.Store+".journal")
		return err == nil && r.Checkpoint != nil && r.Checkpoint.Snapshot.Rev == 20
	}, 5*time.Second, time.Millisecond, "compacted after the snapshot of rev 20")
	want := h.ok("list", `{"values":true}`)
	h.stopWithoutSnapshot()
	h.start()
	require.Equal(t, want, h.ok("list", `{"values":true}`))
}

// bufferFS notes when the buffers sessions.json and the journal were read into are
// collected.
type bufferFS struct {
	*faultFS
	collected map[string]*atomic.Bool // by path
}

func (f bufferFS) ReadFile(name string) ([]byte, error) {
	b, err := f.faultFS.ReadFile(name)
	if flag := f.collected[name]; err == nil && len(b) > 0 && flag != nil {
		runtime.AddCleanup(&b[0], func(fl *atomic.Bool) { fl.Store(true) }, flag)
	}
	return b, err
}

// The collection at the end of a load frees both file buffers when no dedup record
// points into the journal: a key the journal deletes leaves a tombstone that must not
// keep the store's buffer, and the replayed records must not keep the journal's. The
// collector is off but for the one the load forces (from a review).
func TestLoadReleasesFileBuffers(t *testing.T) {
	h := newHarness(t, nil).start()
	big := strings.Repeat("x", 1<<20)
	for _, k := range []string{"a", "b", "c"} {
		h.ok("put", fmt.Sprintf(`{"key":%q,"value":{"s":%q}}`, k, big))
	}
	h.ok("flush", ``)
	h.ok("delete", `{"key":"b"}`)
	h.ok("patch", `{"key":"c","merge":{"n":1}}`)
	h.stopWithoutSnapshot()
	var store, journal atomic.Bool
	h.cfg.FS = bufferFS{h.fs, map[string]*atomic.Bool{h.cfg.Store: &store, h.cfg.Store + ".journal": &journal}}
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	h.open()
	require.Eventually(t, func() bool { return store.Load() && journal.Load() }, 5*time.Second, time.Millisecond,
		"the buffers sessions.json and the journal were read into are still reachable")
	h.run()
	h.fails("get", `{"key":"b"}`, ReasonNotFound)
	require.Equal(t, 1.0, h.ok("get", `{"key":"c"}`)["value"].(map[string]any)["n"])
}

// A journal rebuilt while a snapshot is being written: that snapshot's intent and done
// records come after the rebuilt tail. If another writer then replaces sessions.json with
// a file that lacks a key, the start replays what came after that snapshot, and the key
// must come back where its first write after the snapshot put it (from a review).
func TestRebuiltJournalDuringSnapshotKeepsOrder(t *testing.T) {
	run := func(t *testing.T, rebuild bool) any {
		h := newHarness(t, nil).start()
		h.ok("put", `{"key":"k","value":{"v":1}}`)   // rev 1
		h.ok("flush", ``)                            // base 1
		h.ok("patch", `{"key":"k","merge":{"v":2}}`) // rev 2
		entered, release := h.holdOnce("create", func(path string) bool { return path == h.cfg.Store })
		flushed := h.a.Submit("flush", nil) // the snapshot of rev 2, held before its intent
		<-entered
		h.fs.setFail(nil)
		h.ok("patch", `{"key":"k","merge":{"v":3}}`) // rev 3
		h.ok("put", `{"key":"m","value":{}}`)        // rev 4
		h.ok("patch", `{"key":"k","merge":{"v":5}}`) // rev 5
		if rebuild {
			failOneJournalAppend(h)
		}
		close(release)
		require.Nil(t, (<-flushed).Err)
		h.stopWithoutSnapshot()
		require.NoError(t, os.WriteFile(h.cfg.Store, []byte("{\n  \"z\": {}\n}"), 0o600)) // without k
		h.start()
		return h.ok("list", `{"values":true}`)["items"]
	}
	var want, got any
	t.Run("original journal", func(t *testing.T) { want = run(t, false) })
	t.Run("rebuilt journal", func(t *testing.T) { got = run(t, true) })
	require.Equal(t, want, got)
}

// patchOutcomes makes n patches with request_ids (every third one durable:false) and
// moves each key on with a patch without one, so that a retry can only be answered
// from the journal. It returns the requests and their answers.
func patchOutcomes(h *harness, prefix string, n int) (reqs []string, want []map[string]any) {
	h.t.Helper()
	for i := range n {
		req := fmt.Sprintf(`{"key":"k%d","merge":{"n":%d,"pad":%q},"request_id":"%s%d","durable":%v}`,
			i%4, i, strings.Repeat("x", 300), prefix, i, i%3 != 0)
		reqs, want = append(reqs, req), append(want, h.ok("patch", req))
		h.ok("patch", fmt.Sprintf(`{"key":"k%d","merge":{"later":%d}}`, i%4, i))
	}
	return reqs, want
}

func retriesAnswer(h *harness, reqs []string, want []map[string]any, when string) {
	h.t.Helper()
	for i, req := range reqs {
		require.Equal(h.t, want[i], h.ok("patch", req), "%s: %s", when, req)
	}
}

// A patch's outcome (the whole merged entry) is not kept in memory once its record is
// durable in the journal: a retry reads it back. Every way the journal is replaced
// (compaction with writes made meanwhile, a rewrite after a failure, a start that keeps
// or rebuilds it) moves the outcomes with it.
func TestPatchOutcomesLiveInTheJournal(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes = 4096 }).start()
	reqs, want := patchOutcomes(h, "a", 30)
	retriesAnswer(h, reqs, want, "from the journal")

	entered, release := h.holdOnce("create", func(path string) bool { return strings.HasSuffix(path, ".journal") })
	h.ok("flush", ``) // the snapshot is done: a compaction starts and blocks
	<-entered
	r2, w2 := patchOutcomes(h, "b", 20) // in the old journal, then in the new one's delta
	reqs, want = append(reqs, r2...), append(want, w2...)
	close(release)
	require.Eventually(t, func() bool { // the new journal is in place
		r, err := persist.ReadJournal(persist.OS{}, h.cfg.Store+".journal")
		return err == nil && r.Checkpoint != nil && len(r.Checkpoint.Dedup) > 0
	}, 5*time.Second, time.Millisecond)
	h.fs.setFail(nil)
	retriesAnswer(h, reqs, want, "after a compaction")

	failOneJournalAppend(h)
	retriesAnswer(h, reqs, want, "after a rewrite")
	h.restart()
	retriesAnswer(h, reqs, want, "after a start that kept the journal")
	h.ok("put", `{"key":"z","value":{}}`)
	h.stopWithoutSnapshot()
	require.NoError(t, os.WriteFile(h.cfg.Store, []byte(`{"other": {}}`), 0o600)) // another writer's file
	h.start()
	retriesAnswer(h, reqs, want, "after a start that rebuilt the journal")

	require.NoError(t, h.stop())
	held := 0
	for _, r := range h.a.dedup.recs {
		require.NotZero(t, r.ref.Len, "every outcome is a patch's")
		if r.frag != nil {
			held++
		}
	}
	require.Zero(t, held, "outcomes held in memory")
}

// A durable:false patch's outcome stays in memory until its frame is fsync'd: if the
// fsync fails, the new journal is written from memory, not from pages that may be lost.
// Here reading the old journal fails too, and the rewrite still works.
func TestUnsyncedOutcomeKeptForRewrite(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SyncInterval = time.Hour }).start()
	req := `{"key":"k","merge":{"v":1},"request_id":"r","durable":false}`
	first := h.ok("patch", req)
	h.ok("patch", `{"key":"k","merge":{"v":2},"durable":false}`)
	var failed atomic.Bool
	h.fs.setFail(func(op, path string) error {
		switch {
		case !strings.HasSuffix(path, ".journal"):
		case op == "read":
			return syscall.EIO
		case op == "sync" && failed.CompareAndSwap(false, true):
			return syscall.EIO
		}
		return nil
	})
	h.fails("put", `{"key":"x","value":{}}`, ReasonStorage) // its fsync fails; a rewrite replaces the journal
	require.True(t, failed.Load())
	require.Empty(t, h.a.Stats().Degraded)
	h.fs.setFail(nil)
	require.Equal(t, first, h.ok("patch", req))
}

// An outcome that cannot be read back is an error that says the request was executed:
// executed: false would tell the client that the patch never happened.
func TestUnreadableOutcome(t *testing.T) {
	h := newHarness(t, nil).start()
	req := `{"key":"k","merge":{"v":1},"request_id":"r"}`
	first := h.ok("patch", req)
	h.ok("patch", `{"key":"k","merge":{"v":2}}`)
	h.fs.setFail(func(op, path string) error {
		if op == "read" {
			return syscall.EIO
		}
		return nil
	})
	e := h.fails("patch", req, ReasonInternal)
	require.True(t, e.Executed)
	require.False(t, e.Retryable)
	require.Contains(t, e.Message, "was executed")
	h.fs.setFail(nil)
	require.Equal(t, first, h.ok("patch", req))
	require.Equal(t, 2.0, h.ok("get", `{"key":"k"}`)["value"].(map[string]any)["v"])
}

// A compaction whose new journal was renamed into place but could not be opened leaves
// the old journal retired, not closed: the journal written from memory next copies the
// outcomes from it.
func TestOutcomesSurviveReplacedJournal(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes = 4096 }).start()
	reqs, want := patchOutcomes(h, "a", 30)
	var failed atomic.Bool
	h.fs.setFail(func(op, path string) error {
		if op == "open" && strings.HasSuffix(path, ".journal") && failed.CompareAndSwap(false, true) {
			return syscall.EIO
		}
		return nil
	})
	h.ok("flush", ``) // the compaction starts after the snapshot
	require.Eventually(t, failed.Load, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return h.a.Stats().Degraded == "" }, 5*time.Second, time.Millisecond)
	h.fs.setFail(nil)
	retriesAnswer(h, reqs, want, "after the rewrite")
	h.restart()
	retriesAnswer(h, reqs, want, "after a restart")
}

// retiredFiles lists the temp names replaced files wait under (persist.ReleaseFile).
func retiredFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".sessions.json") {
			names = append(names, e.Name())
		}
	}
	return names
}

// A replaced sessions.json or journal is kept under a temp name for ReleaseDelay and
// then freed in the background; Close removes what is still waiting at once.
func TestReplacedFilesReleased(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes, c.ReleaseDelay = 1024, 50*time.Millisecond }).start()
	h.ok("put", `{"key":"a","value":{}}`)
	h.ok("flush", ``)
	for i := range 20 {
		h.ok("patch", fmt.Sprintf(`{"key":"a","merge":{"n":%d,"pad":%q}}`, i, strings.Repeat("x", 100)))
	}
	h.ok("flush", ``) // replaces sessions.json, then compacts the journal
	require.NotEmpty(t, retiredFiles(t, h.dir))
	require.Eventually(t, func() bool { return len(retiredFiles(t, h.dir)) == 0 }, 10*time.Second, 10*time.Millisecond)

	h.cfg.ReleaseDelay = time.Hour
	h.restart()
	h.ok("put", `{"key":"b","value":{}}`)
	h.ok("flush", ``)
	require.NotEmpty(t, retiredFiles(t, h.dir))
	h.cancel()
	h.cancel = nil
	require.NoError(t, <-h.done)
	closed := make(chan error, 1)
	go func() { closed <- h.a.Close() }()
	select { // the hour is not waited for
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("Close waits for the release delay")
	}
	require.Empty(t, retiredFiles(t, h.dir))
}

// A retry answered from an earlier batch's record, in a batch whose append fails, keeps
// its answer: the write it reports happened. storage_error (executed: false) would be a
// lie (from a review).
func TestFailedBatchKeepsEarlierOutcomes(t *testing.T) {
	h := newHarness(t, nil).start()
	first := h.ok("put", `{"key":"a","value":{"v":1},"request_id":"r1"}`)
	require.NoError(t, h.stop())
	h.open() // queued before the actor runs: one batch
	var failed atomic.Bool
	h.fs.setFail(func(op, path string) error {
		if op == "write" && strings.HasSuffix(path, ".journal") && failed.CompareAndSwap(false, true) {
			return syscall.EIO
		}
		return nil
	})
	put := h.a.Submit("put", []byte(`{"key":"b","value":{}}`))
	retry := h.a.Submit("put", []byte(`{"key":"a","value":{"v":1},"request_id":"r1"}`))
	h.run()
	require.Equal(t, ReasonStorage, (<-put).Err.Reason)
	r := <-retry
	require.Nil(t, r.Err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(r.Result, &got))
	require.Equal(t, first, got)
	h.fs.setFail(nil)
}

// The intent's fsync makes durable:false outcomes durable too: they drop their bytes
// then, not only at the next durable write (from a review).
func TestIntentFsyncDropsOutcomeBytes(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SyncInterval = time.Hour }).start()
	h.ok("patch", `{"key":"k","merge":{"v":1},"request_id":"r","durable":false}`)
	h.ok("flush", ``) // the snapshot's intent is fsync'd
	require.NoError(t, h.stop())
	require.Len(t, h.a.dedup.recs, 1)
	require.Nil(t, h.a.dedup.recs[0].frag)
}

// A compaction copies its delta from the old journal's file, so the durable:false
// frames in it are fsync'd there first (from a review).
func TestCompactionSyncsDeltaFirst(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes, c.SyncInterval = 2048, time.Hour }).start()
	for i := range 50 {
		h.ok("patch", fmt.Sprintf(`{"key":"k%d","merge":{"n":%d}}`, i%5, i))
	}
	entered, release := h.holdOnce("create", func(path string) bool { return strings.HasSuffix(path, ".journal") })
	h.ok("flush", ``)
	<-entered
	h.ok("put", `{"key":"late","value":{},"durable":false}`)
	before := h.fs.syncs.Load()
	close(release)
	require.Eventually(t, func() bool { return h.fs.syncs.Load() > before }, 5*time.Second, time.Millisecond)
	h.fs.setFail(nil)
	h.stopWithoutSnapshot()
	h.start()
	h.ok("get", `{"key":"late"}`)
}

// A request taken into a batch that is already running is checked against the clock
// when it is taken, not at the batch's start: one that came after its deadline is
// refused (from a review).
func TestBatchTakesLaterRequestsAtTheirTime(t *testing.T) {
	t0 := time.UnixMilli(1_800_000_000_000)
	var calls atomic.Int64
	h := newHarness(t, func(c *Config) {
		c.Now = func() time.Time {
			if calls.Add(1) == 1 {
				return t0 // the batch's start
			}
			return t0.Add(10 * time.Millisecond)
		}
	}).open()
	calls.Store(0)
	first := h.a.Submit("put", []byte(`{"key":"a","value":{}}`))
	late := h.a.Submit("put", fmt.Appendf(nil, `{"key":"b","value":{},"deadline_ms":%d}`, t0.UnixMilli()+5))
	h.run()
	require.Nil(t, (<-first).Err)
	r := <-late
	require.NotNil(t, r.Err)
	require.Equal(t, ReasonDeadline, r.Err.Reason)
}

// A compaction that cannot fit its checkpoint (the window's outcomes over 1 GiB) is not
// tried again after every snapshot, only once the journal has doubled.
func TestTooLargeCompactionBacksOff(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CompactBytes = 1024 }).open()
	for i := range 20 {
		ch := h.a.Submit("put", fmt.Appendf(nil, `{"key":"k%d","value":{"pad":%q}}`, i, strings.Repeat("x", 200)))
		h.a.runBatch(<-h.a.mailbox, true)
		require.Nil(t, (<-ch).Err)
	}
	size := h.a.journal.Size()
	require.Greater(t, size, 2*h.a.compactBase, "a compaction is due")
	h.a.compacting = true
	h.a.finishCompaction(compactResult{gen: h.a.compactGen, err: fmt.Errorf("write journal: %w", persist.ErrCheckpointTooLarge)})
	require.Equal(t, size, h.a.compactBase, "the next try waits for the journal to double")
	require.Empty(t, h.a.Stats().Degraded, "writes carry on")
	require.NoError(t, h.a.Close())
}

// The goroutines that write snapshots and new journals run on a thread of lower CPU
// priority, which ends with them.
func TestBackgroundLowersItsThreadOnly(t *testing.T) {
	nice := func() int {
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		require.NoError(t, err)
		return 20 - prio // the raw syscall's value
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := nice()
	type thread struct{ tid, nice int }
	got := make(chan thread, 1)
	var th thread
	for th.tid == 0 || th.tid == os.Getpid() { // background leaves the main thread alone
		go func() {
			background()
			tid := unix.Gettid()
			prio, _ := unix.Getpriority(unix.PRIO_PROCESS, tid)
			got <- thread{tid, 20 - prio}
		}()
		th = <-got
	}
	require.Equal(t, backgroundNice, th.nice)
	require.Equal(t, before, nice(), "the test's own thread is untouched")
	require.Eventually(t, func() bool { // and the thread went with its goroutine
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", th.tid))
		return errors.Is(err, os.ErrNotExist)
	}, 5*time.Second, time.Millisecond)
}

// SubmitOrRun mixed with Submit, flushes and durable:false writes, with 1 ms timers and
// fsyncs that fail now and then: each sender's writes keep their order, every request
// is answered, and what batches run by callers arm is seen by Run (the durable and
// snapshot revisions catch up, nothing stays degraded).
func TestSubmitOrRunWithFailingFsyncs(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.SnapshotInterval, c.SyncInterval, c.RetryInterval = time.Millisecond, time.Millisecond, time.Millisecond
	}).start()
	var failing atomic.Bool
	h.fs.setFail(func(op, path string) error {
		if failing.Load() && op == "sync" && rand.IntN(4) == 0 {
			return syscall.EIO
		}
		return nil
	})
	const senders = 4
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	wait := func(ch <-chan Reply) (Reply, error) {
		select {
		case r := <-ch:
			return r, nil
		case <-time.After(10 * time.Second):
			return Reply{}, fmt.Errorf("no answer")
		}
	}
	for c := range senders {
		wg.Go(func() {
			last := int64(0)
			for i := range 400 {
				if c == 0 {
					failing.Store(i%50 < 5)
				}
				var chs []<-chan Reply
				n := 1 + rand.IntN(3)
				for j := range n {
					params := fmt.Appendf(nil, `{"key":"c%d","merge":{"n":%d},"durable":%v}`, c, i*3+j, rand.IntN(2) == 0)
					if j == n-1 {
						chs = append(chs, h.a.SubmitOrRun("patch", params))
					} else {
						chs = append(chs, h.a.Submit("patch", params))
					}
				}
				var fl <-chan Reply
				if rand.IntN(20) == 0 {
					fl = h.a.SubmitOrRun("flush", nil)
				}
				for _, ch := range chs {
					r, err := wait(ch)
					if err != nil {
						errs <- fmt.Errorf("sender %d: %v", c, err)
						return
					}
					if r.Err != nil {
						continue
					}
					var res struct{ Rev int64 }
					_ = json.Unmarshal(r.Result, &res)
					if res.Rev != 0 && res.Rev <= last {
						errs <- fmt.Errorf("sender %d: rev %d after %d", c, res.Rev, last)
						return
					}
					if res.Rev != 0 {
						last = res.Rev
					}
				}
				if fl != nil {
					if _, err := wait(fl); err != nil {
						errs <- fmt.Errorf("sender %d flush: %v", c, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	failing.Store(false)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		s := h.a.Stats()
		return s.DurableRev == s.Rev && s.SnapshotRev == s.Rev && s.Degraded == ""
	}, 10*time.Second, time.Millisecond, "%+v", h.a.Stats())
}
