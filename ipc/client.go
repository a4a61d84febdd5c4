package ipc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	randv2 "math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"sessiond/persist"
)

// Errors of the client; callers test them with errors.Is.
var (
	// ErrClientClosed is returned by calls made after, or interrupted by, Client.Close.
	ErrClientClosed = errors.New("ipc client closed")
	// ErrConnectionLost means the connection broke after the request was sent, so its
	// outcome is unknown. The client retries such requests itself when a second execution
	// is impossible (reads, and writes with a request_id: all but NoRequestID's); the
	// caller sees it when the retry budget ran out, or from Call with a method it cannot
	// prove safe.
	ErrConnectionLost = errors.New("connection lost, outcome unknown")
)

// Reasons the client acts on (error.data.reason of the wire contract).
const (
	clientReasonBusy         = "busy"
	clientReasonShuttingDown = "shutting_down"
	clientReasonDeadline     = "deadline_exceeded"
)

// Backoff between attempts: jittered exponential, doubling from clientBackoffMin up to clientBackoffMax.
const (
	clientBackoffMin = 5 * time.Millisecond
	clientBackoffMax = 500 * time.Millisecond
)

// clientReadMethods have no effect, so resending them after a lost connection is harmless.
var clientReadMethods = map[string]bool{"get": true, "list": true, "status": true, "flush": true}

// clientWriteMethods accept request_id, which makes resending them harmless.
var clientWriteMethods = map[string]bool{"put": true, "patch": true, "delete": true, "txn": true}

// Error is an error response of the server (a JSON-RPC error object).
type Error struct {
	Code      int    // JSON-RPC code, e.g. -32002
	Message   string // for humans
	Reason    string // stable string of the contract, e.g. "conflict"; see ReasonOf
	Retryable bool   // the same request may succeed later
	Executed  bool   // false: the request had no effect and never will
	// Data is the whole error.data object (reason, retryable and executed included), for
	// fields such as current_rev, index, retry_after_ms and limit.
	Data map[string]json.RawMessage
}

// Error returns "reason: message", e.g. `not_found: key "x" not found`.
func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("jsonrpc error %d: %s", e.Code, e.Message)
	}
	return e.Reason + ": " + e.Message
}

// ReasonOf returns the contract's reason string of an error response anywhere in err's
// chain ("conflict", "not_found", ...), or "" if err holds no *Error.
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// retryAfter is the server's busy hint, 0 if absent.
func (e *Error) retryAfter() time.Duration {
	var ms int64
	if raw, ok := e.Data["retry_after_ms"]; ok && json.Unmarshal(raw, &ms) == nil && ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return 0
}

// Entry is one key of the store with the revision of its last modification. Value is
// the raw JSON object (field order as stored); it is empty in a List without Values.
type Entry struct {
	Key   string          `json:"key"`
	Rev   int64           `json:"rev"`
	Value json.RawMessage `json:"value,omitempty"`
}

// split decodes an entry result without encoding/json (the result of every get and
// patch); false means raw is not the plain object it expects, for json.Unmarshal to
// decode or explain. Value aliases raw.
func (e *Entry) split(raw []byte) bool {
	members, isObject, err := persist.SplitObject(raw, clientMaxDepth)
	if err != nil || !isObject {
		return false
	}
	var out Entry
	for _, m := range members {
		switch m.Name {
		case "key":
			if len(m.Raw) < 2 || m.Raw[0] != '"' || bytes.IndexByte(m.Raw, '\\') >= 0 {
				return false
			}
			out.Key = string(m.Raw[1 : len(m.Raw)-1])
		case "rev":
			if out.Rev, err = strconv.ParseInt(string(m.Raw), 10, 64); err != nil {
				return false
			}
		case "value":
			out.Value = m.Raw
		}
	}
	*e = out
	return true
}

// DeleteResult is the result of Delete. Deleted is false when the key did not exist; Rev
// is then the store's current revision.
type DeleteResult struct {
	Key     string `json:"key"`
	Rev     int64  `json:"rev"`
	Deleted bool   `json:"deleted"`
}

// ListOptions selects a page of List. Zero values mean the server's defaults.
type ListOptions struct {
	Prefix string // only keys starting with Prefix
	Limit  int    // page size; 0: server default (100), at most 10000
	Cursor string // ListResult.Next of the previous page; "" for the first page
	Values bool   // include each entry's Value
}

// ListResult is one page of List, items in file order.
type ListResult struct {
	Items []Entry `json:"items"`
	// Next is the cursor of the following page; "" when this is the last page (null on the wire).
	Next string `json:"next"`
	Rev  int64  `json:"rev"` // the store revision the page was read at
}

// TxnOp is one operation of Txn. Op is "put", "patch", "delete" or "check". Value (put)
// and Merge (patch) follow the same rules as Put's value: json.RawMessage and []byte are
// sent as they are, anything else is marshalled with encoding/json. IfRev is the op's
// compare-and-set condition (nil: none; a pointer to 0: the key must not exist).
type TxnOp struct {
	Op    string
	Key   string
	Value any
	Merge any
	IfRev *int64
}

// TxnOpResult is the outcome of one TxnOp; Rev is the key's current rev for a check.
type TxnOpResult struct {
	Key     string `json:"key"`
	Rev     int64  `json:"rev"`
	Deleted bool   `json:"deleted,omitempty"`
}

// TxnResult is the result of Txn: one revision for the whole transaction and one
// result per op, in op order.
type TxnResult struct {
	Rev     int64         `json:"rev"`
	Results []TxnOpResult `json:"results"`
}

// FlushResult is the result of Flush.
type FlushResult struct {
	Rev         int64 `json:"rev"`
	SnapshotRev int64 `json:"snapshot_rev"`
}

// Status is the result of the status method; the server encodes it too, so field order
// is the contract's.
type Status struct {
	Protocol        int    `json:"protocol"`
	Version         string `json:"version"`
	PID             int    `json:"pid"`
	Generation      int64  `json:"generation"`
	Phase           string `json:"phase"` // loading, serving or draining
	Rev             int64  `json:"rev"`
	DurableRev      int64  `json:"durable_rev"`
	SnapshotRev     int64  `json:"snapshot_rev"`
	Entries         int    `json:"entries"`
	Bytes           int64  `json:"bytes"`
	Connections     int    `json:"connections"`
	Queue           int    `json:"queue"`
	DedupWindowMS   int64  `json:"dedup_window_ms"`
	UptimeMS        int64  `json:"uptime_ms"`
	Store           string `json:"store"`
	Socket          string `json:"socket"`
	Degraded        string `json:"degraded"` // why writes are failing now; "" when healthy
	ExternalChanges int    `json:"external_changes"`
	RestartError    string `json:"restart_error"`   // why the last SIGUSR1 restart did not go ahead
	RestartsFailed  int    `json:"restarts_failed"` // restarts refused in this process's life
}

// clientWriteOpts are the common params of the write methods.
type clientWriteOpts struct {
	IfRev       *int64 `json:"if_rev,omitempty"`
	RequestID   string `json:"request_id,omitempty"`
	Durable     *bool  `json:"durable,omitempty"`
	DeadlineMS  int64  `json:"deadline_ms,omitempty"`
	noRequestID bool
}

// clientWriteParams encodes the params of put, patch and delete by hand: encoding/json
// was a tenth of a busy client's CPU here. raw is compact JSON put under field (none
// when field is empty).
func clientWriteParams(key, field string, raw json.RawMessage, o clientWriteOpts) json.RawMessage {
	b := make([]byte, 0, 96+len(key)+len(raw)+len(o.RequestID))
	b = append(b, `{"key":`...)
	b = append(b, persist.Quote(key)...)
	if field != "" {
		b = append(b, `,"`...)
		b = append(b, field...)
		b = append(b, `":`...)
		b = append(b, raw...)
	}
	if o.IfRev != nil {
		b = append(b, `,"if_rev":`...)
		b = strconv.AppendInt(b, *o.IfRev, 10)
	}
	if o.RequestID != "" {
		b = append(b, `,"request_id":`...)
		b = append(b, persist.Quote(o.RequestID)...)
	}
	if o.Durable != nil {
		b = append(b, `,"durable":`...)
		b = strconv.AppendBool(b, *o.Durable)
	}
	if o.DeadlineMS != 0 {
		b = append(b, `,"deadline_ms":`...)
		b = strconv.AppendInt(b, o.DeadlineMS, 10)
	}
	return append(b, '}')
}

// resendable reports whether the write may be sent again after its connection was lost
// with the outcome unknown: only a request_id makes a second execution impossible.
func (o clientWriteOpts) resendable() bool { return o.RequestID != "" }

// WriteOption sets a common param of Put, Patch, Delete and Txn.
type WriteOption func(*clientWriteOpts)

// IfRev makes the write conditional: rev 0 means the key must not exist, rev > 0 that
// its current rev must equal rev; otherwise the write fails with reason "conflict".
// Not valid for Txn, whose conditions are per op (TxnOp.IfRev).
func IfRev(rev int64) WriteOption {
	return func(o *clientWriteOpts) { o.IfRev = &rev }
}

// RequestID sets the idempotency key instead of the random one every write gets.
func RequestID(id string) WriteOption {
	return func(o *clientWriteOpts) { o.RequestID = id }
}

// NoRequestID sends the write without a request_id. The server then keeps no record of
// its outcome: a patch's outcome holds the whole merged entry for the dedup window
// (five minutes by default), which with large entries written often is most of the
// server's memory. The price: a write whose connection is lost after it was sent is
// not resent, and fails with an error wrapping ErrConnectionLost (outcome unknown).
// Retries of busy, shutting_down and storage_error answers still happen: the write was
// not executed. RequestID overrides it.
func NoRequestID() WriteOption {
	return func(o *clientWriteOpts) { o.noRequestID = true }
}

// Durable(false) lets the server answer once the write is applied in memory instead of
// after fsync. The default is true.
func Durable(durable bool) WriteOption {
	return func(o *clientWriteOpts) { o.Durable = &durable }
}

// Deadline asks the server to refuse the write (reason "deadline_exceeded", never
// executed) if it has not started executing by t. The zero time sets none.
func Deadline(t time.Time) WriteOption {
	return func(o *clientWriteOpts) {
		o.DeadlineMS = 0
		if !t.IsZero() {
			o.DeadlineMS = t.UnixMilli()
		}
	}
}

// clientApply collects opts; a write without a request_id gets a random one so that a
// retry can never execute it twice, unless NoRequestID said otherwise.
func clientApply(opts []WriteOption) clientWriteOpts {
	var w clientWriteOpts
	for _, o := range opts {
		o(&w)
	}
	if w.RequestID == "" && !w.noRequestID {
		w.RequestID = clientNewRequestID()
	}
	return w
}

func clientNewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand panics rather than return an error
	return hex.EncodeToString(b[:])
}

// ClientOption configures NewClient.
type ClientOption func(*Client)

// WithRetryFor bounds the time spent retrying a call whose ctx has no deadline (default
// 10s). With a deadline, the deadline is the bound.
func WithRetryFor(d time.Duration) ClientOption {
	return func(c *Client) { c.retryFor = d }
}

// WithMaxAttempts bounds the attempts per call, the first included (default: no bound
// other than time). n <= 0 means no bound.
func WithMaxAttempts(n int) ClientOption {
	return func(c *Client) { c.maxAttempts = n }
}

// WithLogger sets where retries and protocol anomalies are logged (Debug and Warn).
// The default discards.
func WithLogger(l *slog.Logger) ClientOption {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}

// Client talks to a sessiond socket. It is safe for concurrent use: calls from many
// goroutines are pipelined on one connection, dialled lazily on the first call and
// redialled after it breaks or the server sends goaway. Each connection has one reader
// goroutine; Close stops them all.
//
// Every method blocks until the response arrives, ctx is done, or retries give up.
// Retries are transparent and never execute a request twice: writes carry a request_id
// (the same on every attempt; NoRequestID is the exception), reads have no effect.
// They cover busy (after at least retry_after_ms), shutting_down and storage_error
// responses, a socket that is missing or refuses (start-up, restart), and a connection
// lost with the outcome unknown; never deadline_exceeded or the other errors. They stop at ctx's deadline (a retry that could
// not start before it is not attempted; the error then wraps context.DeadlineExceeded
// and the last failure), or after WithRetryFor when ctx has none, or WithMaxAttempts.
type Client struct {
	path        string
	retryFor    time.Duration
	maxAttempts int
	log         *slog.Logger
	nextID      atomic.Int64 // JSON-RPC ids, unique across the client's connections

	// mu guards the fields below. It is held while dialling, so concurrent calls that find
	// no usable connection wait for one dial instead of each opening their own.
	mu     sync.Mutex
	closed bool
	cur    *clientConn              // where new requests go; nil, draining or broken: dial
	conns  map[*clientConn]struct{} // every connection whose reader runs, draining ones too
	done   chan struct{}            // closed by Close: wakes calls waiting between attempts
	wg     sync.WaitGroup           // one reader goroutine per connection
}

// NewClient returns a client of the socket at path. It does not connect yet.
func NewClient(path string, opts ...ClientOption) *Client {
	c := &Client{
		path:     path,
		retryFor: 10 * time.Second,
		log:      slog.New(slog.DiscardHandler),
		conns:    make(map[*clientConn]struct{}),
		done:     make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Close closes every connection and waits for the client's goroutines to end. Calls in
// flight return ErrClientClosed (their outcome is unknown); later calls too. Idempotent,
// goroutine-safe; always returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	close(c.done)
	conns := make([]*clientConn, 0, len(c.conns))
	for cc := range c.conns {
		conns = append(conns, cc)
	}
	c.cur = nil
	c.mu.Unlock()
	for _, cc := range conns {
		cc.close()
	}
	c.wg.Wait()
	return nil
}

// Get returns the entry of key; a missing key fails with reason "not_found".
func (c *Client) Get(ctx context.Context, key string) (Entry, error) {
	var e Entry
	params := struct {
		Key string `json:"key"`
	}{key}
	err := c.call(ctx, "get", params, &e, true)
	return e, err
}

// Put stores value (a JSON object) under key and returns the write's revision.
// value may be json.RawMessage or []byte holding JSON text, or anything encoding/json
// marshals to an object.
func (c *Client) Put(ctx context.Context, key string, value any, opts ...WriteOption) (int64, error) {
	raw, err := clientRawJSON(value)
	if err != nil {
		return 0, fmt.Errorf("put %q: value: %w", key, err)
	}
	o := clientApply(opts)
	var res struct {
		Rev int64 `json:"rev"`
	}
	err = c.do(ctx, "put", clientWriteParams(key, "value", raw, o), &res, o.resendable())
	return res.Rev, err
}

// Patch applies merge (an RFC 7396 JSON Merge Patch object, same encoding rules as
// Put's value) to the value of key, creating it from {} if missing unless IfRev says
// otherwise, and returns the merged entry.
func (c *Client) Patch(ctx context.Context, key string, merge any, opts ...WriteOption) (Entry, error) {
	raw, err := clientRawJSON(merge)
	if err != nil {
		return Entry{}, fmt.Errorf("patch %q: merge: %w", key, err)
	}
	o := clientApply(opts)
	var e Entry
	err = c.do(ctx, "patch", clientWriteParams(key, "merge", raw, o), &e, o.resendable())
	return e, err
}

// Delete removes key. Deleting a missing key succeeds with Deleted false.
func (c *Client) Delete(ctx context.Context, key string, opts ...WriteOption) (DeleteResult, error) {
	o := clientApply(opts)
	var res DeleteResult
	err := c.do(ctx, "delete", clientWriteParams(key, "", nil, o), &res, o.resendable())
	return res, err
}

// List returns one page of entries in file order; follow ListResult.Next for the rest.
func (c *Client) List(ctx context.Context, opts ListOptions) (ListResult, error) {
	params := struct {
		Prefix string `json:"prefix,omitempty"`
		Limit  int    `json:"limit,omitempty"`
		Cursor string `json:"cursor,omitempty"`
		Values bool   `json:"values,omitempty"`
	}{opts.Prefix, opts.Limit, opts.Cursor, opts.Values}
	var res ListResult
	err := c.call(ctx, "list", params, &res, true)
	return res, err
}

// Txn applies ops all or nothing under one revision. A failed condition fails the whole
// txn with reason "conflict" and data.index naming the op. IfRev is refused as an opts
// (conditions are per op); the other write options apply.
func (c *Client) Txn(ctx context.Context, ops []TxnOp, opts ...WriteOption) (TxnResult, error) {
	type wireOp struct {
		Op    string          `json:"op"`
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value,omitempty"`
		Merge json.RawMessage `json:"merge,omitempty"`
		IfRev *int64          `json:"if_rev,omitempty"`
	}
	w := clientApply(opts)
	if w.IfRev != nil {
		return TxnResult{}, errors.New("txn: IfRev is not a txn option, set TxnOp.IfRev")
	}
	wire := make([]wireOp, len(ops))
	for i, op := range ops {
		wire[i] = wireOp{Op: op.Op, Key: op.Key, IfRev: op.IfRev}
		var err error
		if op.Value != nil {
			if wire[i].Value, err = clientRawJSON(op.Value); err != nil {
				return TxnResult{}, fmt.Errorf("txn op %d: value: %w", i, err)
			}
		}
		if op.Merge != nil {
			if wire[i].Merge, err = clientRawJSON(op.Merge); err != nil {
				return TxnResult{}, fmt.Errorf("txn op %d: merge: %w", i, err)
			}
		}
	}
	params := struct {
		Ops []wireOp `json:"ops"`
		clientWriteOpts
	}{wire, w}
	var res TxnResult
	err := c.call(ctx, "txn", params, &res, w.resendable())
	return res, err
}

// Flush returns once sessions.json on disk holds every write acknowledged before the call.
func (c *Client) Flush(ctx context.Context) (FlushResult, error) {
	var res FlushResult
	err := c.call(ctx, "flush", nil, &res, true)
	return res, err
}

// Status returns the server's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var res Status
	err := c.call(ctx, "status", nil, &res, true)
	return res, err
}

// Call calls any method: params (nil for none) is encoded like Put's value and the
// result is unmarshalled into result (nil to discard it; *json.RawMessage keeps it
// verbatim). For put, patch, delete and txn an object params without "request_id" gets a
// random one, as with the typed methods. A method the client does not know is not resent
// once it may have reached the server: losing the connection then returns an error
// wrapping ErrConnectionLost.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	var raw json.RawMessage
	if params != nil {
		var err error
		if raw, err = clientRawJSON(params); err != nil {
			return fmt.Errorf("%s: params: %w", method, err)
		}
	}
	safe := clientReadMethods[method]
	if clientWriteMethods[method] {
		raw, safe = clientWithRequestID(raw)
	}
	return c.do(ctx, method, raw, result, safe)
}

// clientWithRequestID adds a request_id to an object params that has none. It reports
// whether the result carries one.
func clientWithRequestID(raw json.RawMessage) (json.RawMessage, bool) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil || obj == nil {
		return raw, false // not an object: the server will refuse it anyway
	}
	if _, ok := obj["request_id"]; ok {
		return raw, true
	}
	obj["request_id"], _ = json.Marshal(clientNewRequestID())
	out, err := json.Marshal(obj)
	if err != nil {
		return raw, false
	}
	return out, true
}

// clientRawJSON encodes v: JSON text (json.RawMessage, []byte) is validated and
// compacted onto one line, anything else marshalled.
func clientRawJSON(v any) (json.RawMessage, error) {
	var text []byte
	switch v := v.(type) {
	case json.RawMessage:
		text = v
	case []byte:
		text = v
	default:
		return json.Marshal(v)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, text); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// call marshals params (nil: none) and runs do.
func (c *Client) call(ctx context.Context, method string, params, result any, safe bool) error {
	var raw json.RawMessage
	if params != nil {
		var err error
		if raw, err = json.Marshal(params); err != nil {
			return fmt.Errorf("%s: params: %w", method, err)
		}
	}
	return c.do(ctx, method, raw, result, safe)
}

// do sends the request until it gets an answer worth returning. safe says a second
// execution is impossible, so a request whose connection broke after sending may be resent.
func (c *Client) do(ctx context.Context, method string, params json.RawMessage, result any, safe bool) error {
	start := time.Now()
	budget := start.Add(c.retryFor)
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		budget = dl
	}
	var last error // the previous attempt's failure, kept to explain a ctx expiry
	for attempt := 1; ; attempt++ {
		raw, err := c.attempt(ctx, method, params)
		if err != nil && last != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (while retrying after: %w)", err, last)
		}
		if err == nil {
			if result == nil {
				return nil
			}
			if e, ok := result.(*Entry); ok && e.split(raw) {
				return nil
			}
			if err := json.Unmarshal(raw, result); err != nil {
				return fmt.Errorf("%s: decode result: %w", method, err)
			}
			return nil
		}
		delay, retry := clientRetryDelay(err, attempt, safe)
		switch {
		case c.isClosed():
			return fmt.Errorf("%s: %w", method, ErrClientClosed)
		case !retry || ctx.Err() != nil, c.maxAttempts > 0 && attempt >= c.maxAttempts:
			return fmt.Errorf("%s: %w", method, err)
		case time.Now().Add(delay).After(budget) && hasDeadline:
			// Waiting for the deadline only to fail then helps nobody.
			return fmt.Errorf("%s: %w before attempt %d (last failure: %w)", method, context.DeadlineExceeded, attempt+1, err)
		case time.Now().Add(delay).After(budget):
			return fmt.Errorf("%s: gave up retrying after %v, %d attempts: %w",
				method, time.Since(start).Round(time.Millisecond), attempt, err)
		}
		last = err
		c.log.Debug("retrying", "method", method, "attempt", attempt, "delay", delay, "err", err)
		if delay == 0 {
			continue
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (while retrying after: %w)", method, ctx.Err(), err)
		case <-c.done:
			t.Stop()
			return fmt.Errorf("%s: %w", method, ErrClientClosed)
		}
	}
}

// clientRetryDelay decides whether err is worth another attempt, and after how long.
func clientRetryDelay(err error, attempt int, safe bool) (time.Duration, bool) {
	var notSent *clientNotSentError
	if errors.As(err, &notSent) {
		if notSent.draining {
			return 0, true // a fresh connection is one dial away
		}
		return clientBackoff(attempt), true
	}
	if errors.Is(err, ErrConnectionLost) {
		return clientBackoff(attempt), safe
	}
	var e *Error
	if !errors.As(err, &e) || !e.Retryable || e.Reason == clientReasonDeadline {
		// deadline_exceeded is retryable by the table, but retrying cannot beat the
		// caller's own deadline: the caller decides.
		return 0, false
	}
	if e.Executed && !safe {
		return 0, false
	}
	d := clientBackoff(attempt)
	if e.Reason == clientReasonBusy {
		d = max(d, e.retryAfter())
	}
	return d, true
}

// clientBackoff is the jittered wait after the attempt-th failure: in [d/2, d] with d
// doubling from clientBackoffMin up to clientBackoffMax.
func clientBackoff(attempt int) time.Duration {
	d := clientBackoffMax
	if attempt <= 7 {
		d = min(clientBackoffMin<<(attempt-1), clientBackoffMax)
	}
	return d/2 + randv2.N(d/2+1)
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// attempt sends the request once and waits for its response.
func (c *Client) attempt(ctx context.Context, method string, params json.RawMessage) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	id := c.nextID.Add(1)
	ch, err := cc.send(ctx, id, clientEncodeRequest(id, method, params))
	if err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.result, r.err
	case <-ctx.Done():
		cc.abandon(id)
		select {
		case r := <-ch: // it arrived meanwhile: an outcome beats "unknown"
			return r.result, r.err
		default:
			return nil, ctx.Err()
		}
	}
}

// clientEncodeRequest returns one request line. params must be compact JSON (no newline).
func clientEncodeRequest(id int64, method string, params json.RawMessage) []byte {
	m, _ := json.Marshal(method) // a string always marshals
	line := make([]byte, 0, 48+len(m)+len(params))
	line = append(line, `{"jsonrpc":"2.0","id":`...)
	line = strconv.AppendInt(line, id, 10)
	line = append(line, `,"method":`...)
	line = append(line, m...)
	if params != nil {
		line = append(line, `,"params":`...)
		line = append(line, params...)
	}
	return append(line, "}\n"...)
}

// conn returns the connection new requests go to, dialling one if needed.
func (c *Client) conn(ctx context.Context) (*clientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClientClosed
	}
	if c.cur != nil && c.cur.usable() {
		return c.cur, nil
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// Per the contract these mean nothing was sent: the socket is not there yet
		// (start-up), nobody listens (restart), or the listen queue is full.
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EAGAIN) {
			return nil, &clientNotSentError{err: err}
		}
		return nil, err
	}
	cc := &clientConn{nc: nc, log: c.log, pending: make(map[int64]chan clientReply)}
	c.cur = cc
	c.conns[cc] = struct{}{}
	c.wg.Add(1)
	go c.read(cc)
	c.log.Debug("connected", "socket", c.path)
	return cc, nil
}

// read is the reader goroutine of cc: it dispatches responses until cc breaks, then
// fails the requests still waiting on it.
func (c *Client) read(cc *clientConn) {
	defer c.wg.Done()
	r := bufio.NewReader(cc.nc)
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break // a partial last line is not a message
		}
		cc.handle(line)
	}
	_ = cc.nc.Close()
	cc.mu.Lock()
	cc.broken = true
	pending := cc.pending
	cc.pending = make(map[int64]chan clientReply)
	cc.order = nil
	cc.mu.Unlock()
	for _, ch := range pending {
		ch <- clientReply{err: fmt.Errorf("%w: %w", ErrConnectionLost, err)}
	}
	c.mu.Lock()
	delete(c.conns, cc)
	if c.cur == cc {
		c.cur = nil
	}
	c.mu.Unlock()
}

// clientNotSentError is a failure before any byte of the request left: resending it is
// safe whatever the method.
type clientNotSentError struct {
	err      error
	draining bool // the connection got goaway between choosing it and sending
}

func (e *clientNotSentError) Error() string {
	if e.draining {
		return "connection draining, request not sent"
	}
	return e.err.Error()
}

func (e *clientNotSentError) Unwrap() error { return e.err }

// clientReply is the outcome of one request: result, or err (an *Error or a transport error).
type clientReply struct {
	result json.RawMessage
	err    error
}

// clientConn is one connection and the requests waiting on it.
type clientConn struct {
	nc  net.Conn
	log *slog.Logger

	writeMu sync.Mutex // held for a whole line, so lines never interleave; taken before mu

	mu       sync.Mutex
	pending  map[int64]chan clientReply // callers waiting, by id; each channel has room for its one reply
	order    []int64                    // ids written and not answered yet, in write order
	draining bool                       // goaway received: send nothing more, close once idle
	broken   bool                       // nc failed or closed
}

// usable reports whether new requests may go on cc.
func (cc *clientConn) usable() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return !cc.draining && !cc.broken
}

// send writes one request line and returns the channel its reply will arrive on.
func (cc *clientConn) send(ctx context.Context, id int64, line []byte) (<-chan clientReply, error) {
	cc.writeMu.Lock()
	defer cc.writeMu.Unlock()
	cc.mu.Lock()
	if cc.draining || cc.broken {
		cc.mu.Unlock()
		return nil, &clientNotSentError{draining: true}
	}
	ch := make(chan clientReply, 1)
	cc.pending[id] = ch
	// Registered before writing: the reader may see the response before Write returns.
	cc.order = append(cc.order, id)
	cc.mu.Unlock()

	// A server that stops reading would block Write forever; ctx must still win.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = cc.nc.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	n, err := cc.nc.Write(line)
	if !stop() {
		<-fired
		_ = cc.nc.SetWriteDeadline(time.Time{})
	}
	if err == nil {
		return ch, nil
	}
	cc.mu.Lock()
	delete(cc.pending, cc.dropOrder(id))
	cc.mu.Unlock()
	if n == 0 && ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, ctx.Err() // nothing written: the stream is intact, keep the connection
	}
	cc.close() // the reader fails the other waiting requests
	if n == 0 {
		return nil, &clientNotSentError{err: err}
	}
	// Half a line went out. The server cannot execute it, but say "unknown" anyway: the
	// retry is safe for every request the client knows, and honest for the others.
	if ctx.Err() != nil {
		err = ctx.Err() // the cause the caller knows, rather than "i/o timeout"
	}
	return nil, fmt.Errorf("%w: write: %w", ErrConnectionLost, err)
}

// dropOrder removes id from order and returns it. Called with mu held.
func (cc *clientConn) dropOrder(id int64) int64 {
	for i, o := range cc.order {
		if o == id {
			cc.order = append(cc.order[:i:i], cc.order[i+1:]...)
			break
		}
	}
	return id
}

// abandon forgets the caller of id (its ctx is done); its response will be dropped.
func (cc *clientConn) abandon(id int64) {
	cc.mu.Lock()
	delete(cc.pending, id)
	idle := cc.draining && len(cc.pending) == 0
	cc.mu.Unlock()
	if idle {
		cc.close()
	}
}

// close closes nc; the reader goroutine then ends.
func (cc *clientConn) close() {
	cc.mu.Lock()
	cc.broken = true
	cc.mu.Unlock()
	_ = cc.nc.Close()
}

// clientMessage is any message the server sends: a response, or a notification (Method set).
type clientMessage struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int                        `json:"code"`
		Message string                     `json:"message"`
		Data    map[string]json.RawMessage `json:"data"`
	} `json:"error"`
}

// split is the fast path of decoding a success response, the message nearly every line
// is: it takes id and result as they are in line (which the reader allocated for it) and
// decodes nothing. It reports false for anything else, which is decoded in full.
func (m *clientMessage) split(line []byte) bool {
	members, isObject, err := persist.SplitObject(line, clientMaxDepth)
	if err != nil || !isObject {
		return false
	}
	for _, x := range members {
		switch x.Name {
		case "id":
			m.ID = x.Raw
		case "result":
			m.Result = x.Raw
		case "error", "method":
			return false
		}
	}
	return m.ID != nil && m.Result != nil
}

// clientMaxDepth bounds the nesting of a server message the client splits: values nest
// at most --max-depth (64 by default) inside a response's two levels.
const clientMaxDepth = 10000

// handle dispatches one line from the server.
func (cc *clientConn) handle(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var msg clientMessage
	if !msg.split(line) {
		if err := json.Unmarshal(line, &msg); err != nil {
			// The client never sends batches, so an array is as unexpected as garbage.
			cc.log.Warn("undecodable message from server", "err", err, "len", len(line))
			return
		}
	}
	if msg.Method != "" {
		if msg.Method == "goaway" {
			cc.mu.Lock()
			cc.draining = true
			idle := len(cc.pending) == 0
			cc.mu.Unlock()
			cc.log.Debug("goaway received, draining connection", "idle", idle)
			if idle {
				cc.close()
			}
		}
		return
	}
	reply := clientReply{result: msg.Result}
	if msg.Error != nil {
		e := &Error{Code: msg.Error.Code, Message: msg.Error.Message, Data: msg.Error.Data}
		_ = json.Unmarshal(e.Data["reason"], &e.Reason)
		_ = json.Unmarshal(e.Data["retryable"], &e.Retryable)
		_ = json.Unmarshal(e.Data["executed"], &e.Executed)
		reply = clientReply{err: e}
	}
	if reply.err == nil && reply.result == nil {
		reply.result = json.RawMessage("null")
	}

	cc.mu.Lock()
	id, err := strconv.ParseInt(string(msg.ID), 10, 64) // the client's ids are integers
	if err != nil {
		// An id-null error (parse_error, invalid_request, too_large) takes the place of
		// the request that caused it, and the server answers in read order.
		if len(cc.order) == 0 {
			cc.mu.Unlock()
			cc.log.Warn("response matches no request", "id", string(msg.ID), "err", reply.err)
			return
		}
		id = cc.order[0]
	}
	cc.dropOrder(id)
	ch, ok := cc.pending[id]
	delete(cc.pending, id)
	if ReasonOf(reply.err) == clientReasonShuttingDown {
		cc.draining = true // normally goaway said so already; never send more here
	}
	idle := cc.draining && len(cc.pending) == 0
	cc.mu.Unlock()
	if ok {
		ch <- reply
	}
	if idle {
		cc.close()
	}
}
