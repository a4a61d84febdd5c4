package ipc

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clientTestWait bounds every wait of these tests, so a bug fails instead of hanging.
const clientTestWait = 5 * time.Second

// clientFake is a JSON-RPC server on a real Unix socket. It answers nothing by itself:
// the test takes each request from reqs and replies by hand, which lets it reorder,
// refuse, drop connections and send goaway at exact points.
type clientFake struct {
	path string
	ln   net.Listener
	reqs chan *clientFakeReq // every request read, from any connection, in read order
	quit chan struct{}       // closed at cleanup: unblocks readers
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns []*clientFakeConn
}

type clientFakeConn struct {
	nc     net.Conn
	mu     sync.Mutex    // one line at a time
	closed chan struct{} // closed when the reader hits EOF: the client closed its side
}

type clientFakeReq struct {
	conn   *clientFakeConn
	ID     json.RawMessage
	Method string
	Params json.RawMessage // nil when the request had none
}

// clientTempSocket returns a socket path in a short temp dir (sun_path is 108 bytes).
func clientTempSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "s.sock")
}

// newClientFake listens on a fresh socket.
func newClientFake(t *testing.T) *clientFake {
	return newClientFakeAt(t, clientTempSocket(t))
}

// newClientFakeAt listens on path.
func newClientFakeAt(t *testing.T, path string) *clientFake {
	t.Helper()
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	f := &clientFake{path: path, ln: ln, reqs: make(chan *clientFakeReq, 100), quit: make(chan struct{})}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		close(f.quit)
		_ = ln.Close()
		f.mu.Lock()
		for _, fc := range f.conns {
			_ = fc.nc.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *clientFake) accept() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		fc := &clientFakeConn{nc: nc, closed: make(chan struct{})}
		f.mu.Lock()
		f.conns = append(f.conns, fc)
		f.mu.Unlock()
		f.wg.Add(1)
		go f.read(fc)
	}
}

func (f *clientFake) read(fc *clientFakeConn) {
	defer f.wg.Done()
	defer close(fc.closed)
	sc := bufio.NewScanner(fc.nc)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var req clientFakeReq
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			req.Method = "UNDECODABLE: " + sc.Text()
		}
		req.conn = fc
		select {
		case f.reqs <- &req:
		case <-f.quit:
			return
		}
	}
}

// next returns the next request the fake read.
func (f *clientFake) next(t *testing.T) *clientFakeReq {
	t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-time.After(clientTestWait):
		t.Fatal("no request arrived")
		return nil
	}
}

// send writes one raw line to the client.
func (fc *clientFakeConn) send(t *testing.T, line string) {
	t.Helper()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	_, err := fc.nc.Write([]byte(line + "\n"))
	require.NoError(t, err)
}

func (fc *clientFakeConn) goaway(t *testing.T) {
	fc.send(t, `{"jsonrpc":"2.0","method":"goaway","params":{"reason":"restart"}}`)
}

// waitClosed waits until the client closed this connection.
func (fc *clientFakeConn) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-fc.closed:
	case <-time.After(clientTestWait):
		t.Fatal("client did not close the connection")
	}
}

func (r *clientFakeReq) reply(t *testing.T, result string) {
	r.conn.send(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":%s}`, r.ID, result))
}

// fail answers with an error; data holds extra error.data fields, e.g. `"current_rev":3`.
func (r *clientFakeReq) fail(t *testing.T, code int, reason string, retryable bool, data string) {
	if data != "" {
		data = "," + data
	}
	r.conn.send(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"error":{"code":%d,"message":"%s happened",`+
		`"data":{"reason":%q,"retryable":%t,"executed":false%s}}}`, r.ID, code, reason, reason, retryable, data))
}

// param decodes one param into v.
func (r *clientFakeReq) param(t *testing.T, name string, v any) {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(r.Params, &m))
	raw, ok := m[name]
	require.True(t, ok, "param %s missing in %s", name, r.Params)
	require.NoError(t, json.Unmarshal(raw, v))
}

func (r *clientFakeReq) requestID(t *testing.T) string {
	t.Helper()
	var id string
	r.param(t, "request_id", &id)
	return id
}

// clientOutcome is what a call made on another goroutine returned.
type clientOutcome[T any] struct {
	v   T
	err error
}

// clientGo runs fn on its own goroutine; the result arrives on the channel.
func clientGo[T any](fn func() (T, error)) <-chan clientOutcome[T] {
	ch := make(chan clientOutcome[T], 1)
	go func() {
		v, err := fn()
		ch <- clientOutcome[T]{v, err}
	}()
	return ch
}

func clientAwait[T any](t *testing.T, ch <-chan clientOutcome[T]) (T, error) {
	t.Helper()
	select {
	case o := <-ch:
		return o.v, o.err
	case <-time.After(clientTestWait):
		t.Fatal("call did not return")
		var zero T
		return zero, nil
	}
}

// clientLogs is a slog.Handler that forwards each record's message and "err" attribute,
// so a test can wait for the client to have failed an attempt.
type clientLogs chan string

func (l clientLogs) Enabled(context.Context, slog.Level) bool { return true }
func (l clientLogs) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l clientLogs) WithGroup(string) slog.Handler            { return l }
func (l clientLogs) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			msg += ": " + a.Value.String()
		}
		return true
	})
	select {
	case l <- msg:
	default: // nobody is listening any more
	}
	return nil
}

func (l clientLogs) waitFor(t *testing.T, substr string) {
	t.Helper()
	deadline := time.After(clientTestWait)
	for {
		select {
		case msg := <-l:
			if strings.Contains(msg, substr) {
				return
			}
		case <-deadline:
			t.Fatalf("no log containing %q", substr)
		}
	}
}

func newTestClient(t *testing.T, path string, opts ...ClientOption) *Client {
	c := NewClient(path, opts...)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestClientMethodsOnTheWire(t *testing.T) {
	deadline := time.UnixMilli(1700000000123)
	type call func(ctx context.Context, c *Client) (any, error)
	tests := []struct {
		name       string
		call       call
		method     string
		params     string // JSON; without request_id unless the caller set one; "" for no params
		wantInWire string // a substring the raw params must contain (field order of values)
		result     string
		want       any
	}{{
		name:   "get",
		call:   func(ctx context.Context, c *Client) (any, error) { return c.Get(ctx, "a") },
		method: "get", params: `{"key":"a"}`,
		result: `{"key":"a","rev":3,"value":{"z":1,"a":2}}`,
		want:   Entry{Key: "a", Rev: 3, Value: json.RawMessage(`{"z":1,"a":2}`)},
	}, {
		name: "put raw value with every option",
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.Put(ctx, "a", json.RawMessage("{\"z\": 1,\n \"a\": [2]}"), IfRev(0), Durable(false), Deadline(deadline))
		},
		method: "put", params: `{"key":"a","value":{"z":1,"a":[2]},"if_rev":0,"durable":false,"deadline_ms":1700000000123}`,
		wantInWire: `{"z":1,"a":[2]}`,
		result:     `{"key":"a","rev":7}`, want: int64(7),
	}, {
		name: "put bytes value, caller's request_id",
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.Put(ctx, "k", []byte(`{"b":true}`), RequestID("r-1"), IfRev(5))
		},
		method: "put", params: `{"key":"k","value":{"b":true},"request_id":"r-1","if_rev":5}`,
		result: `{"key":"k","rev":8}`, want: int64(8),
	}, {
		name: "put marshalled value",
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.Put(ctx, "k", struct {
				N int    `json:"n"`
				S string `json:"s"`
			}{1, "x"})
		},
		method: "put", params: `{"key":"k","value":{"n":1,"s":"x"}}`,
		result: `{"key":"k","rev":9}`, want: int64(9),
	}, {
		name: "patch",
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.Patch(ctx, "k", map[string]any{"gone": nil, "n": 2}, Durable(true))
		},
		method: "patch", params: `{"key":"k","merge":{"gone":null,"n":2},"durable":true}`,
		result: `{"key":"k","rev":10,"value":{"n":2}}`,
		want:   Entry{Key: "k", Rev: 10, Value: json.RawMessage(`{"n":2}`)},
	}, {
		name:   "delete",
		call:   func(ctx context.Context, c *Client) (any, error) { return c.Delete(ctx, "k", IfRev(10)) },
		method: "delete", params: `{"key":"k","if_rev":10}`,
		result: `{"key":"k","rev":11,"deleted":true}`,
		want:   DeleteResult{Key: "k", Rev: 11, Deleted: true},
	}, {
		name: "list with every option, last page",
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.List(ctx, ListOptions{Prefix: "p/", Limit: 2, Cursor: "c1", Values: true})
		},
		method: "list", params: `{"prefix":"p/","limit":2,"cursor":"c1","values":true}`,
		result: `{"items":[{"key":"p/a","rev":1,"value":{}},{"key":"p/b","rev":4,"value":{"x":1}}],"next":null,"rev":12}`,
		want: ListResult{Items: []Entry{
			{Key: "p/a", Rev: 1, Value: json.RawMessage(`{}`)},
			{Key: "p/b", Rev: 4, Value: json.RawMessage(`{"x":1}`)},
		}, Rev: 12},
	}, {
		name:   "list defaults, more pages",
		call:   func(ctx context.Context, c *Client) (any, error) { return c.List(ctx, ListOptions{}) },
		method: "list", params: `{}`,
		result: `{"items":[{"key":"a","rev":1}],"next":"cur2","rev":12}`,
		want:   ListResult{Items: []Entry{{Key: "a", Rev: 1}}, Next: "cur2", Rev: 12},
	}, {
		name: "txn",
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.Txn(ctx, []TxnOp{
				{Op: "put", Key: "a", Value: json.RawMessage(`{"v":1}`), IfRev: new(int64(0))},
				{Op: "patch", Key: "b", Merge: map[string]int{"w": 2}},
				{Op: "delete", Key: "c"},
				{Op: "check", Key: "d", IfRev: new(int64(4))},
			}, Durable(false))
		},
		method: "txn",
		params: `{"ops":[{"op":"put","key":"a","value":{"v":1},"if_rev":0},{"op":"patch","key":"b","merge":{"w":2}},` +
			`{"op":"delete","key":"c"},{"op":"check","key":"d","if_rev":4}],"durable":false}`,
		result: `{"rev":13,"results":[{"key":"a","rev":13},{"key":"b","rev":13},{"key":"c","rev":13,"deleted":true},{"key":"d","rev":4}]}`,
		want: TxnResult{Rev: 13, Results: []TxnOpResult{
			{Key: "a", Rev: 13}, {Key: "b", Rev: 13}, {Key: "c", Rev: 13, Deleted: true}, {Key: "d", Rev: 4},
		}},
	}, {
		name:   "flush",
		call:   func(ctx context.Context, c *Client) (any, error) { return c.Flush(ctx) },
		method: "flush",
		result: `{"rev":13,"snapshot_rev":13}`, want: FlushResult{Rev: 13, SnapshotRev: 13},
	}, {
		name:   "status",
		call:   func(ctx context.Context, c *Client) (any, error) { return c.Status(ctx) },
		method: "status",
		result: `{"protocol":1,"version":"v1.2","pid":42,"generation":3,"phase":"serving","rev":13,"durable_rev":12,` +
			`"snapshot_rev":11,"entries":5,"bytes":900,"connections":2,"queue":1,"dedup_window_ms":300000,` +
			`"uptime_ms":5000,"store":"/s/sessions.json","socket":"/s/sessions.json.sock","degraded":"disk full",` +
			`"external_changes":1,"future_field":true}`,
		want: Status{Protocol: 1, Version: "v1.2", PID: 42, Generation: 3, Phase: "serving", Rev: 13, DurableRev: 12,
			SnapshotRev: 11, Entries: 5, Bytes: 900, Connections: 2, Queue: 1, DedupWindowMS: 300000, UptimeMS: 5000,
			Store: "/s/sessions.json", Socket: "/s/sessions.json.sock", Degraded: "disk full", ExternalChanges: 1},
	}, {
		name: "call unknown method",
		call: func(ctx context.Context, c *Client) (any, error) {
			var res json.RawMessage
			err := c.Call(ctx, "echo", map[string]int{"a": 1}, &res)
			return res, err
		},
		method: "echo", params: `{"a":1}`,
		result: `{"b": 2}`, want: json.RawMessage(`{"b": 2}`),
	}, {
		name: "call write gets a request_id",
		call: func(ctx context.Context, c *Client) (any, error) {
			return nil, c.Call(ctx, "delete", json.RawMessage(`{"key":"x"}`), nil)
		},
		method: "delete", params: `{"key":"x"}`,
		result: `{"key":"x","rev":1,"deleted":false}`, want: nil,
	}}
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := clientGo(func() (any, error) { return tt.call(t.Context(), c) })
			req := f.next(t)
			require.Equal(t, tt.method, req.Method)
			if tt.params == "" {
				require.Nil(t, req.Params)
			} else {
				params := map[string]any{}
				require.NoError(t, json.Unmarshal(req.Params, &params))
				if clientWriteMethods[tt.method] && !strings.Contains(tt.params, `"request_id"`) {
					id, ok := params["request_id"].(string)
					require.True(t, ok, "no automatic request_id in %s", req.Params)
					b, err := hex.DecodeString(id)
					require.NoError(t, err)
					require.Len(t, b, 16)
					delete(params, "request_id")
				}
				got, err := json.Marshal(params)
				require.NoError(t, err)
				require.JSONEq(t, tt.params, string(got))
			}
			require.Contains(t, string(req.Params), tt.wantInWire)
			req.reply(t, tt.result)
			got, err := clientAwait(t, out)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestClientRefusesBadInputWithoutSending(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	ctx := t.Context()
	_, err := c.Put(ctx, "k", json.RawMessage(`{"a":`))
	require.ErrorContains(t, err, "invalid JSON")
	_, err = c.Patch(ctx, "k", []byte(`nope`))
	require.ErrorContains(t, err, "invalid JSON")
	_, err = c.Txn(ctx, []TxnOp{{Op: "delete", Key: "k"}}, IfRev(3))
	require.ErrorContains(t, err, "TxnOp.IfRev")
	_, err = c.Txn(ctx, []TxnOp{{Op: "put", Key: "k", Value: json.RawMessage(`[`)}})
	require.ErrorContains(t, err, "txn op 0")

	// The first request the fake sees is the next valid one.
	out := clientGo(func() (Status, error) { return c.Status(ctx) })
	req := f.next(t)
	require.Equal(t, "status", req.Method)
	req.reply(t, `{"protocol":1}`)
	_, err = clientAwait(t, out)
	require.NoError(t, err)
}

func TestClientErrorResponse(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (int64, error) { return c.Put(t.Context(), "k", json.RawMessage(`{}`), IfRev(2)) })
	f.next(t).fail(t, -32002, "conflict", false, `"current_rev":3`)
	_, err := clientAwait(t, out)
	require.Error(t, err)
	require.Equal(t, "conflict", ReasonOf(err))
	require.Contains(t, err.Error(), "conflict: conflict happened")
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, -32002, e.Code)
	require.False(t, e.Retryable)
	require.False(t, e.Executed)
	require.JSONEq(t, "3", string(e.Data["current_rev"]))
	require.Empty(t, ReasonOf(errors.New("plain")))

	// Not retried: the next request the fake reads is a new one.
	out2 := clientGo(func() (Status, error) { return c.Status(t.Context()) })
	req := f.next(t)
	require.Equal(t, "status", req.Method)
	req.reply(t, `{}`)
	_, err = clientAwait(t, out2)
	require.NoError(t, err)
}

// An id-null error (here too_large) answers the oldest request in flight, because the
// server answers in read order.
func TestClientIDNullErrorGoesToOldestRequest(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	first := clientGo(func() (int64, error) { return c.Put(t.Context(), "big", json.RawMessage(`{}`)) })
	req1 := f.next(t)
	second := clientGo(func() (Entry, error) { return c.Get(t.Context(), "k") })
	req2 := f.next(t)
	req1.conn.send(t, `{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"line too long",`+
		`"data":{"reason":"too_large","retryable":false,"executed":false,"limit":16}}}`)
	_, err := clientAwait(t, first)
	require.Equal(t, "too_large", ReasonOf(err))
	req2.reply(t, `{"key":"k","rev":1,"value":{}}`)
	e, err := clientAwait(t, second)
	require.NoError(t, err)
	require.Equal(t, "k", e.Key)
}

func TestClientPipelinesAndMatchesOutOfOrderResponses(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	const n = 8
	outs := make([]<-chan clientOutcome[Entry], n)
	for i := range n {
		outs[i] = clientGo(func() (Entry, error) { return c.Get(t.Context(), fmt.Sprint("k", i)) })
	}
	reqs := make([]*clientFakeReq, n)
	for i := range n {
		reqs[i] = f.next(t)
		require.Same(t, reqs[0].conn, reqs[i].conn, "all requests share one connection")
	}
	for i := n - 1; i >= 0; i-- {
		var key string
		reqs[i].param(t, "key", &key)
		reqs[i].reply(t, fmt.Sprintf(`{"key":%q,"rev":%d,"value":{}}`, key, 100+i))
	}
	for i := range n {
		e, err := clientAwait(t, outs[i])
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint("k", i), e.Key)
	}
}

func TestClientRetriesBusyWithSameRequestID(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (int64, error) { return c.Put(t.Context(), "k", json.RawMessage(`{}`)) })
	req1 := f.next(t)
	refused := time.Now()
	req1.fail(t, -32003, "busy", true, `"retry_after_ms":40`)
	req2 := f.next(t)
	require.GreaterOrEqual(t, time.Since(refused), 40*time.Millisecond, "retry_after_ms honoured")
	require.Equal(t, req1.requestID(t), req2.requestID(t))
	require.NotEqual(t, string(req1.ID), string(req2.ID), "a new JSON-RPC id per attempt")
	req2.reply(t, `{"key":"k","rev":5}`)
	rev, err := clientAwait(t, out)
	require.NoError(t, err)
	require.Equal(t, int64(5), rev)
}

func TestClientRetriesAfterConnectionLostWithSameRequestID(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (Entry, error) { return c.Patch(t.Context(), "k", json.RawMessage(`{"a":1}`)) })
	req1 := f.next(t)
	_ = req1.conn.nc.Close() // the outcome is now unknown to the client
	req2 := f.next(t)
	require.NotSame(t, req1.conn, req2.conn, "retried on a new connection")
	require.Equal(t, req1.requestID(t), req2.requestID(t))
	require.JSONEq(t, string(req1.Params), string(req2.Params))
	req2.reply(t, `{"key":"k","rev":2,"value":{"a":1}}`)
	e, err := clientAwait(t, out)
	require.NoError(t, err)
	require.Equal(t, int64(2), e.Rev)
}

// NoRequestID: the write goes out without one, is still retried when the server says it
// was not executed (busy), but not after a lost connection, whose outcome is unknown.
func TestClientNoRequestID(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (Entry, error) {
		return c.Patch(t.Context(), "k", json.RawMessage(`{"a":1}`), NoRequestID())
	})
	req1 := f.next(t)
	require.NotContains(t, string(req1.Params), "request_id")
	req1.fail(t, -32003, "busy", true, `"retry_after_ms":1`)
	req2 := f.next(t)
	require.JSONEq(t, string(req1.Params), string(req2.Params))
	_ = req2.conn.nc.Close()
	_, err := clientAwait(t, out)
	require.ErrorIs(t, err, ErrConnectionLost)

	out = clientGo(func() (Entry, error) {
		return c.Patch(t.Context(), "k", json.RawMessage(`{"a":1}`), NoRequestID(), RequestID("mine"))
	})
	req3 := f.next(t)
	require.Equal(t, "mine", req3.requestID(t), "an explicit request_id wins")
	req3.reply(t, `{"key":"k","rev":2,"value":{"a":1}}`)
	_, err = clientAwait(t, out)
	require.NoError(t, err)
}

// A method the client cannot prove idempotent is not resent after a lost connection.
func TestClientCallUnknownMethodNotResentAfterConnectionLost(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (struct{}, error) { return struct{}{}, c.Call(t.Context(), "launch", nil, nil) })
	_ = f.next(t).conn.nc.Close()
	_, err := clientAwait(t, out)
	require.ErrorIs(t, err, ErrConnectionLost)
}

func TestClientGoawayRetriesShuttingDownOnNewConnection(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (int64, error) { return c.Put(t.Context(), "k", json.RawMessage(`{}`)) })
	req1 := f.next(t)
	req1.conn.goaway(t)
	req1.fail(t, -32004, "shutting_down", true, "")
	req2 := f.next(t)
	require.NotSame(t, req1.conn, req2.conn)
	require.Equal(t, req1.requestID(t), req2.requestID(t))
	req1.conn.waitClosed(t) // nothing was outstanding on it any more
	req2.reply(t, `{"key":"k","rev":3}`)
	rev, err := clientAwait(t, out)
	require.NoError(t, err)
	require.Equal(t, int64(3), rev)
}

func TestClientGoawayAwaitsOutstandingThenMovesOn(t *testing.T) {
	f := newClientFake(t)
	logs := make(clientLogs, 1000)
	c := newTestClient(t, f.path, WithLogger(slog.New(logs)))
	old := clientGo(func() (Entry, error) { return c.Get(t.Context(), "old") })
	req1 := f.next(t)
	req1.conn.goaway(t)
	logs.waitFor(t, "goaway")

	fresh := clientGo(func() (Entry, error) { return c.Get(t.Context(), "new") })
	req2 := f.next(t)
	require.NotSame(t, req1.conn, req2.conn, "nothing more is sent on a draining connection")
	select {
	case <-req1.conn.closed:
		t.Fatal("draining connection closed with a response outstanding")
	default:
	}
	req1.reply(t, `{"key":"old","rev":1,"value":{}}`)
	e, err := clientAwait(t, old)
	require.NoError(t, err)
	require.Equal(t, "old", e.Key)
	req1.conn.waitClosed(t)

	req2.reply(t, `{"key":"new","rev":2,"value":{}}`)
	e, err = clientAwait(t, fresh)
	require.NoError(t, err)
	require.Equal(t, "new", e.Key)
}

func TestClientRetriesUntilSocketAppears(t *testing.T) {
	path := clientTempSocket(t)
	logs := make(clientLogs, 1000)
	c := newTestClient(t, path, WithLogger(slog.New(logs)))
	out := clientGo(func() (Status, error) { return c.Status(t.Context()) })
	logs.waitFor(t, "no such file or directory")

	f := newClientFakeAt(t, path)
	req := f.next(t)
	require.Equal(t, "status", req.Method)
	req.reply(t, `{"protocol":1,"phase":"serving"}`)
	st, err := clientAwait(t, out)
	require.NoError(t, err)
	require.Equal(t, "serving", st.Phase)
}

func TestClientNotSentRetriesBoundedByDeadline(t *testing.T) {
	path := clientTempSocket(t)
	c := newTestClient(t, path, WithRetryFor(time.Hour))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "k")
	require.Less(t, time.Since(start), clientTestWait, "bounded, not hung")
	require.ErrorIs(t, err, syscall.ENOENT, "the last failure is reported")
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// Without a ctx deadline, WithRetryFor is the bound.
	c2 := newTestClient(t, path, WithRetryFor(50*time.Millisecond))
	start = time.Now()
	_, err = c2.Put(context.Background(), "k", json.RawMessage(`{}`))
	require.Less(t, time.Since(start), clientTestWait, "bounded, not hung")
	require.ErrorIs(t, err, syscall.ENOENT)
	require.ErrorContains(t, err, "gave up retrying")

	// And WithMaxAttempts.
	c3 := newTestClient(t, path, WithMaxAttempts(1))
	_, err = c3.Flush(context.Background())
	require.ErrorIs(t, err, syscall.ENOENT)
}

func TestClientMaxAttempts(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path, WithMaxAttempts(2))
	out := clientGo(func() (Entry, error) { return c.Get(t.Context(), "k") })
	f.next(t).fail(t, -32006, "storage_error", true, "")
	f.next(t).fail(t, -32006, "storage_error", true, "")
	_, err := clientAwait(t, out)
	require.Equal(t, "storage_error", ReasonOf(err))
}

func TestClientDeadlineExceededNotRetried(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	out := clientGo(func() (int64, error) {
		return c.Put(t.Context(), "k", json.RawMessage(`{}`), Deadline(time.Now().Add(time.Millisecond)))
	})
	f.next(t).fail(t, -32007, "deadline_exceeded", true, "")
	_, err := clientAwait(t, out)
	require.Equal(t, "deadline_exceeded", ReasonOf(err))

	out2 := clientGo(func() (Status, error) { return c.Status(t.Context()) })
	req := f.next(t)
	require.Equal(t, "status", req.Method, "no retry was sent")
	req.reply(t, `{}`)
	_, err = clientAwait(t, out2)
	require.NoError(t, err)
}

func TestClientCancelReturnsPromptly(t *testing.T) {
	f := newClientFake(t)
	c := newTestClient(t, f.path)
	ctx, cancel := context.WithCancel(t.Context())
	out := clientGo(func() (Entry, error) { return c.Get(ctx, "slow") })
	req1 := f.next(t)
	cancel()
	_, err := clientAwait(t, out)
	require.ErrorIs(t, err, context.Canceled)

	// The late answer is dropped and the connection stays in use.
	req1.reply(t, `{"key":"slow","rev":1,"value":{}}`)
	out2 := clientGo(func() (Entry, error) { return c.Get(t.Context(), "k") })
	req2 := f.next(t)
	require.Same(t, req1.conn, req2.conn)
	req2.reply(t, `{"key":"k","rev":1,"value":{}}`)
	e, err := clientAwait(t, out2)
	require.NoError(t, err)
	require.Equal(t, "k", e.Key)
}

func TestClientCloseStopsEverything(t *testing.T) {
	f := newClientFake(t)
	c := NewClient(f.path)
	out := clientGo(func() (Entry, error) { return c.Get(context.Background(), "k") })
	req := f.next(t)
	require.NoError(t, c.Close())
	_, err := clientAwait(t, out)
	require.ErrorIs(t, err, ErrClientClosed)
	req.conn.waitClosed(t)
	require.NoError(t, c.Close(), "idempotent")
	_, err = c.Status(context.Background())
	require.ErrorIs(t, err, ErrClientClosed)
}

func TestClientBackoffBounds(t *testing.T) {
	for attempt, want := range map[int]time.Duration{1: 5, 2: 10, 3: 20, 7: 320, 8: 500, 50: 500} {
		want *= time.Millisecond
		for range 20 {
			d := clientBackoff(attempt)
			require.GreaterOrEqual(t, d, want/2, "attempt %d", attempt)
			require.LessOrEqual(t, d, want, "attempt %d", attempt)
		}
	}
}

// A server that stops reading blocks the write of a large request; ctx still wins.
func TestClientCancelInterruptsBlockedWrite(t *testing.T) {
	path := clientTempSocket(t)
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err == nil {
			accepted <- nc // never read from
		}
		close(accepted)
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		for nc := range accepted {
			_ = nc.Close()
		}
	})
	c := newTestClient(t, path)
	big := json.RawMessage(`{"s":"` + strings.Repeat("x", 2<<20) + `"}`)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Put(ctx, "k", big)
	require.Less(t, time.Since(start), clientTestWait, "bounded, not hung")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// The entry fast path decodes what encoding/json decodes, and leaves what it does not
// expect to encoding/json.
func TestEntrySplitMatchesEncodingJSON(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		fast bool
	}{
		{`{"key":"agent:main:main","rev":7,"value":{"a":[1,{"b":null}]}}`, true},
		{` { "rev" : 12 , "key" : "k" } `, true},
		{`{"key":"k","rev":3,"value":null,"extra":true}`, true},
		{`{"key":"\u006b\"","rev":1,"value":{}}`, false}, // an escaped key
		{`{"key":"k","rev":1.5}`, false},
		{`{"key":"k","rev":"1"}`, false},
		{`[1]`, false},
	} {
		var got Entry
		require.Equal(t, tc.fast, got.split([]byte(tc.raw)), tc.raw)
		if tc.fast {
			var want Entry
			require.NoError(t, json.Unmarshal([]byte(tc.raw), &want))
			require.Equal(t, want, got, tc.raw)
		}
	}
}

// The hand-written params say what encoding/json said for the same fields.
func TestClientWriteParamsMatchEncodingJSON(t *testing.T) {
	rev, yes := int64(0), false
	for _, tc := range []struct {
		key   string
		field string
		raw   string
		o     clientWriteOpts
	}{
		{"agent:main:main", "merge", `{"a":1}`, clientWriteOpts{RequestID: "r1"}},
		{"k \"quoted\" <&> \u2028 ключ \xff", "value", `{"b":[null]}`, clientWriteOpts{IfRev: &rev, Durable: &yes, DeadlineMS: 1764220000000}},
		{"gone", "", "", clientWriteOpts{RequestID: "\\ \n"}},
	} {
		got := clientWriteParams(tc.key, tc.field, json.RawMessage(tc.raw), tc.o)
		m := map[string]any{"key": tc.key}
		if tc.field != "" {
			m[tc.field] = json.RawMessage(tc.raw)
		}
		opts, err := json.Marshal(tc.o)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(opts, &m))
		want, err := json.Marshal(m)
		require.NoError(t, err)
		require.JSONEq(t, string(want), string(got))
	}
}
