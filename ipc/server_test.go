package ipc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"sessiond/actor"
)

const testWait = 5 * time.Second

// fakeBackend is a Backend made of functions.
type fakeBackend struct {
	submit func(method string, params []byte) <-chan actor.Reply
	stats  func() actor.Stats
	ran    atomic.Int64 // requests that came through SubmitOrRun
}

func (f *fakeBackend) Submit(method string, params []byte) <-chan actor.Reply {
	return f.submit(method, params)
}

func (f *fakeBackend) SubmitOrRun(method string, params []byte) <-chan actor.Reply {
	f.ran.Add(1)
	return f.submit(method, params)
}

func (f *fakeBackend) Stats() actor.Stats {
	if f.stats == nil {
		return actor.Stats{}
	}
	return f.stats()
}

func replyNow(r actor.Reply) <-chan actor.Reply {
	ch := make(chan actor.Reply, 1)
	ch <- r
	return ch
}

// echoResult is what echoBackend answers: the method and params it was given.
func echoResult(method string, params []byte) []byte {
	if params == nil {
		params = []byte("null")
	}
	return fmt.Appendf(nil, `{"method":%q,"params":%s}`, method, params)
}

// echoBackend answers every request at once with echoResult and counts the submissions.
func echoBackend(submitted *atomic.Int64) *fakeBackend {
	return &fakeBackend{submit: func(method string, params []byte) <-chan actor.Reply {
		if submitted != nil {
			submitted.Add(1)
		}
		return replyNow(actor.Reply{Result: echoResult(method, params)})
	}}
}

// call is one request held by holdBackend until the test answers it.
type call struct {
	method string
	params []byte
	reply  chan actor.Reply
}

// holdBackend hands every request to the test on calls and answers nothing by itself.
func holdBackend() (*fakeBackend, chan call) {
	calls := make(chan call, 10000)
	return &fakeBackend{submit: func(method string, params []byte) <-chan actor.Reply {
		c := call{method: method, params: params, reply: make(chan actor.Reply, 1)}
		calls <- c
		return c.reply
	}}, calls
}

func nextCall(t *testing.T, calls <-chan call) call {
	t.Helper()
	select {
	case c := <-calls:
		return c
	case <-time.After(testWait):
		require.FailNow(t, "backend saw no request")
		return call{}
	}
}

// testServer is a Server serving on a socket in its own temp dir.
type testServer struct {
	srv      *Server
	path     string
	ln       *net.UnixListener
	done     chan struct{} // closed when Serve returned
	serveErr error
}

func tempSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd") // short: sun_path holds 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "s.sock")
}

func testLogger() *slog.Logger {
	// Debug level runs the logging code; the text itself is of no interest here.
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startServer serves cfg (echoBackend by default); setup runs before Serve. Cleanup shuts
// it down and checks that Serve returned nil.
func startServer(t *testing.T, cfg ServerConfig, setup ...func(*Server)) *testServer {
	t.Helper()
	path := tempSocket(t)
	ln, err := Listen(path)
	require.NoError(t, err)
	if cfg.Backend == nil {
		cfg.Backend = echoBackend(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	cfg.Socket = path
	ts := &testServer{srv: NewServer(cfg), path: path, ln: ln, done: make(chan struct{})}
	for _, f := range setup {
		f(ts.srv)
	}
	go func() {
		ts.serveErr = ts.srv.Serve(ln)
		close(ts.done)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		err := ts.srv.Shutdown(ctx, "shutdown")
		ts.waitServe(t)
		_ = ln.Close()
		require.NoError(t, err)
	})
	return ts
}

// waitServe waits for Serve to return and checks it returned nil.
func (ts *testServer) waitServe(t *testing.T) {
	t.Helper()
	select {
	case <-ts.done:
		require.NoError(t, ts.serveErr)
	case <-time.After(testWait):
		require.FailNow(t, "Serve did not return")
	}
}

// shutdownAsync runs Shutdown in the background; the result arrives on the channel.
func shutdownAsync(srv *Server, timeout time.Duration, reason string) <-chan error {
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		res <- srv.Shutdown(ctx, reason)
	}()
	return res
}

func waitErr(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(testWait):
		require.FailNow(t, "timed out")
		return nil
	}
}

// testConn is a raw protocol connection driven by the test goroutine.
type testConn struct {
	t  *testing.T
	nc *net.UnixConn
	br *bufio.Reader
}

func dial(t *testing.T, path string) *testConn {
	t.Helper()
	nc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = nc.Close() })
	return &testConn{t: t, nc: nc, br: bufio.NewReaderSize(nc, 1<<20)}
}

func (c *testConn) send(lines ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	c.sendRaw(b.String())
}

func (c *testConn) sendRaw(s string) {
	c.t.Helper()
	require.NoError(c.t, c.nc.SetWriteDeadline(time.Now().Add(testWait)))
	_, err := c.nc.Write([]byte(s))
	require.NoError(c.t, err)
}

// line reads one message line, without its newline.
func (c *testConn) line() string {
	c.t.Helper()
	require.NoError(c.t, c.nc.SetReadDeadline(time.Now().Add(testWait)))
	s, err := c.br.ReadString('\n')
	require.NoError(c.t, err, "partial line %q", s)
	return strings.TrimSuffix(s, "\n")
}

type wireMsg struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *wireErr        `json:"error"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

type wireErr struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

func decodeMsg(t *testing.T, line string) wireMsg {
	t.Helper()
	var m wireMsg
	require.NoError(t, json.Unmarshal([]byte(line), &m), "line %q", line)
	require.Equal(t, "2.0", m.JSONRPC, "line %q", line)
	return m
}

func (c *testConn) recv() wireMsg {
	c.t.Helper()
	return decodeMsg(c.t, c.line())
}

// closed waits for the server to close the connection.
func (c *testConn) closed() {
	c.t.Helper()
	require.NoError(c.t, c.nc.SetReadDeadline(time.Now().Add(testWait)))
	b, err := c.br.ReadByte()
	require.Error(c.t, err, "read %q, want the connection closed", b)
	// ECONNRESET: the server closed with bytes of ours unread, which Linux reports so.
	require.True(c.t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "%v", err)
}

// requireError checks an error message against the contract: code, reason, retryable, and
// executed false.
func requireError(t *testing.T, m wireMsg, code int, reason string) {
	t.Helper()
	require.NotNil(t, m.Error, "want error %s, got result %s", reason, m.Result)
	require.Nil(t, m.Result)
	require.Equal(t, code, m.Error.Code)
	require.Equal(t, reason, m.Error.Data["reason"])
	require.Equal(t, wireErrors[reason].retryable, m.Error.Data["retryable"])
	require.Equal(t, false, m.Error.Data["executed"])
	require.NotEmpty(t, m.Error.Message)
}

func req(id, method, params string) string {
	s := `{"jsonrpc":"2.0","method":"` + method + `"`
	if id != "" {
		s += `,"id":` + id
	}
	if params != "" {
		s += `,"params":` + params
	}
	return s + "}"
}

// requireEcho checks a success answer of echoBackend.
func requireEcho(t *testing.T, m wireMsg, id, method, params string) {
	t.Helper()
	require.Nil(t, m.Error)
	require.JSONEq(t, id, string(m.ID))
	if params == "" {
		params = "null"
	}
	require.JSONEq(t, string(echoResult(method, []byte(params))), string(m.Result))
}

func TestBadLinesLeaveConnectionUsable(t *testing.T) {
	var submitted atomic.Int64
	ts := startServer(t, ServerConfig{Backend: echoBackend(&submitted)})
	cases := []struct {
		name string
		line string
		code int
	}{
		{"not JSON", `hello`, -32700},
		{"cut short", `{"jsonrpc":"2.0","method":`, -32700},
		{"two values", `{} {}`, -32700},
		{"trailing comma", `{"jsonrpc":"2.0","method":"get","id":1,}`, -32700},
		{"invalid UTF-8", "{\"jsonrpc\":\"2.0\",\"method\":\"get\",\"id\":\"\xff\"}", -32700},
		{"batch not JSON", `[{"jsonrpc":"2.0"`, -32700},
		{"number", `5`, -32600},
		{"string", `"get"`, -32600},
		{"null", `null`, -32600},
		{"empty object", `{}`, -32600},
		{"no jsonrpc", `{"method":"get","id":1}`, -32600},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","method":"get","id":1}`, -32600},
		{"jsonrpc number", `{"jsonrpc":2.0,"method":"get","id":1}`, -32600},
		{"no method", `{"jsonrpc":"2.0","id":1}`, -32600},
		{"method number", `{"jsonrpc":"2.0","method":1,"id":1}`, -32600},
		{"method null", `{"jsonrpc":"2.0","method":null,"id":1}`, -32600},
		{"id object", `{"jsonrpc":"2.0","method":"get","id":{}}`, -32600},
		{"id array", `{"jsonrpc":"2.0","method":"get","id":[1]}`, -32600},
		{"id bool", `{"jsonrpc":"2.0","method":"get","id":true}`, -32600},
		{"params string", `{"jsonrpc":"2.0","method":"get","id":1,"params":"k"}`, -32600},
		{"params number", `{"jsonrpc":"2.0","method":"get","id":1,"params":1}`, -32600},
		{"params null", `{"jsonrpc":"2.0","method":"get","id":1,"params":null}`, -32600},
		{"empty batch", `[]`, -32600},
		{"empty batch with spaces", ` [ ] `, -32600},
		{"nested deeper than the line limit", `{"jsonrpc":"2.0","method":"get","id":1,"params":{"a":` +
			strings.Repeat("[", maxLineDepth) + strings.Repeat("]", maxLineDepth) + `}}`, -32600},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts.path)
			before := submitted.Load()
			c.send(tc.line, req("2", "get", `{"key":"k"}`))
			m := c.recv()
			require.JSONEq(t, "null", string(m.ID))
			reason := map[int]string{-32700: reasonParseError, -32600: reasonInvalidRequest}[tc.code]
			requireError(t, m, tc.code, reason)
			requireEcho(t, c.recv(), "2", "get", `{"key":"k"}`)
			require.Equal(t, before+1, submitted.Load(), "only the good line reaches the backend")
		})
	}
}

func TestBlankLinesIgnored(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := dial(t, ts.path)
	c.sendRaw("\n   \n\t\r\n" + req("1", "get", "") + "\r\n" + req("2", "get", "[]") + "\n")
	requireEcho(t, c.recv(), "1", "get", "")
	requireEcho(t, c.recv(), "2", "get", "[]")
}

func TestEscapedMembersAndLastLine(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := dial(t, ts.path)
	// Member names and strings mean what they decode to.
	c.send(`{"jsonrpc":"2\u002e0","m\u0065thod":"g\u0065t","id":1}`)
	requireEcho(t, c.recv(), "1", "get", "")
	// A repeated name: the last value counts. An id is echoed byte for byte, also one
	// no float64 holds exactly.
	c.send(`{"jsonrpc":"2.0","method":"put","method":"get","id":1,"id":12345678901234567891}`)
	m := c.recv()
	requireEcho(t, m, "12345678901234567891", "get", "")
	require.Equal(t, "12345678901234567891", string(m.ID))
	// A last line without its newline is still a line.
	c.sendRaw(req("2", "get", ""))
	require.NoError(t, c.nc.CloseWrite())
	requireEcho(t, c.recv(), "2", "get", "")
	c.closed()
}

func TestServeErrors(t *testing.T) {
	path := tempSocket(t)
	ln, err := Listen(path)
	require.NoError(t, err)
	srv := NewServer(ServerConfig{Backend: echoBackend(nil)})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	c := dial(t, path)
	require.Eventually(t, func() bool { return srv.Conns() == 1 }, testWait, 5*time.Millisecond)
	require.Error(t, srv.Serve(ln), "one Serve at a time")

	// Someone else closed the listener: Serve reports it, the connection is still served.
	require.NoError(t, ln.Close())
	require.ErrorIs(t, waitErr(t, served), net.ErrClosed)
	c.send(req("1", "get", ""))
	requireEcho(t, c.recv(), "1", "get", "")
	require.NoError(t, c.nc.Close())
	require.NoError(t, waitErr(t, shutdownAsync(srv, testWait, "shutdown")))
}

// sized is a request line of exactly n bytes.
func sized(t *testing.T, id string, n int) string {
	prefix := `{"jsonrpc":"2.0","method":"put","id":` + id + `,"params":{"pad":"`
	pad := n - len(prefix) - len(`"}}`)
	require.Positive(t, pad)
	return prefix + strings.Repeat("x", pad) + `"}}`
}

func TestOversizedLine(t *testing.T) {
	// The limit is above the read buffer, so long lines arrive in several pieces.
	const limit = 3*readBufSize + 17
	ts := startServer(t, ServerConfig{MaxRequestBytes: limit})
	c := dial(t, ts.path)

	c.send(sized(t, "1", limit+1), sized(t, "2", limit), sized(t, "3", 5*limit), req("4", "get", ""))
	m := c.recv()
	requireError(t, m, -32005, actor.ReasonTooLarge)
	require.JSONEq(t, "null", string(m.ID))
	require.Equal(t, float64(limit), m.Error.Data["limit"])
	m = c.recv()
	require.Nil(t, m.Error, "a line of exactly the limit is served")
	require.JSONEq(t, "2", string(m.ID))
	requireError(t, c.recv(), -32005, actor.ReasonTooLarge)
	requireEcho(t, c.recv(), "4", "get", "")

	// Small lines after big ones: the connection's buffers are back to normal.
	c.send(req("5", "get", `{"key":"a"}`))
	requireEcho(t, c.recv(), "5", "get", `{"key":"a"}`)
}

func TestBatch(t *testing.T) {
	backend, calls := holdBackend()
	go func() {
		// Answer everything, in order, with the echo.
		for c := range calls {
			c.reply <- actor.Reply{Result: echoResult(c.method, c.params)}
		}
	}()
	// After the server's own cleanup (cleanups run last first): its reader may still be
	// submitting, and nothing orders that before a deferred close.
	t.Cleanup(func() { close(calls) })
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)

	c.send(`[` + strings.Join([]string{
		req("1", "get", `{"key":"a"}`),
		req("", "touch", `{"key":"n"}`),
		`5`,
		req(`"b"`, "put", `[1]`),
		`{"jsonrpc":"2.0","id":9}`,
		req("3", "status", ""),
	}, ",") + `]`)
	line := c.line()
	var answers []json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(line), &answers), line)
	require.Len(t, answers, 5, "one answer per element but the notification")
	requireEcho(t, decodeMsg(t, string(answers[0])), "1", "get", `{"key":"a"}`)
	m := decodeMsg(t, string(answers[1]))
	requireError(t, m, -32600, reasonInvalidRequest)
	require.JSONEq(t, "null", string(m.ID))
	requireEcho(t, decodeMsg(t, string(answers[2])), `"b"`, "put", `[1]`)
	requireError(t, decodeMsg(t, string(answers[3])), -32600, reasonInvalidRequest)
	m = decodeMsg(t, string(answers[4]))
	require.JSONEq(t, "3", string(m.ID))
	require.Contains(t, string(m.Result), `"protocol":1`)

	// A batch of notifications only is owed nothing: the next line answers the next request.
	c.send(`[`+req("", "touch", `{"key":"x"}`)+`,`+req("", "touch", `{"key":"y"}`)+`]`, req("4", "get", ""))
	requireEcho(t, c.recv(), "4", "get", "")
}

func TestNotificationNotAnswered(t *testing.T) {
	backend, calls := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)

	c.send(req("", "touch", `{"key":"k"}`), req("2", "get", ""))
	n := nextCall(t, calls)
	require.Equal(t, "touch", n.method)
	require.JSONEq(t, `{"key":"k"}`, string(n.params))
	n.reply <- actor.Reply{Result: []byte(`{"ignored":true}`)}
	g := nextCall(t, calls)
	require.Equal(t, "get", g.method)
	require.Nil(t, g.params, "absent params are nil")
	g.reply <- actor.Reply{Result: []byte(`{"ok":2}`)}
	m := c.recv()
	require.JSONEq(t, "2", string(m.ID))
	require.JSONEq(t, `{"ok":2}`, string(m.Result))
}

func TestPipelinedAnswersInReadOrder(t *testing.T) {
	backend, calls := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)

	const n = 50
	var lines []string
	for i := range n {
		lines = append(lines, req(strconv.Itoa(i), "get", fmt.Sprintf(`{"n":%d}`, i)))
	}
	c.send(lines...)
	held := make([]call, n)
	for i := range n {
		held[i] = nextCall(t, calls)
	}
	for i := n - 1; i >= 0; i-- { // the store finishes them backwards
		held[i].reply <- actor.Reply{Result: held[i].params}
	}
	for i := range n {
		m := c.recv()
		require.Equal(t, strconv.Itoa(i), string(m.ID))
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(m.Result))
	}
}

// A request the connection has read nothing after goes to SubmitOrRun, which may answer
// it at once; the reader then writes that answer itself, but only when nothing read
// before it is still owed: answers stay in read order.
func TestReadyAnswerWaitsForEarlierOnes(t *testing.T) {
	backend, calls := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)

	c.send(req("1", "get", `{"n":1}`))
	first := nextCall(t, calls)
	c.send(req("2", "get", `{"n":2}`))
	second := nextCall(t, calls)
	second.reply <- actor.Reply{Result: second.params}
	time.Sleep(20 * time.Millisecond) // the second answer is ready, the first is not
	first.reply <- actor.Reply{Result: first.params}
	for i := 1; i <= 2; i++ {
		m := c.recv()
		require.Equal(t, strconv.Itoa(i), string(m.ID))
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(m.Result))
	}
	require.Equal(t, int64(2), backend.ran.Load(), "each was the last line read")

	// Lines read together are queued, to be committed together; so is a batch array.
	c.send(req("3", "get", `{"n":3}`), req("4", "get", `{"n":4}`))
	for range 2 {
		h := nextCall(t, calls)
		h.reply <- actor.Reply{Result: h.params}
	}
	for i := 3; i <= 4; i++ {
		require.Equal(t, strconv.Itoa(i), string(c.recv().ID))
	}
	require.Equal(t, int64(3), backend.ran.Load(), "3 was read with 4 after it")
	c.send(`[` + req("5", "get", `{"n":5}`) + `]`)
	h := nextCall(t, calls)
	h.reply <- actor.Reply{Result: h.params}
	require.Contains(t, c.line(), `"id":5,`)
	require.Equal(t, int64(3), backend.ran.Load())
}

func TestIDEchoedExactly(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := dial(t, ts.path)
	ids := []string{
		`"abc"`, `""`, `"a\"b\u00e9\n"`, `"é"`,
		`0`, `-1`, `-12.50e+3`, `1.0`, `123456789012345678901234567890`, `9007199254740993`,
		`null`,
	}
	for _, id := range ids {
		c.send(req(id, "get", ""))
		line := c.line()
		require.True(t, strings.HasPrefix(line, `{"jsonrpc":"2.0","id":`+id+`,"result":`), "id %s: %s", id, line)
	}
	// Whitespace around the id is not part of it.
	c.send(`{ "jsonrpc" : "2.0" , "id" :  42 , "method" : "get" }`)
	require.True(t, strings.HasPrefix(c.line(), `{"jsonrpc":"2.0","id":42,`))
	// Inside a batch too.
	c.send(`[` + req(`"x1"`, "get", "") + `,` + req(`7e2`, "get", "") + `]`)
	line := c.line()
	require.Contains(t, line, `[{"jsonrpc":"2.0","id":"x1","result":`)
	require.Contains(t, line, `},{"jsonrpc":"2.0","id":7e2,"result":`)
}

func TestBackendReplies(t *testing.T) {
	replies := map[string]actor.Reply{
		"conflict": {Err: &actor.Error{Reason: actor.ReasonConflict, Message: "rev <7> & \"x\"\nnext \u2028",
			Data: map[string]any{"current_rev": 7, "index": 2, "reason": "spoof", "executed": true}}},
		"busy":      {Err: &actor.Error{Reason: actor.ReasonBusy, Message: "queue full", Retryable: true, Data: map[string]any{"retry_after_ms": 50}}},
		"storage":   {Err: &actor.Error{Reason: actor.ReasonStorage, Message: "fsync: EIO", Retryable: true}},
		"reused":    {Err: &actor.Error{Reason: actor.ReasonRequestIDReused, Message: "different params"}},
		"unknown":   {Err: &actor.Error{Reason: "made_up", Message: "?"}},
		"bad data":  {Err: &actor.Error{Reason: actor.ReasonNotFound, Message: "gone", Data: map[string]any{"ch": make(chan int), "key": "k"}}},
		"multiline": {Result: []byte("{\n  \"a\": [1,\n 2],\n  \"s\": \"<&>\"\n}")},
		"empty":     {},
		"executed":  {Err: &actor.Error{Reason: actor.ReasonInternal, Message: "result lost", Executed: true}},
	}
	backend := &fakeBackend{submit: func(method string, _ []byte) <-chan actor.Reply {
		return replyNow(replies[method])
	}}
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)

	cases := []struct {
		method string
		code   int
		reason string
		data   map[string]any
	}{
		{"conflict", -32002, actor.ReasonConflict, map[string]any{"current_rev": 7.0, "index": 2.0}},
		{"busy", -32003, actor.ReasonBusy, map[string]any{"retry_after_ms": 50.0}},
		{"storage", -32006, actor.ReasonStorage, nil},
		{"reused", -32602, actor.ReasonRequestIDReused, nil},
		{"unknown", -32603, actor.ReasonInternal, nil},
		{"bad data", -32001, actor.ReasonNotFound, map[string]any{"key": "k"}},
		{"empty", -32603, actor.ReasonInternal, nil},
	}
	for _, tc := range cases {
		t.Run(tc.method, func(t *testing.T) {
			c.send(req(`"`+tc.method+`"`, tc.method, ""))
			m := c.recv()
			require.JSONEq(t, `"`+tc.method+`"`, string(m.ID))
			requireError(t, m, tc.code, tc.reason)
			require.Len(t, m.Error.Data, 3+len(tc.data), "%v", m.Error.Data)
			for k, v := range tc.data {
				require.Equal(t, v, m.Error.Data[k], k)
			}
		})
	}

	c.send(req("1", "conflict", ""))
	line := c.line()
	require.Contains(t, line, `"message":"rev <7> & \"x\"\nnext \u2028"`, "no HTML escaping, newline escaped")
	m := decodeMsg(t, line)
	require.Equal(t, "rev <7> & \"x\"\nnext \u2028", m.Error.Message)

	c.send(req("2", "multiline", ""))
	require.Equal(t, `{"jsonrpc":"2.0","id":2,"result":{"a":[1,2],"s":"<&>"}}`, c.line())

	// The one error about a request that did take effect says so.
	c.send(req("3", "executed", ""))
	m = c.recv()
	require.Equal(t, -32603, m.Error.Code)
	require.Equal(t, map[string]any{"reason": "internal_error", "retryable": false, "executed": true}, m.Error.Data)
}

func TestStatus(t *testing.T) {
	var submitted atomic.Int64
	backend := echoBackend(&submitted)
	backend.stats = func() actor.Stats {
		return actor.Stats{Rev: 10, DurableRev: 9, SnapshotRev: 8, Entries: 7, Bytes: 6, Queue: 5,
			DedupWindow: 4000, Store: "/s/sessions.json", Degraded: "disk full", External: 2}
	}
	started := time.Now().Add(-time.Hour)
	ts := startServer(t, ServerConfig{Backend: backend, Version: "1.2.3", PID: 42, Generation: 3, Started: started,
		Restarts: func() RestartStatus { return RestartStatus{LastError: "preflight failed", Failed: 2} }})
	c := dial(t, ts.path)

	c.send(req("1", "status", ""))
	m := c.recv()
	require.Nil(t, m.Error)
	var st map[string]any
	require.NoError(t, json.Unmarshal(m.Result, &st))
	uptime := st["uptime_ms"].(float64)
	require.InDelta(t, float64(time.Hour.Milliseconds()), uptime, float64(time.Minute.Milliseconds()))
	delete(st, "uptime_ms")
	require.Equal(t, map[string]any{
		"protocol": 1.0, "version": "1.2.3", "pid": 42.0, "generation": 3.0, "phase": "serving",
		"rev": 10.0, "durable_rev": 9.0, "snapshot_rev": 8.0, "entries": 7.0, "bytes": 6.0,
		"connections": 1.0, "queue": 5.0, "dedup_window_ms": 4000.0, "store": "/s/sessions.json",
		"socket": ts.path, "degraded": "disk full", "external_changes": 2.0,
		"restart_error": "preflight failed", "restarts_failed": 2.0,
	}, st)
	require.Zero(t, submitted.Load(), "status is answered by the server")
}

func TestMaxConns(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxConns: 1})
	first := dial(t, ts.path)
	first.send(req("1", "get", ""))
	requireEcho(t, first.recv(), "1", "get", "")

	over := dial(t, ts.path)
	m := over.recv()
	requireError(t, m, -32003, actor.ReasonBusy)
	require.JSONEq(t, "null", string(m.ID))
	require.Positive(t, m.Error.Data["retry_after_ms"])
	over.closed()

	first.send(req("2", "get", ""))
	requireEcho(t, first.recv(), "2", "get", "")
	require.NoError(t, first.nc.Close())
	require.Eventually(t, func() bool { return ts.srv.Conns() == 0 }, testWait, 5*time.Millisecond)
	next := dial(t, ts.path)
	next.send(req("3", "get", ""))
	requireEcho(t, next.recv(), "3", "get", "")
}

func TestMaxPendingBackPressure(t *testing.T) {
	const maxPending, n = 3, 40
	var submitted, answered, most atomic.Int64
	backend, calls := holdBackend()
	hold := backend.submit
	backend.submit = func(method string, params []byte) <-chan actor.Reply {
		// answered is counted before each reply is sent, so this never overcounts.
		owed := submitted.Add(1) - answered.Load()
		for m := most.Load(); owed > m && !most.CompareAndSwap(m, owed); m = most.Load() {
		}
		return hold(method, params)
	}
	ts := startServer(t, ServerConfig{Backend: backend, MaxPending: maxPending})
	c := dial(t, ts.path)

	var lines []string
	for i := range n {
		lines = append(lines, req(strconv.Itoa(i), "get", fmt.Sprintf(`{"n":%d}`, i)))
	}
	c.send(lines...)
	for range n {
		cl := nextCall(t, calls)
		answered.Add(1)
		cl.reply <- actor.Reply{Result: cl.params}
	}
	for i := range n {
		m := c.recv()
		require.Equal(t, strconv.Itoa(i), string(m.ID))
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(m.Result))
	}
	require.Equal(t, int64(n), submitted.Load())
	require.LessOrEqual(t, most.Load(), int64(maxPending))
	require.Equal(t, int64(maxPending), most.Load(), "the limit was reached")
}

// A client that stops reading its answers is dropped after the write timeout: one that
// pipelines, and one that sent a single request, whose answer the reader begins to write
// itself (answerNow) and leaves the rest of to the writer.
func TestStalledReaderDropped(t *testing.T) {
	for _, tc := range []struct {
		name     string
		requests int
		size     int
	}{{"pipelined", 64, 256 << 10}, {"one request", 1, 4 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			big := []byte(`{"pad":"` + strings.Repeat("x", tc.size) + `"}`)
			backend := &fakeBackend{submit: func(string, []byte) <-chan actor.Reply {
				return replyNow(actor.Reply{Result: big})
			}}
			ts := startServer(t, ServerConfig{Backend: backend, WriteTimeout: 200 * time.Millisecond})
			stuck := dial(t, ts.path)
			var lines []string
			for i := range tc.requests {
				lines = append(lines, req(strconv.Itoa(i), "get", ""))
			}
			stuck.send(lines...) // and never read
			require.Eventually(t, func() bool { return backend.ran.Load() >= 1 }, testWait, time.Millisecond)
			require.Eventually(t, func() bool { return ts.srv.Conns() == 0 }, testWait, 10*time.Millisecond)

			c := dial(t, ts.path)
			c.send(req("1", "get", ""))
			require.JSONEq(t, string(big), string(c.recv().Result))
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	ts := startServer(t, ServerConfig{IdleTimeout: idle})
	stalled := dial(t, ts.path)
	stalled.sendRaw(`{"jsonrpc":"2.0",`)
	gone := make(chan error, 1)
	go func() {
		_ = stalled.nc.SetReadDeadline(time.Now().Add(testWait))
		_, err := stalled.br.ReadByte()
		gone <- err
	}()

	busy := dial(t, ts.path)
	tick := time.NewTicker(idle / 6) // busy sends more often than the idle timeout
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case err := <-gone:
			require.ErrorIs(t, err, io.EOF, "the stalled connection is closed, not answered")
			busy.send(req(`"last"`, "get", ""))
			requireEcho(t, busy.recv(), `"last"`, "get", "")
			// The server counts the connection out just after closing it.
			require.Eventually(t, func() bool { return ts.srv.Conns() == 1 }, testWait, time.Millisecond)
			return
		case <-tick.C:
			busy.send(req(strconv.Itoa(i), "get", ""))
			requireEcho(t, busy.recv(), strconv.Itoa(i), "get", "")
		case <-time.After(testWait):
			require.FailNow(t, "the stalled connection was not closed")
		}
	}
}

func TestIdleTimeoutWaitsForAnswers(t *testing.T) {
	const idle = 100 * time.Millisecond
	backend, calls := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend, IdleTimeout: idle})
	c := dial(t, ts.path)
	c.send(req("1", "flush", ""))
	cl := nextCall(t, calls)
	// A slow answer is not idleness.
	require.Never(t, func() bool { return ts.srv.Conns() == 0 }, 5*idle, idle/10)
	cl.reply <- actor.Reply{Result: []byte(`{"rev":1}`)}
	require.JSONEq(t, `{"rev":1}`, string(c.recv().Result))
	c.closed()
}

func TestPeerDenied(t *testing.T) {
	type peer struct{ uid, gid int }
	asked := make(chan peer, 1)
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		s.allowPeer = func(uid, gid int) bool {
			asked <- peer{uid, gid}
			return false
		}
	})
	c := dial(t, ts.path)
	m := c.recv()
	requireError(t, m, -32008, reasonPermissionDenied)
	require.JSONEq(t, "null", string(m.ID))
	c.closed()
	require.Equal(t, peer{os.Getuid(), os.Getgid()}, <-asked)
	require.Zero(t, ts.srv.Conns())
}

func TestPeerPolicy(t *testing.T) {
	allow := peerPolicy(1000, []int{2000}, []int{300})
	cases := []struct {
		uid, gid int
		want     bool
	}{
		{0, 0, true},       // root
		{1000, 5, true},    // the daemon's own uid
		{2000, 5, true},    // AllowUIDs
		{7, 300, true},     // AllowGIDs
		{7, 7, false},      // anyone else
		{300, 2000, false}, // ids are not interchangeable
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, allow(tc.uid, tc.gid), "uid %d gid %d", tc.uid, tc.gid)
	}
}

func TestGoaway(t *testing.T) {
	backend, calls := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend, GoawayGrace: time.Millisecond /* raised to 1s */})
	c := dial(t, ts.path)

	c.send(req("1", "put", `{"n":1}`), req("2", "put", `{"n":2}`), req("3", "put", `{"n":3}`))
	held := []call{nextCall(t, calls), nextCall(t, calls), nextCall(t, calls)}
	shut := shutdownAsync(ts.srv, testWait, "restart")

	m := c.recv() // the answers are held: the goaway comes first
	require.Equal(t, "goaway", m.Method)
	require.Nil(t, m.ID)
	require.JSONEq(t, `{"reason":"restart"}`, string(m.Params))
	require.Equal(t, "draining", ts.srv.Phase())

	// A client that sends anyway is refused, and nothing reaches the store.
	c.send(req("4", "put", `{"n":4}`), req("", "touch", ""), req("5", "status", ""))
	for _, h := range held {
		h.reply <- actor.Reply{Result: h.params}
	}
	for i := 1; i <= 3; i++ {
		m := c.recv()
		require.Equal(t, strconv.Itoa(i), string(m.ID))
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(m.Result))
	}
	for _, id := range []string{"4", "5"} {
		m := c.recv()
		require.Equal(t, id, string(m.ID))
		requireError(t, m, -32004, actor.ReasonShuttingDown)
	}
	require.Empty(t, calls)

	start := time.Now()
	c.closed() // after the grace period, since this client does not close its side
	require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond)
	require.NoError(t, waitErr(t, shut))
	ts.waitServe(t)
	require.NoError(t, ts.srv.Shutdown(context.Background(), "shutdown"), "idempotent")
}

// A line the reader holds when the grace period ends, with nothing owed before it, is
// still answered (PROTOCOL.md: a request that was read is always answered).
func TestLineReadAtGraceEndAnswered(t *testing.T) {
	held, release := make(chan struct{}), make(chan struct{})
	testHookLineRead = func(line []byte) {
		if strings.Contains(string(line), "late") {
			close(held)
			<-release
		}
	}
	t.Cleanup(func() { testHookLineRead = nil }) // after the server's own cleanup
	backend, _ := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend, GoawayGrace: time.Millisecond /* raised to 1s */})
	c := dial(t, ts.path)
	c.send(req("1", "status", ""))
	require.Equal(t, "1", string(c.recv().ID))
	shut := shutdownAsync(ts.srv, testWait, "shutdown")
	require.Equal(t, "goaway", c.recv().Method)

	c.send(req(`"late"`, "get", `{"key":"k"}`))
	<-held
	time.Sleep(1200 * time.Millisecond) // the grace period ends while the reader holds the line
	close(release)
	m := c.recv()
	require.Equal(t, `"late"`, string(m.ID))
	requireError(t, m, -32004, actor.ReasonShuttingDown)
	c.closed()
	require.NoError(t, waitErr(t, shut))
}

// The goaway comes before any shutting_down answer, also when the reader, which answers
// a lone line itself, reads one in the moment between the drain and the goaway.
func TestGoawayBeforeShuttingDown(t *testing.T) {
	woke, release := make(chan struct{}), make(chan struct{})
	testHookWriterDrain = func() {
		close(woke)
		<-release
	}
	t.Cleanup(func() { testHookWriterDrain = nil }) // after the server's own cleanup
	backend, _ := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)
	c.send(req("1", "status", ""))
	require.Equal(t, "1", string(c.recv().ID))

	shut := shutdownAsync(ts.srv, testWait, "restart")
	<-woke // the writer saw the drain but has not written the goaway
	c.send(req("2", "status", ""))
	time.Sleep(100 * time.Millisecond) // for the reader to take the line
	close(release)
	require.Equal(t, "goaway", c.recv().Method)
	m := c.recv()
	require.Equal(t, "2", string(m.ID))
	requireError(t, m, -32004, actor.ReasonShuttingDown)
	require.NoError(t, c.nc.CloseWrite())
	c.closed()
	require.NoError(t, waitErr(t, shut))
}

func TestShutdownAcrossPipeline(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := dial(t, ts.path)

	// A client that pipelines without pause and, as the contract asks, stops sending when
	// it sees the goaway; then it closes its side and reads what is still owed.
	sawGoaway := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() {
			_ = c.nc.CloseWrite()
			sent <- n
		}()
		for {
			select {
			case <-sawGoaway:
				return
			default:
			}
			var b strings.Builder
			for range 10 {
				b.WriteString(req(strconv.Itoa(n), "put", fmt.Sprintf(`{"n":%d}`, n)) + "\n")
				n++
			}
			_ = c.nc.SetWriteDeadline(time.Now().Add(testWait))
			if _, err := c.nc.Write([]byte(b.String())); err != nil {
				return
			}
		}
	}()

	var shut <-chan error
	answered := map[string]bool{}
	refused := 0
	goaways := 0
	for {
		require.NoError(t, c.nc.SetReadDeadline(time.Now().Add(testWait)))
		line, err := c.br.ReadString('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		m := decodeMsg(t, line)
		if m.Method == "goaway" {
			goaways++
			close(sawGoaway)
			continue
		}
		id := string(m.ID)
		require.False(t, answered[id], "answered twice: %s", id)
		answered[id] = true
		if m.Error != nil {
			requireError(t, m, -32004, actor.ReasonShuttingDown)
			refused++
		} else {
			require.Zero(t, refused, "served after a refusal: lines are classified in read order")
			requireEcho(t, m, id, "put", fmt.Sprintf(`{"n":%s}`, id))
		}
		if len(answered) == 200 {
			shut = shutdownAsync(ts.srv, testWait, "shutdown")
		}
	}
	n := <-sent
	require.Equal(t, 1, goaways)
	require.Len(t, answered, n, "every request sent was answered")
	t.Logf("%d requests, %d refused", n, refused)
	require.NotNil(t, shut)
	require.NoError(t, waitErr(t, shut))
	ts.waitServe(t)
}

func TestShutdownTimeoutForcesClose(t *testing.T) {
	backend, calls := holdBackend()
	ts := startServer(t, ServerConfig{Backend: backend})
	c := dial(t, ts.path)
	c.send(req("1", "put", `{}`))
	nextCall(t, calls) // never answered

	err := waitErr(t, shutdownAsync(ts.srv, 200*time.Millisecond, "shutdown"))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, "goaway", c.recv().Method)
	c.closed()
	ts.waitServe(t)
	require.Zero(t, ts.srv.Conns())
}

func TestShutdownBeforeServe(t *testing.T) {
	path := tempSocket(t)
	ln, err := Listen(path)
	require.NoError(t, err)
	defer ln.Close()
	srv := NewServer(ServerConfig{Backend: echoBackend(nil)})
	require.Equal(t, "serving", srv.Phase())
	require.NoError(t, srv.Shutdown(context.Background(), "shutdown"))
	require.NoError(t, srv.Shutdown(context.Background(), "shutdown"))
	require.NoError(t, srv.Serve(ln), "returns at once")
	require.Equal(t, "draining", srv.Phase())
}

func TestShutdownLeavesListenerOpen(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	require.NoError(t, waitErr(t, shutdownAsync(ts.srv, testWait, "restart")))
	ts.waitServe(t)

	// The socket still accepts: the connection waits in the backlog for a successor.
	c := dial(t, ts.path)
	c.send(req("1", "get", ""))

	next := NewServer(ServerConfig{Backend: echoBackend(nil), Logger: testLogger()})
	served := make(chan error, 1)
	go func() { served <- next.Serve(ts.ln) }()
	requireEcho(t, c.recv(), "1", "get", "")
	require.NoError(t, c.nc.Close())
	require.NoError(t, waitErr(t, shutdownAsync(next, testWait, "shutdown")))
	require.NoError(t, waitErr(t, served))
}

func TestAppendString(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`<a href="x">&amp;</a>`, `"<a href=\"x\">&amp;</a>"`},
		{"back\\slash", `"back\\slash"`},
		{"\n\r\t\x00\x1f\x7f", `"\n\r\t\u0000\u001f` + "\x7f" + `"`},
		{"é€😀", `"é€😀"`},
		{"\u2028\u2029", `"\u2028\u2029"`},
		{"bad\xffutf8\xc3", `"bad\ufffdutf8\ufffd"`},
	}
	for _, tc := range cases {
		got := string(appendString(nil, tc.in))
		require.Equal(t, tc.want, got, "%q", tc.in)
		require.True(t, json.Valid([]byte(got)))
	}
}

func TestWireErrorTable(t *testing.T) {
	// PROTOCOL.md "Errors", row by row.
	want := map[string]wireError{
		"parse_error":       {-32700, false},
		"invalid_request":   {-32600, false},
		"method_not_found":  {-32601, false},
		"invalid_params":    {-32602, false},
		"request_id_reused": {-32602, false},
		"not_found":         {-32001, false},
		"conflict":          {-32002, false},
		"busy":              {-32003, true},
		"shutting_down":     {-32004, true},
		"too_large":         {-32005, false},
		"storage_error":     {-32006, true},
		"deadline_exceeded": {-32007, true},
		"permission_denied": {-32008, false},
		"internal_error":    {-32603, false},
	}
	require.Equal(t, want, wireErrors)
}

// A client that pipelines (writes its requests, then reads the answers) is not dropped
// while fewer than MaxPending lines are owed, also when the first request was read alone
// (SubmitOrRun, answerNow) and its answer is larger than the socket buffer: the reader
// writes what the socket takes without waiting and leaves the rest to the writer, and
// goes on reading.
func TestPipelinedClientNotStalledByReaderWrite(t *testing.T) {
	big := []byte(`{"pad":"` + strings.Repeat("x", 2<<20) + `"}`)
	backend := &fakeBackend{submit: func(method string, params []byte) <-chan actor.Reply {
		if method == "big" {
			return replyNow(actor.Reply{Result: big})
		}
		return replyNow(actor.Reply{Result: echoResult(method, params)})
	}}
	ts := startServer(t, ServerConfig{Backend: backend, WriteTimeout: 2 * time.Second})
	c := dial(t, ts.path)
	c.send(req("0", "big", ""))
	time.Sleep(100 * time.Millisecond) // read alone: nothing buffered behind it
	// Two requests in flight: the second (a put of 1 MB) is written before reading.
	const n = 1
	line := req("1", "put", fmt.Sprintf(`{"key":"k","value":{"pad":%q}}`, strings.Repeat("y", 1<<20))) + "\n"
	require.NoError(t, c.nc.SetWriteDeadline(time.Now().Add(4*time.Second)))
	_, err := c.nc.Write([]byte(line))
	require.NoError(t, err, "the server stopped reading a pipelining client")
	for i := 0; i <= n; i++ {
		require.Equal(t, strconv.Itoa(i), string(c.recv().ID))
	}
}

// The same with the real actor: the answer of a patch run on the reader (the merged
// value, larger than the socket buffer) arrives whole while the client is still writing.
func TestPipelinedPatchAnswerArrives(t *testing.T) {
	a, err := actor.Open(actor.Config{Store: filepath.Join(t.TempDir(), "sessions.json"), SnapshotInterval: -1})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone; _ = a.Close() })

	ts := startServer(t, ServerConfig{Backend: a, WriteTimeout: 2 * time.Second})
	c := dial(t, ts.path)
	c.send(req("0", "put", fmt.Sprintf(`{"key":"big","value":{"pad":%q}}`, strings.Repeat("x", 2<<20))))
	require.Nil(t, c.recv().Error)
	c.send(req("1", "patch", `{"key":"big","merge":{"n":1}}`)) // alone: SubmitOrRun, answerNow
	time.Sleep(100 * time.Millisecond)
	var b strings.Builder
	for i := 2; i < 200; i++ {
		b.WriteString(req(strconv.Itoa(i), "get", fmt.Sprintf(`{"key":"k%d","pad":%q}`, i, strings.Repeat("y", 8<<10))) + "\n")
	}
	require.NoError(t, c.nc.SetWriteDeadline(time.Now().Add(4*time.Second)))
	_, werr := c.nc.Write([]byte(b.String()))
	_ = c.nc.SetReadDeadline(time.Now().Add(testWait))
	m, rerr := c.br.ReadString('\n') // the patch's answer
	require.NoError(t, werr, "write; patch answer: %d bytes read, err %v; store rev %d (the patch was executed)", len(m), rerr, a.Stats().Rev)
	require.NoError(t, rerr)
}
