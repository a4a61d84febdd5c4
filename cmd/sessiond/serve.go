package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	rungroup "github.com/oklog/run"

	"sessiond/actor"
	"sessiond/ipc"
	"sessiond/persist"
	"sessiond/signals"
)

// serveConfig is everything `sessiond serve` is told on its command line.
type serveConfig struct {
	store, socket      string
	logLevel, logFmt   string
	actor              actor.Config
	server             ipc.ServerConfig
	shutdownTimeout    time.Duration
	check              bool
	allowUID, allowGID intList
}

func parseServe(args []string, stderr io.Writer) (*serveConfig, error) {
	c := &serveConfig{}
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprint(stderr, `Usage: sessiond serve [flags]

Runs the daemon that owns one session index: it loads sessions.json and its journal,
listens on a Unix socket (mode 0600) and applies every request in order. Each
acknowledged write is durable (one journal fsync per batch); sessions.json is rewritten
atomically in the background. SIGTERM/SIGINT: answer what was read, write the final
snapshot, remove the socket, exit 0. SIGUSR1: flush and re-exec in place.

Files beside the store: STORE.journal (write-ahead journal), STORE.owner (kernel lock
held while running; never needs deleting), STORE.sock (default socket).

Flags:
`)
		fl.PrintDefaults()
	}
	fl.StringVar(&c.store, "store", "sessions.json", "path of the session index")
	fl.StringVar(&c.socket, "socket", "", "Unix socket path (default: the store path + .sock)")
	fl.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&c.logFmt, "log-format", "auto", "auto (colour on a terminal), text or json")
	a, s := &c.actor, &c.server
	fl.IntVar(&a.QueueSize, "queue-size", 4096, "requests queued for the store at most; beyond, clients get busy")
	fl.IntVar(&a.MaxBatch, "max-batch", 1024, "requests made durable by one fsync at most (a batch also stops taking requests at 4 MiB of journal)")
	fl.IntVar(&a.MaxValueBytes, "max-value-bytes", 16<<20, "largest entry (encoded) in bytes; larger gets too_large")
	fl.IntVar(&a.MaxDepth, "max-depth", 64, "deepest JSON nesting accepted in a request's params")
	fl.DurationVar(&a.SnapshotInterval, "snapshot-interval", time.Second, "rewrite sessions.json at most this long after a change (negative: only on flush and stop)")
	snapRate := fl.Float64("snapshot-rate", actor.DefaultSnapshotRate/1e6, "write background snapshots and journal rewrites at most this many MB a second, so that durable writes' fsyncs do not queue behind them (0: no limit); one a flush or stop waits for goes at full speed")
	fl.DurationVar(&a.SyncInterval, "sync-interval", time.Second, "durable:false writes reach the disk within this")
	fl.DurationVar(&a.DedupWindow, "dedup-window", 5*time.Minute, "request_id records are kept at least this long...")
	fl.IntVar(&a.DedupMax, "dedup-max", 1_000_000, "...unless more than this many")
	fl.IntVar(&s.MaxRequestBytes, "max-request-bytes", ipc.DefaultMaxRequestBytes, "longest request line; longer gets too_large")
	fl.IntVar(&s.MaxPending, "max-pending", ipc.DefaultMaxPending, "requests of one connection read but not yet answered, at most")
	fl.IntVar(&s.MaxConns, "max-conns", ipc.DefaultMaxConns, "connections at once; one more gets busy and is closed")
	fl.DurationVar(&s.IdleTimeout, "idle-timeout", ipc.DefaultIdleTimeout, "close a connection silent this long (also a stalled half line)")
	fl.DurationVar(&s.WriteTimeout, "write-timeout", ipc.DefaultWriteTimeout, "close a connection whose client stops reading for this long")
	fl.DurationVar(&s.GoawayGrace, "goaway-grace", ipc.DefaultGoawayGrace, "how long a connection stays open after goaway (at least 1s)")
	fl.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "longest wait for clients to finish when stopping")
	fl.BoolVar(&c.check, "check", false, "only check that the store and journal load (read-only) and exit; what SIGUSR1 runs before re-exec")
	fl.Var(&c.allowUID, "allow-uid", "also allow these uids to connect (comma-separated, repeatable); root and our own uid always may")
	fl.Var(&c.allowGID, "allow-gid", "also allow peers with these effective gids")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: serve: %v", errUsage, err)
	}
	if fl.NArg() > 0 {
		return nil, fmt.Errorf("%w: serve takes no arguments, got %q", errUsage, fl.Args())
	}
	var err error
	if c.store, err = filepath.Abs(c.store); err != nil {
		return nil, err
	}
	if c.socket == "" {
		c.socket = c.store + ".sock"
	}
	if c.socket, err = filepath.Abs(c.socket); err != nil {
		return nil, err
	}
	s.AllowUIDs, s.AllowGIDs = c.allowUID, c.allowGID
	switch {
	case *snapRate < 0:
		return nil, fmt.Errorf("%w: serve: --snapshot-rate must not be negative, got %g", errUsage, *snapRate)
	case *snapRate == 0:
		a.SnapshotRate = -1 // no limit
	default:
		a.SnapshotRate = *snapRate * 1e6
	}
	return c, nil
}

// serve runs the daemon until a signal stops it, re-exec'ing in place on SIGUSR1.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServe(args, stderr)
	if cfg == nil || err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFmt)
	if err != nil {
		return err
	}
	if cfg.check {
		return check(cfg, log, stdout)
	}
	start := time.Now()
	// Signals first: one that arrives while the store loads must not kill the process
	// with the default action halfway through.
	sig := signals.New(log)
	ho, err := takeHandover()
	if err != nil {
		return err
	}
	// The path, not /proc/self/exe: a restart runs whatever binary is at the path then.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	d := &daemon{cfg: cfg, args: args, log: log, sig: sig, exe: exe, started: start, generation: 1}
	if ho != nil {
		d.generation, d.started = ho.generation, ho.started
	}
	if err := d.open(ho); err != nil {
		return err
	}
	return d.run(ho)
}

// check is `serve --check`: the preflight a running daemon asks of the binary it is about
// to re-exec. It loads the store read-only and writes nothing.
func check(cfg *serveConfig, log *slog.Logger, stdout io.Writer) error {
	cfg.actor.Store, cfg.actor.Logger = cfg.store, log
	st, err := actor.Check(cfg.actor)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	fmt.Fprintf(stdout, "{\"version\":%q,\"entries\":%d,\"rev\":%d}\n", version, st.Entries, st.Rev)
	return nil
}

// daemon is one store's serving process across its restarts.
type daemon struct {
	cfg        *serveConfig
	args       []string // serve's own arguments, for the preflight and the exec
	log        *slog.Logger
	sig        *signals.Handler
	exe        string
	started    time.Time
	generation int

	owner *persist.Owner
	ln    *net.UnixListener
	act   *actor.Actor

	mu       sync.Mutex
	restarts ipc.RestartStatus
}

// open takes ownership, the socket and the store, fresh or handed over by the previous
// image of this process.
func (d *daemon) open(ho *handover) (err error) {
	cfg := d.cfg
	if fi, err := os.Stat(filepath.Dir(cfg.store)); err != nil || !fi.IsDir() {
		return fmt.Errorf("store directory %s does not exist", filepath.Dir(cfg.store))
	}
	if d.owner, err = takeOwnership(cfg.store+".owner", ho); err != nil {
		return err
	}
	if ho == nil {
		warnLegacyLock(d.log, cfg.store+".lock")
		// Listen before loading: clients that connect meanwhile wait in the backlog.
		d.ln, err = ipc.Listen(cfg.socket)
	} else {
		d.ln, err = adoptListener(ho.listenFD, cfg.socket)
	}
	if err != nil {
		d.owner.Close()
		return err
	}
	// The socket path is removed by a stop, never by a Close on the way to an exec.
	d.ln.SetUnlinkOnClose(false)
	cfg.actor.Store, cfg.actor.Logger = cfg.store, d.log
	if d.act, err = actor.Open(cfg.actor); err != nil {
		d.ln.Close()
		if ho == nil {
			os.Remove(cfg.socket)
		}
		d.owner.Close()
		return err
	}
	return nil
}

// run serves until a stop; each SIGUSR1 that passes its checks ends in execve, and one
// that does not resumes serving here.
func (d *daemon) run(ho *handover) error {
	ready := "READY=1\nSTATUS=serving, generation " + strconv.Itoa(d.generation) + ", version " + version
	sdNotify(d.log, ready)
	if ho == nil {
		d.log.Info("sessiond ready", "version", version, "pid", os.Getpid(), "generation", d.generation,
			"store", d.cfg.store, "socket", d.cfg.socket, "startup", time.Since(d.started).Round(time.Millisecond))
	} else {
		d.log.Info("sessiond ready after restart", "version", version, "pid", os.Getpid(), "generation", d.generation,
			"store", d.cfg.store, "socket", d.cfg.socket, "since_signal", time.Since(ho.signaled).Round(time.Microsecond))
	}
	stopNow := ho != nil && ho.stop
	for {
		why, signaled, actErr := d.serveUntilSignal(stopNow)
		if !errors.Is(why, signals.ErrRestart) {
			return d.shutdown(why, actErr) // a stop, or a component that ended by itself
		}
		// A restart: the server has drained and the actor has stopped. Signals that
		// arrive from now on are coalesced into this restart.
		absorbDone, absorbed := make(chan struct{}), make(chan bool, 1)
		go func() { absorbed <- d.sig.Absorb(absorbDone) }()
		stopAbsorbing := func() bool {
			close(absorbDone)
			return <-absorbed
		}
		var err error
		if actErr != nil {
			err = fmt.Errorf("final flush failed, not re-executing: %w", actErr)
			stopNow = stopAbsorbing()
		} else {
			// Returns only when execve failed.
			stopNow, err = d.exec(signaled, stopAbsorbing)
		}
		d.restartFailed(err)
	}
}

// serveUntilSignal runs the server and the actor until a stop or a restart signal that
// passed its preflight. It returns the signal's error, when it arrived, and the actor's
// error (a failed final snapshot).
func (d *daemon) serveUntilSignal(stopNow bool) (why error, signaled time.Time, actErr error) {
	cfg := d.cfg.server
	cfg.Backend, cfg.Logger = d.act, d.log
	cfg.Version, cfg.PID, cfg.Generation = version, os.Getpid(), d.generation
	cfg.Started, cfg.Socket = d.started, d.cfg.socket
	cfg.Restarts = d.restartStatus
	srv := ipc.NewServer(cfg)

	// Shutdown order: the signal ends the group; the server sends goaway, answers
	// everything it read (the actor is still running for that) and closes its
	// connections; only then is the actor stopped, which answers anything still queued
	// and writes the final snapshot. run.Group calls interrupts in the order the actors
	// were added and the server's interrupt blocks until it has drained, which is what
	// makes this order hold.
	var g rungroup.Group
	sigRun, sigInterrupt := d.sig.Actor()
	g.Add(func() error {
		if stopNow {
			return &signals.Error{Signal: syscall.SIGTERM}
		}
		for {
			err := sigRun()
			if !errors.Is(err, signals.ErrRestart) {
				return err
			}
			signaled = time.Now()
			if perr := d.prepareRestart(); perr != nil {
				d.restartFailed(perr)
				continue
			}
			return err
		}
	}, sigInterrupt)
	g.Add(func() error {
		return srv.Serve(d.ln)
	}, func(err error) {
		reason := "shutdown"
		if errors.Is(err, signals.ErrRestart) {
			reason = "restart"
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.shutdownTimeout)
		defer cancel()
		start := time.Now()
		d.log.Info("stopping server: goaway sent, answering what was read", "reason", reason, "connections", srv.Conns())
		if err := srv.Shutdown(ctx, reason); err != nil {
			d.log.Error("server did not drain in time; closed remaining connections", "err", err)
		}
		d.log.Info("server stopped", "took", time.Since(start).Round(time.Microsecond))
	})
	d.act.Resume() // after a restart that did not go ahead
	actx, stopActor := context.WithCancel(context.Background())
	g.Add(func() error {
		actErr = d.act.Run(actx)
		return actErr
	}, func(error) {
		stopActor()
	})
	why = g.Run()
	stopActor()
	return why, signaled, actErr
}

// prepareRestart runs while the old image still serves: the binary now at the path must
// pass its check on this store, and sessions.json must be flushable (a failing disk is
// found before anything is torn down).
func (d *daemon) prepareRestart() error {
	sdNotify(d.log, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=restarting", monotonicUsec()))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.shutdownTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.exe, append([]string{"serve", "--check"}, d.args...)...)
	// A preflight that outlives the timeout is killed with anything it started (its own
	// process group), and a child that still holds its output cannot hold the restart up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Env = envWithout(os.Environ(), "NOTIFY_SOCKET")
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errOut.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		if msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return fmt.Errorf("preflight of %s failed: %w", d.exe, err)
	}
	d.log.Info("preflight passed", "binary", d.exe, "result", strings.TrimSpace(out.String()),
		"took", time.Since(start).Round(time.Microsecond))
	for {
		r := <-d.act.Submit("flush", nil)
		switch {
		case r.Err == nil:
			return nil
		case r.Err.Reason == actor.ReasonBusy && ctx.Err() == nil:
			time.Sleep(10 * time.Millisecond) // the queue is full: let it drain, as any client would
		default:
			return fmt.Errorf("flush before restart failed: %w", r.Err)
		}
	}
}

// exec replaces the process image with the binary at the path, handing over the
// listening socket and the ownership lock. It returns only if execve failed, with
// everything restored so that serving can resume, and whether a stop arrived meanwhile.
func (d *daemon) exec(signaled time.Time, stopAbsorbing func() bool) (stop bool, err error) {
	lnFile, err := d.ln.File()
	if err != nil {
		return stopAbsorbing(), fmt.Errorf("listener descriptor: %w", err)
	}
	defer lnFile.Close() // reached only when execve failed
	lockFD := d.owner.File().Fd()
	if err := inheritable(lnFile.Fd()); err != nil {
		return stopAbsorbing(), fmt.Errorf("listener descriptor: %w", err)
	}
	if err := inheritable(lockFD); err != nil {
		return stopAbsorbing(), fmt.Errorf("lock descriptor: %w", err)
	}
	defer unix.CloseOnExec(int(lockFD))
	// From here to the new image's handler, SIGUSR1 is ignored; a SIGTERM still queued
	// is carried over, one that arrives after this ends the process (the journal has
	// every acknowledged write, the next start replaces the stale socket).
	d.sig.Close()
	stop = stopAbsorbing()
	stop = d.sig.Leftover() || stop
	h := handover{listenFD: int(lnFile.Fd()), lockFD: int(lockFD), generation: d.generation + 1,
		started: d.started, signaled: signaled, stop: stop}
	env := append(envWithout(os.Environ(), handoverEnv), handoverEnv+"="+h.encode())
	d.log.Info("re-executing", "binary", d.exe, "generation", h.generation,
		"since_signal", time.Since(signaled).Round(time.Microsecond))
	err = syscall.Exec(d.exe, append([]string{os.Args[0], "serve"}, d.args...), env)
	d.sig = signals.New(d.log)
	return stop, fmt.Errorf("execve %s: %w", d.exe, err)
}

func (d *daemon) restartFailed(err error) {
	d.mu.Lock()
	d.restarts.LastError = err.Error()
	d.restarts.Failed++
	d.mu.Unlock()
	d.log.Error("restart did not go ahead; still serving with the old image", "err", err)
	sdNotify(d.log, "READY=1\nSTATUS=restart failed, still serving: "+err.Error())
}

func (d *daemon) restartStatus() ipc.RestartStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restarts
}

// shutdown is the end of a stop: the server has drained and the actor has written the
// final snapshot (or said why not).
func (d *daemon) shutdown(why, actErr error) error {
	sdNotify(d.log, "STOPPING=1")
	d.ln.Close()
	if err := os.Remove(d.cfg.socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.log.Warn("could not remove the socket file", "err", err)
	}
	cerr := d.act.Close()
	d.owner.Close()
	d.sig.Close()
	var se *signals.Error
	if !errors.As(why, &se) {
		return why
	}
	if actErr != nil {
		return actErr
	}
	if cerr != nil {
		return cerr
	}
	d.log.Info("sessiond stopped", "signal", se.Signal.String(), "uptime", time.Since(d.started).Round(time.Millisecond))
	return nil
}

// warnLegacyLock reports a sessions.json.lock left by the old file-lock writers. sessiond
// neither uses nor waits on it; the warning is for the operator who wonders why it is
// there.
func warnLegacyLock(log *slog.Logger, path string) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if len(b) > 200 {
		b = b[:200]
	}
	log.Warn("legacy lock file found; sessiond does not use or wait on it (writers that still take it should go through sessiond)",
		"path", path, "content", string(b))
}
