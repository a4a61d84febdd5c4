package ipc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"sessiond/actor"
)

// Backend is the store behind the socket (actor.Actor in the daemon, a fake in tests).
type Backend interface {
	// Submit parses and validates params, queues the request and returns at once; exactly one Reply arrives
	// on the channel (buffered). It never blocks (a full queue is answered with reason busy). Goroutine-safe.
	Submit(method string, params []byte) <-chan actor.Reply
	// SubmitOrRun is Submit for a connection that has read nothing after this request:
	// the backend may run it on the calling goroutine and return once it is answered.
	SubmitOrRun(method string, params []byte) <-chan actor.Reply
	// Stats reports the store's numbers for the status method. Goroutine-safe, may block briefly.
	Stats() actor.Stats
}

// Defaults for the zero values of ServerConfig.
const (
	DefaultMaxRequestBytes = 16 << 20
	DefaultMaxPending      = 1024
	DefaultMaxConns        = 1024
	DefaultIdleTimeout     = 5 * time.Minute
	DefaultWriteTimeout    = 10 * time.Second
	DefaultGoawayGrace     = 2 * time.Second

	// minGoawayGrace is the contract's promise: a client has at least this long after goaway.
	minGoawayGrace = time.Second
	// busyRetryAfter is the retry_after_ms sent to a connection over MaxConns.
	busyRetryAfter = 100 * time.Millisecond
)

// ServerConfig configures a Server. Zero values take the Default constants.
type ServerConfig struct {
	Backend Backend
	Logger  *slog.Logger // narrowed with component=ipc; nil discards

	// Reported by the status method. PID 0 means os.Getpid(), Generation 0 means 1,
	// a zero Started means the time NewServer was called.
	Version    string
	PID        int
	Generation int
	Started    time.Time
	Socket     string // the socket path
	// Restarts reports the SIGUSR1 restarts that did not go ahead, for status; nil: none.
	Restarts func() RestartStatus

	// MaxRequestBytes is the longest request line (without its newline); a longer line is
	// answered with too_large and skipped.
	MaxRequestBytes int
	// MaxPending is how many lines of one connection may be read but not yet answered; at the
	// limit the server stops reading that connection until answers drain. A batch is one line.
	MaxPending int
	// MaxConns is how many connections are served at once; one more gets busy and is closed.
	MaxConns int
	// AllowUIDs and AllowGIDs may connect besides root and the daemon's own uid. The gid is
	// the peer's effective gid (SO_PEERCRED), not its supplementary groups.
	AllowUIDs, AllowGIDs []int
	// IdleTimeout closes a connection that owes no answers and has received no byte for this
	// long; it also ends a half line that stalls.
	IdleTimeout time.Duration
	// WriteTimeout closes a connection whose client has not taken any of our bytes for this
	// long, so a client that stops reading costs bounded memory.
	WriteTimeout time.Duration
	// GoawayGrace is how long a connection stays open after goaway once it owes no answers;
	// values under one second are raised to one second (the contract's minimum).
	GoawayGrace time.Duration
}

// RestartStatus is what status says of restarts that were refused (preflight, flush or
// execve failed) while the old image kept serving.
type RestartStatus struct {
	LastError string // why the last one failed; "" once one succeeded
	Failed    int    // how many failed in this process's life
}

// Server serves the protocol on a Unix listener. Its methods are goroutine-safe.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	// allowPeer decides who may connect; a field so that tests can refuse their own uid.
	allowPeer func(uid, gid int) bool

	drain   chan struct{} // closed by the first Shutdown: connections send goaway, refuse new requests
	stopped chan struct{} // closed once a Shutdown has seen every connection closed

	mu       sync.Mutex
	ln       *net.UnixListener // the listener Serve accepts on; nil outside Serve
	draining bool
	reason   string             // the goaway reason; written before drain is closed
	forced   bool               // Shutdown gave up waiting: close whatever is still accepted
	conns    map[*conn]struct{} // open connections
	nextConn uint64             // connection ids, for the logs
	wg       sync.WaitGroup     // Serve's accept loop and every connection
	idle     chan struct{}      // closed when wg is done after draining began
	stopOnce sync.Once
}

// NewServer returns a Server for cfg. A nil Backend is a wiring bug and panics. It does not block.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Backend == nil {
		panic("ipc: ServerConfig.Backend is nil")
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.GoawayGrace <= 0 {
		cfg.GoawayGrace = DefaultGoawayGrace
	}
	cfg.GoawayGrace = max(cfg.GoawayGrace, minGoawayGrace)
	if cfg.PID == 0 {
		cfg.PID = os.Getpid()
	}
	if cfg.Generation == 0 {
		cfg.Generation = 1
	}
	if cfg.Started.IsZero() {
		cfg.Started = time.Now()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:       cfg,
		log:       log.With("component", "ipc"),
		allowPeer: peerPolicy(os.Getuid(), cfg.AllowUIDs, cfg.AllowGIDs),
		drain:     make(chan struct{}),
		stopped:   make(chan struct{}),
		conns:     make(map[*conn]struct{}),
	}
}

// peerPolicy is the default allowPeer: root, the daemon's own uid, and the configured ids.
func peerPolicy(self int, uids, gids []int) func(uid, gid int) bool {
	uids, gids = slices.Clone(uids), slices.Clone(gids)
	return func(uid, gid int) bool {
		return uid == 0 || uid == self || slices.Contains(uids, uid) || slices.Contains(gids, gid)
	}
}

// Serve accepts connections on ln until Shutdown. It blocks, and returns nil once Shutdown
// has completed (at once if Shutdown came first). It never closes ln: after Shutdown, new
// connections wait in ln's backlog for whoever accepts next (a re-exec'd successor, or
// another Serve). An accept error other than a transient one is returned; connections
// already open keep being served until Shutdown. Serve clears any deadline on ln.
func (s *Server) Serve(ln *net.UnixListener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return nil
	}
	if s.ln != nil {
		s.mu.Unlock()
		return errors.New("ipc: Serve called while already serving")
	}
	if err := ln.SetDeadline(time.Time{}); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	s.ln = ln
	s.wg.Add(1)
	s.mu.Unlock()

	s.log.Info("serving", "socket", s.cfg.Socket)
	err := s.accept(ln)
	s.mu.Lock()
	s.ln = nil
	s.mu.Unlock()
	s.wg.Done()
	if err != nil {
		return err
	}
	<-s.stopped
	return nil
}

// accept runs the accept loop; it returns nil when draining begins.
func (s *Server) accept(ln *net.UnixListener) error {
	var backoff time.Duration
	for {
		nc, err := ln.AcceptUnix()
		if err != nil {
			if s.isDraining() {
				return nil
			}
			if !transientAcceptError(err) {
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors or memory: retrying at once would spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed, retrying", "err", err, "backoff", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.drain:
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		s.admit(nc)
	}
}

func transientAcceptError(err error) bool {
	for _, errno := range []syscall.Errno{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EINTR} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// admit checks a new connection's peer and the connection limit, then starts serving it.
func (s *Server) admit(nc *net.UnixConn) {
	cred, err := peerCred(nc)
	if err != nil || !s.allowPeer(int(cred.Uid), int(cred.Gid)) {
		if err != nil {
			s.log.Warn("connection refused: reading peer credentials", "err", err)
		} else {
			s.log.Warn("connection refused: peer not allowed", "uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid)
		}
		msg, _ := appendError(nil, nullID, reasonPermissionDenied, "peer is not allowed to connect", nil, false)
		s.reject(nc, msg)
		return
	}

	s.mu.Lock()
	if s.forced {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	if len(s.conns) >= s.cfg.MaxConns {
		s.mu.Unlock()
		s.log.Warn("connection refused: too many connections", "max_conns", s.cfg.MaxConns, "uid", cred.Uid, "pid", cred.Pid)
		msg, _ := appendError(nil, nullID, actor.ReasonBusy,
			fmt.Sprintf("too many connections (max %d)", s.cfg.MaxConns),
			map[string]any{"retry_after_ms": busyRetryAfter.Milliseconds()}, false)
		s.reject(nc, msg)
		return
	}
	s.nextConn++
	c := newConn(s, nc, s.nextConn, cred)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go c.serve()
}

// reject sends msg on a connection we will not serve, and closes it. The write cannot block
// for long: nothing else was ever written to this socket.
func (s *Server) reject(nc *net.UnixConn, msg []byte) {
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = nc.Write(append(msg, '\n'))
	_ = nc.Close()
}

func peerCred(nc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := nc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: %w", credErr)
	}
	return cred, nil
}

// remove forgets a connection that has closed.
func (s *Server) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) isDraining() bool {
	select {
	case <-s.drain:
		return true
	default:
		return false
	}
}

// Shutdown stops accepting without closing the listener, so that new connections wait in
// the kernel backlog for a successor. It sends goaway with reason ("restart" or "shutdown")
// on every connection; each keeps answering what it had read and refuses anything read
// later with shutting_down. A connection closes when its client closes its side, or
// GoawayGrace after the goaway once it owes no answers. Shutdown blocks until every
// connection is closed and returns nil; if ctx ends first it closes the remaining
// connections (requests in flight go unanswered) and returns ctx's error. Idempotent and
// goroutine-safe: later calls wait for the same completion; the reason of the first wins.
func (s *Server) Shutdown(ctx context.Context, reason string) error {
	s.mu.Lock()
	if !s.draining {
		s.draining = true
		s.reason = reason
		close(s.drain)
		if s.ln != nil {
			// Breaks Accept. Closing ln instead would unlink the socket or refuse the
			// connections queued for the successor.
			_ = s.ln.SetDeadline(time.Now())
		}
		s.idle = make(chan struct{})
		go func(idle chan struct{}) {
			s.wg.Wait()
			close(idle)
		}(s.idle)
		s.log.Info("draining", "reason", reason, "connections", len(s.conns))
	}
	idle := s.idle
	s.mu.Unlock()

	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		n := s.forceClose()
		s.log.Warn("shutdown timed out, closing connections", "connections", n)
		<-idle
		err = fmt.Errorf("shutdown ipc server: %w", ctx.Err())
	}
	s.stopOnce.Do(func() {
		s.log.Info("stopped")
		close(s.stopped)
	})
	return err
}

// forceClose closes every connection and makes admit close any that Accept still returns.
func (s *Server) forceClose() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forced = true
	for c := range s.conns {
		c.close()
	}
	return len(s.conns)
}

// Phase is "serving" until Shutdown is called, then "draining". Goroutine-safe, does not block.
func (s *Server) Phase() string {
	if s.isDraining() {
		return "draining"
	}
	return "serving"
}

// Conns is the number of open connections. Goroutine-safe, does not block.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// goawayReason is the reason given to Shutdown; valid once drain is closed.
func (s *Server) goawayReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// status builds the status result. It blocks while Backend.Stats does.
func (s *Server) status() ([]byte, error) {
	st := s.cfg.Backend.Stats()
	var restart RestartStatus
	if s.cfg.Restarts != nil {
		restart = s.cfg.Restarts()
	}
	return encodeValue(Status{
		Protocol:        1,
		Version:         s.cfg.Version,
		PID:             s.cfg.PID,
		Generation:      int64(s.cfg.Generation),
		Phase:           s.Phase(),
		Rev:             st.Rev,
		DurableRev:      st.DurableRev,
		SnapshotRev:     st.SnapshotRev,
		Entries:         st.Entries,
		Bytes:           st.Bytes,
		Connections:     s.Conns(),
		Queue:           st.Queue,
		DedupWindowMS:   st.DedupWindow,
		UptimeMS:        time.Since(s.cfg.Started).Milliseconds(),
		Store:           st.Store,
		Socket:          s.cfg.Socket,
		Degraded:        st.Degraded,
		ExternalChanges: st.External,
		RestartError:    restart.LastError,
		RestartsFailed:  restart.Failed,
	})
}
