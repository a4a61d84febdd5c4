package ipc

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"sessiond/actor"
	"sessiond/persist"
)

// Why a connection ended, for the log.
var (
	errIdle       = errors.New("idle")
	errGraceOver  = errors.New("goaway grace period over")
	errConnClosed = errors.New("connection closed by the server")
)

const (
	readBufSize  = 64 << 10
	writeBufSize = 64 << 10
	// keepBufSize bounds the scratch buffers a connection keeps between lines, so that one
	// huge request or batch does not pin its memory for the connection's lifetime.
	keepBufSize = 1 << 20
	// maxLineDepth bounds the nesting of a request line, so that a hostile line cannot
	// make the envelope check recurse without bound. Params have their own, lower limit
	// (--max-depth), which the backend enforces with a clearer error.
	maxLineDepth = 10000
)

// conn is one client connection: a reader goroutine turns lines into items on fifo, the
// writer goroutine (serve) answers them in order. A line whose answer is ready when it is
// the only one owed is answered by the reader itself (answerNow).
type conn struct {
	srv  *Server
	nc   *net.UnixConn
	log  *slog.Logger
	cred *unix.Ucred

	// fifo carries the answers owed, in the order the lines were read. Only the reader sends
	// and closes it (when it stops reading); only the writer receives.
	fifo chan item
	// slots holds one token per line read but not yet answered; the reader blocks on it at
	// MaxPending (back-pressure), the writer frees a token after writing an answer.
	slots chan struct{}
	// done is closed when the connection is torn down; both goroutines then return.
	done      chan struct{}
	closeOnce sync.Once

	br   *bufio.Reader
	line []byte // the reader's buffer for lines longer than br's buffer
	w    *writer
}

// item is what one line is owed: nothing (notifications, blank batches), one answer, or a
// batch array of answers.
type item struct {
	batch bool
	parts []part
	raw   []byte // the rest of an answer the reader began writing (answerNow)
}

// ready reports whether every answer it is owed can be written without waiting.
func (it item) ready() bool {
	for _, p := range it.parts {
		if p.msg == nil && len(p.reply) == 0 {
			return false
		}
	}
	return true
}

// part is one answer: either already encoded (msg) or awaited from the backend (reply).
type part struct {
	id     []byte // the request's id, exactly as received
	msg    []byte
	reply  <-chan actor.Reply
	method string
	reason string // the error reason of msg, for the log
	start  time.Time
}

func newConn(s *Server, nc *net.UnixConn, id uint64, cred *unix.Ucred) *conn {
	c := &conn{
		srv:   s,
		nc:    nc,
		log:   s.log.With("conn", id),
		cred:  cred,
		fifo:  make(chan item, s.cfg.MaxPending),
		slots: make(chan struct{}, s.cfg.MaxPending),
		done:  make(chan struct{}),
	}
	c.br = bufio.NewReaderSize(&idleReader{c: c}, readBufSize)
	return c
}

// close tears the connection down; idempotent. Both goroutines notice and return.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		_ = c.nc.Close()
	})
}

// serve runs the connection: the reader in a new goroutine, the writer in this one.
func (c *conn) serve() {
	defer c.srv.wg.Done()
	c.log.Debug("connection opened", "uid", c.cred.Uid, "gid", c.cred.Gid, "pid", c.cred.Pid)
	var readErr error
	readerDone := make(chan struct{})
	w := &writer{c: c, drain: c.srv.drain}
	w.bw = bufio.NewWriterSize(&stallWriter{nc: c.nc, timeout: c.srv.cfg.WriteTimeout}, writeBufSize)
	c.w = w
	go func() {
		defer close(readerDone)
		readErr = c.readLoop()
	}()
	writeErr := w.loop()
	c.close()
	<-readerDone
	c.srv.remove(c)
	w.stopTimer()

	if isTimeout(writeErr) {
		c.log.Warn("connection closed: client not reading its answers", "write_timeout", c.srv.cfg.WriteTimeout)
		return
	}
	// The writer's reason comes first: when it ends the connection, the reader's error
	// (use of a closed connection) is only a consequence.
	c.log.Debug("connection closed", "reason", cmp.Or(writeErr, readErr))
}

// Test hooks, nil outside tests: testHookLineRead is called with each line the reader
// has read, before it takes the line's slot; testHookWriterDrain when an idle writer
// wakes for the drain, before it writes the goaway.
var (
	testHookLineRead    func(line []byte)
	testHookWriterDrain func()
)

// readLoop reads lines and queues what each is owed, until EOF, an error, idleness or close.
func (c *conn) readLoop() error {
	defer close(c.fifo)
	for {
		line, tooLong, err := c.readLine()
		if err != nil {
			return err
		}
		if !tooLong && len(bytes.TrimLeft(line, " \t\r")) == 0 {
			continue
		}
		if testHookLineRead != nil {
			testHookLineRead(line)
		}
		select {
		case c.slots <- struct{}{}:
		case <-c.done:
			return errConnClosed
		}
		it := c.handleLine(line, tooLong)
		if !c.answerNow(it) {
			// Never blocks: fifo holds at most one item per slot.
			c.fifo <- it
		}
	}
}

// answerNow writes the answer to it on the reader's goroutine when it is ready (the
// backend ran the request in SubmitOrRun), nothing read before it is still owed, and the
// writer is idle: for a client that waits for each answer, that spares waking the writer's
// goroutine, which costs about as much as the rest of a get. The reader never waits for
// the client, which may be busy writing its next requests: what the socket does not
// take at once goes to the writer, and the line's slot with it. It reports whether it
// answered (or queued the rest, or found the connection failing).
func (c *conn) answerNow(it item) bool {
	if len(c.slots) != 1 || !it.ready() || !c.w.mu.TryLock() {
		return false
	}
	defer c.w.mu.Unlock()
	w := c.w
	switch {
	case w.err != nil:
		return true // the connection is closing
	case w.graceOver:
		return false // the writer ends the connection once it has written this
	}
	select {
	case <-w.drain:
		// Draining began and the goaway is not written yet (drain is nil once it is):
		// the writer writes it first, then this, as PROTOCOL.md orders them.
		return false
	default:
	}
	msg, err := w.encode(it)
	if err == nil {
		var n int
		if n, err = writeNow(c.nc, msg); err == nil && n < len(msg) {
			c.fifo <- item{raw: bytes.Clone(msg[n:])}
			return true
		}
	}
	if err != nil {
		w.err = err
		c.close() // the writer wakes and returns w.err
		return true
	}
	<-c.slots
	return true
}

// writeNow writes what the socket takes without waiting.
func writeNow(nc *net.UnixConn, b []byte) (int, error) {
	rc, err := nc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := unix.Write(int(fd), b[n:])
			if e == unix.EINTR {
				continue
			}
			if e != nil {
				if e != unix.EAGAIN {
					werr = e
				}
				return true
			}
			n += m
		}
		return true
	}); err != nil {
		return n, err
	}
	return n, werr
}

// readLine returns the next line without its newline, valid until the next call. A line
// over MaxRequestBytes is read to its end and dropped: tooLong is set and line is empty.
// A last line without a newline is returned as a line; io.EOF comes after it.
func (c *conn) readLine() (line []byte, tooLong bool, err error) {
	limit := c.srv.cfg.MaxRequestBytes
	if cap(c.line) > keepBufSize {
		c.line = nil
	}
	c.line = c.line[:0]
	for first := true; ; first = false {
		frag, err := c.br.ReadSlice('\n')
		n := len(frag)
		if err == nil {
			n-- // the newline
		}
		switch {
		case tooLong:
		case len(c.line)+n > limit:
			tooLong = true
			c.line = c.line[:0]
		case first && err == nil:
			return frag[:n], false, nil // the common case: no copy
		default:
			c.line = append(c.line, frag[:n]...)
		}
		switch {
		case err == nil:
			return c.line, tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF) && (tooLong || len(c.line) > 0):
			return c.line, tooLong, nil
		default:
			return nil, false, err
		}
	}
}

// handleLine parses one line and submits its requests; it returns what the line is owed.
func (c *conn) handleLine(line []byte, tooLong bool) item {
	if tooLong {
		limit := c.srv.cfg.MaxRequestBytes
		msg := fmt.Sprintf("request line longer than %d bytes", limit)
		return c.single(c.errorPart(actor.ReasonTooLarge, msg, map[string]any{"limit": limit}))
	}
	if !utf8.Valid(line) {
		return c.single(c.errorPart(reasonParseError, "request line is not valid UTF-8", nil))
	}
	draining := c.srv.isDraining()
	trimmed := bytes.TrimLeft(line, " \t\r")
	if trimmed[0] != '[' {
		// Nothing more read: the client waits for this answer, so the backend may run the
		// request right here. With more read, it is queued, to be committed with them.
		p, ok := c.handleRequest(line, draining, c.br.Buffered() == 0)
		if !ok {
			return item{}
		}
		return c.single(p)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(line, &elems); err != nil {
		return c.single(c.errorPart(reasonParseError, "request line is not JSON: "+err.Error(), nil))
	}
	if len(elems) == 0 {
		return c.single(c.errorPart(reasonInvalidRequest, "empty batch", nil))
	}
	it := item{batch: true}
	for _, e := range elems {
		if p, ok := c.handleRequest(e, draining, false); ok {
			it.parts = append(it.parts, p)
		}
	}
	return it
}

func (c *conn) single(p part) item { return item{parts: []part{p}} }

// handleRequest validates one request object and submits it, with SubmitOrRun if run. ok
// is false for a notification, which is owed nothing.
func (c *conn) handleRequest(raw []byte, draining, run bool) (p part, ok bool) {
	// Split, not decoded: params are parsed once, by the backend.
	members, isObject, err := persist.SplitObject(raw, maxLineDepth)
	switch {
	case errors.Is(err, persist.ErrTooDeep):
		return c.errorPart(reasonInvalidRequest, fmt.Sprintf("request nests deeper than %d", maxLineDepth), nil), true
	case err != nil:
		return c.errorPart(reasonParseError, "request line is not JSON: "+err.Error(), nil), true
	case !isObject:
		return c.errorPart(reasonInvalidRequest, "a request must be a JSON object", nil), true
	}
	var id, jsonrpc, methodRaw, params []byte
	var hasID, hasParams bool
	for _, m := range members { // a repeated name: the last value counts
		switch m.Name {
		case "id":
			id, hasID = m.Raw, true
		case "jsonrpc":
			jsonrpc = m.Raw
		case "method":
			methodRaw = m.Raw
		case "params":
			params, hasParams = m.Raw, true
		}
	}
	// The line's buffer is reused for the next line; the answer and the backend keep these.
	id, params = bytes.Clone(id), bytes.Clone(params)
	if hasID && !validID(id) {
		return c.errorPart(reasonInvalidRequest, "id must be a string, a number or null", nil), true
	}
	if v, ok := decodeString(jsonrpc); !ok || v != "2.0" {
		return c.errorPart(reasonInvalidRequest, `jsonrpc must be "2.0"`, nil), true
	}
	method, ok := decodeString(methodRaw)
	if !ok {
		return c.errorPart(reasonInvalidRequest, "method must be a string", nil), true
	}
	if hasParams && (len(params) == 0 || params[0] != '{' && params[0] != '[') {
		return c.errorPart(reasonInvalidRequest, "params must be an object or an array", nil), true
	}
	debug := c.log.Enabled(context.Background(), slog.LevelDebug)

	if !hasID {
		switch {
		case draining:
			if debug {
				c.log.Debug("notification dropped: draining", "method", method)
			}
		case method == "status":
		default:
			// The reply is dropped: the channel is buffered, so the backend never blocks on it.
			c.srv.cfg.Backend.Submit(method, params)
			if debug {
				c.log.Debug("notification", "method", method)
			}
		}
		return part{}, false
	}
	p = part{id: id, method: method, start: time.Now()}
	switch {
	case draining:
		p.reason = actor.ReasonShuttingDown
		p.msg, _ = appendError(nil, id, p.reason, "server is going away; retry on a new connection", nil, false)
	case method == "status":
		result, err := c.srv.status()
		if err != nil {
			c.log.Error("encoding status", "err", err)
			p.msg, _ = appendError(nil, id, actor.ReasonInternal, "encoding status failed", nil, false)
		} else {
			p.msg = appendResult(nil, id, result)
		}
	default:
		if run {
			p.reply = c.srv.cfg.Backend.SubmitOrRun(method, params)
		} else {
			p.reply = c.srv.cfg.Backend.Submit(method, params)
		}
		if p.reply == nil {
			c.log.Error("backend returned no reply channel", "method", method)
			p.msg, _ = appendError(nil, id, actor.ReasonInternal, "request was not queued", nil, false)
		}
	}
	return p, true
}

// errorPart is an answer with id null, for lines that are not requests.
func (c *conn) errorPart(reason, message string, data map[string]any) part {
	msg, _ := appendError(nil, nullID, reason, message, data, false)
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("bad request line", "reason", reason, "err", message)
	}
	return part{id: nullID, msg: msg}
}

// validID reports whether raw (a JSON value) is a string, a number or null.
func validID(raw []byte) bool {
	if len(raw) == 0 {
		return false
	}
	switch c := raw[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return true
	case c == 'n':
		return true // valid JSON starting with n is null
	}
	return false
}

// decodeString decodes raw if it is a JSON string.
func decodeString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// writer is the connection's writing side: it owns the socket's write half and the
// goaway and grace-period timing. Its goroutine holds mu except while it waits for the
// next item; the reader takes mu to answer a line itself (answerNow).
type writer struct {
	mu        sync.Mutex
	err       error // the reader's failed write, once it closed the connection
	c         *conn
	bw        *bufio.Writer
	buf       []byte           // scratch for one message, so the socket only sees whole lines
	drain     <-chan struct{}  // the server's drain signal; nil once goaway was written
	grace     <-chan time.Time // fires GoawayGrace after goaway
	timer     *time.Timer
	graceOver bool
	readShut  bool // graceOver with nothing owed: the socket's read side is shut
}

// loop answers items in order until the reader is done and every answer is written, or
// an error. Once the grace period after goaway is over with nothing owed, it shuts the
// socket's read side: the reader still passes on what it had read (a line it holds, the
// lines in its buffer), which are answered shutting_down, and then ends.
func (w *writer) loop() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		select {
		case <-w.drain:
			// Checked on every item so that a busy pipeline learns of the goaway early.
			if err := w.goaway(); err != nil {
				return err
			}
		default:
		}
		if w.graceOver && len(w.c.slots) == 0 {
			w.shutRead()
		}
		var it item
		var ok bool
		select {
		case it, ok = <-w.c.fifo:
		default:
			// Nothing queued: push out what is buffered before waiting.
			if err := w.bw.Flush(); err != nil {
				return err
			}
			var err error
			if it, ok, err = w.next(); err != nil {
				return err
			}
		}
		if !ok {
			if w.readShut {
				return w.flushed(errGraceOver)
			}
			return w.bw.Flush()
		}
		if err := w.write(it); err != nil {
			return err
		}
		<-w.c.slots
	}
}

// next waits for the next item, handling goaway and the grace timer meanwhile. It lets
// go of mu while it waits, for the reader to answer a line itself; drain and grace are
// only ever changed on this goroutine.
func (w *writer) next() (item, bool, error) {
	for {
		w.mu.Unlock()
		select {
		case it, ok := <-w.c.fifo:
			w.mu.Lock()
			return it, ok, nil
		case <-w.drain:
			if testHookWriterDrain != nil {
				testHookWriterDrain()
			}
			w.mu.Lock()
			if err := w.goaway(); err != nil {
				return item{}, false, err
			}
		case <-w.grace:
			w.mu.Lock()
			w.grace, w.graceOver = nil, true
			if len(w.c.slots) == 0 {
				w.shutRead()
			}
		case <-w.c.done:
			w.mu.Lock()
			return item{}, false, cmp.Or(w.err, errConnClosed)
		}
	}
}

// await waits for a backend reply, handling goaway and the grace timer meanwhile.
func (w *writer) await(ch <-chan actor.Reply) (actor.Reply, error) {
	select {
	case r := <-ch:
		return r, nil
	default:
	}
	if err := w.bw.Flush(); err != nil {
		return actor.Reply{}, err
	}
	for {
		select {
		case r := <-ch:
			return r, nil
		case <-w.drain:
			if err := w.goaway(); err != nil {
				return actor.Reply{}, err
			}
		case <-w.grace:
			w.grace, w.graceOver = nil, true // an answer is still owed: keep going
		case <-w.c.done:
			return actor.Reply{}, errConnClosed
		}
	}
}

// shutRead ends the reading once the grace period is over and nothing is owed. Closing
// the connection instead could drop a line the reader has just read, before it took the
// line's slot, unanswered.
func (w *writer) shutRead() {
	if !w.readShut {
		w.readShut = true
		_ = w.c.nc.CloseRead()
	}
}

// goaway writes the goaway notification at once and starts the grace timer.
func (w *writer) goaway() error {
	w.drain = nil
	w.timer = time.NewTimer(w.c.srv.cfg.GoawayGrace)
	w.grace = w.timer.C
	msg := appendGoaway(nil, w.c.srv.goawayReason())
	if _, err := w.bw.Write(append(msg, '\n')); err != nil {
		return err
	}
	return w.bw.Flush()
}

func (w *writer) stopTimer() {
	if w.timer != nil {
		w.timer.Stop()
	}
}

// flushed returns err unless flushing fails first.
func (w *writer) flushed(err error) error {
	if ferr := w.bw.Flush(); ferr != nil {
		return ferr
	}
	return err
}

// write encodes and writes everything one line is owed.
func (w *writer) write(it item) error {
	if it.raw != nil {
		_, err := w.bw.Write(it.raw)
		return err
	}
	b, err := w.encode(it)
	if err != nil || b == nil {
		return err
	}
	_, err = w.bw.Write(b)
	return err
}

// encode encodes everything one line is owed into w.buf; nil when it is owed nothing.
func (w *writer) encode(it item) ([]byte, error) {
	if len(it.parts) == 0 {
		return nil, nil
	}
	if cap(w.buf) > keepBufSize {
		w.buf = nil
	}
	w.buf = w.buf[:0]
	if it.batch {
		w.buf = append(w.buf, '[')
	}
	for i, p := range it.parts {
		if i > 0 {
			w.buf = append(w.buf, ',')
		}
		var err error
		if w.buf, err = w.appendPart(w.buf, p); err != nil {
			return nil, err
		}
	}
	if it.batch {
		w.buf = append(w.buf, ']')
	}
	w.buf = append(w.buf, '\n')
	return w.buf, nil
}

// appendPart appends one answer, waiting for the backend if need be.
func (w *writer) appendPart(b []byte, p part) ([]byte, error) {
	if p.msg != nil {
		w.logAnswer(p, p.reason)
		return append(b, p.msg...), nil
	}
	r, err := w.await(p.reply)
	if err != nil {
		return b, err
	}
	c := w.c
	switch {
	case r.Err != nil:
		reason := r.Err.Reason
		if _, known := wireErrors[reason]; !known {
			c.log.Error("backend error with unknown reason", "reason", reason, "message", r.Err.Message, "method", p.method)
			reason = actor.ReasonInternal
		}
		b, err = appendError(b, p.id, reason, r.Err.Message, r.Err.Data, r.Err.Executed)
		if err != nil {
			c.log.Error("encoding error data", "method", p.method, "err", err)
		}
		w.logAnswer(p, reason)
		return b, nil
	case len(r.Result) == 0:
		c.log.Error("backend reply with neither result nor error", "method", p.method)
		b, _ = appendError(b, p.id, actor.ReasonInternal, "empty reply", nil, false)
		w.logAnswer(p, actor.ReasonInternal)
		return b, nil
	case bytes.IndexByte(r.Result, '\n') >= 0:
		// A raw newline would cut the message in two; only whitespace can hold one.
		var compact bytes.Buffer
		if err := json.Compact(&compact, r.Result); err != nil {
			c.log.Error("backend result is not JSON", "method", p.method, "err", err)
			b, _ = appendError(b, p.id, actor.ReasonInternal, "invalid result", nil, false)
			w.logAnswer(p, actor.ReasonInternal)
			return b, nil
		}
		r.Result = compact.Bytes()
	}
	w.logAnswer(p, "")
	return appendResult(b, p.id, r.Result), nil
}

func (w *writer) logAnswer(p part, reason string) {
	if p.method == "" || !w.c.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	w.c.log.Debug("request", "method", p.method, "id", string(p.id), "reason", reason, "dur", time.Since(p.start))
}

// idleReader reads from the connection with IdleTimeout as the read deadline, except while
// answers are owed: a client waiting for a slow write is not idle.
type idleReader struct{ c *conn }

func (r *idleReader) Read(p []byte) (int, error) {
	for {
		_ = r.c.nc.SetReadDeadline(time.Now().Add(r.c.srv.cfg.IdleTimeout))
		n, err := r.c.nc.Read(p)
		if n == 0 && isTimeout(err) {
			if len(r.c.slots) > 0 {
				continue
			}
			return 0, errIdle
		}
		return n, err
	}
}

// stallWriter writes to the connection and fails only when the client has taken none of
// our bytes for timeout: a slow reader is served, a stalled one is dropped.
type stallWriter struct {
	nc      *net.UnixConn
	timeout time.Duration
}

func (w *stallWriter) Write(p []byte) (int, error) {
	written := 0
	for {
		_ = w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
		n, err := w.nc.Write(p[written:])
		written += n
		if err == nil || n == 0 || !isTimeout(err) {
			return written, err
		}
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}
