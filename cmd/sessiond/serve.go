package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

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
	fl.IntVar(&a.MaxBatch, "max-batch", 1024, "requests made durable by one fsync at most")
	fl.IntVar(&a.MaxValueBytes, "max-value-bytes", 16<<20, "largest entry (encoded) in bytes; larger gets too_large")
	fl.IntVar(&a.MaxDepth, "max-depth", 64, "deepest JSON nesting accepted in a request's params")
	fl.DurationVar(&a.SnapshotInterval, "snapshot-interval", time.Second, "rewrite sessions.json at most this long after a change (negative: only on flush and stop)")
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
	return c, nil
}

// serve runs the daemon until a signal stops it.
func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseServe(args, stderr)
	if cfg == nil || err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFmt)
	if err != nil {
		return err
	}
	start := time.Now()
	// Signals first: one that arrives while the store loads must not kill the process
	// with the default action halfway through.
	sig := signals.New(log)
	defer sig.Close()

	if fi, err := os.Stat(filepath.Dir(cfg.store)); err != nil || !fi.IsDir() {
		return fmt.Errorf("store directory %s does not exist", filepath.Dir(cfg.store))
	}
	owner, err := persist.Acquire(cfg.store + ".owner")
	if err != nil {
		return err
	}
	defer owner.Close()
	warnLegacyLock(log, cfg.store+".lock")

	// Listen before loading: clients that connect meanwhile wait in the backlog.
	ln, err := ipc.Listen(cfg.socket)
	if err != nil {
		return err
	}
	defer ln.Close() // unlinks the socket path

	cfg.actor.Store, cfg.actor.Logger = cfg.store, log
	act, err := actor.Open(cfg.actor)
	if err != nil {
		return err
	}
	cfg.server.Backend, cfg.server.Logger = act, log
	cfg.server.Version, cfg.server.PID, cfg.server.Generation = version, os.Getpid(), 1
	cfg.server.Started, cfg.server.Socket = start, cfg.socket
	srv := ipc.NewServer(cfg.server)

	// Shutdown order: the signal ends the group; the server sends goaway, answers
	// everything it read (the actor is still running for that) and closes its
	// connections; only then is the actor stopped, which answers anything still queued
	// and writes the final snapshot. run.Group calls interrupts in the order the actors
	// were added and the server's interrupt blocks until it has drained, which is what
	// makes this order hold.
	var g rungroup.Group
	g.Add(sig.Run, sig.Interrupt)
	g.Add(func() error {
		return srv.Serve(ln)
	}, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
		defer cancel()
		log.Info("stopping server: goaway sent, answering what was read", "connections", srv.Conns())
		if err := srv.Shutdown(ctx, "shutdown"); err != nil {
			log.Error("server did not drain in time; closed remaining connections", "err", err)
		}
		log.Info("server stopped")
	})
	actx, stopActor := context.WithCancel(context.Background())
	g.Add(func() error {
		return act.Run(actx)
	}, func(error) {
		stopActor()
	})
	log.Info("sessiond ready", "version", version, "pid", os.Getpid(), "store", cfg.store,
		"socket", cfg.socket, "startup", time.Since(start).Round(time.Millisecond))
	err = g.Run()
	var se *signals.Error
	if errors.As(err, &se) {
		log.Info("sessiond stopped", "signal", se.Signal.String(), "uptime", time.Since(start).Round(time.Millisecond))
		return nil
	}
	return err
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
