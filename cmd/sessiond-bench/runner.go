package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// storeTemplate is a generated store that every run of its shape starts from a copy of.
type storeTemplate struct {
	path     string
	keysFile string // the keys, one a line, for the baseline writers
	size     int64
	ws       *workSet
}

// env is what the runs share: the binaries, the working directory, the stores.
type env struct {
	cfg        *config
	workdir    string
	ownWorkdir bool
	daemonBin  string
	exe        string // this program, re-executed as baseline writers
	stores     map[string]*storeTemplate
	stderr     io.Writer
	seq        int
}

// newEnv prepares the working directory and the daemon binary (building it unless
// -sessiond names one). Blocks for the build.
func newEnv(ctx context.Context, cfg *config, stderr io.Writer) (*env, error) {
	e := &env{cfg: cfg, stores: make(map[string]*storeTemplate), stderr: stderr}
	var err error
	if e.exe, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("find own executable for the baseline writers: %w", err)
	}
	if cfg.workdir == "" {
		// Short: the daemon's socket lives under it, and sun_path holds 108 bytes.
		if e.workdir, err = os.MkdirTemp("", "sdb"); err != nil {
			return nil, err
		}
		e.ownWorkdir = true
	} else {
		e.workdir = cfg.workdir
		if err := os.MkdirAll(e.workdir, 0o700); err != nil {
			return nil, err
		}
	}
	if len(filepath.Join(e.workdir, "r0123456789", "sessions.json.sock")) > 100 {
		e.close()
		return nil, fmt.Errorf("%w: -workdir %s is too long for a Unix socket path under it", errUsage, e.workdir)
	}
	e.daemonBin = cfg.sessiond
	if e.daemonBin == "" {
		fmt.Fprintln(stderr, "sessiond-bench: go build ./cmd/sessiond")
		if e.daemonBin, err = buildDaemon(ctx, e.workdir); err != nil {
			e.close()
			return nil, err
		}
	}
	return e, nil
}

// close removes the working directory if this program made it.
func (e *env) close() {
	if e.ownWorkdir {
		_ = os.RemoveAll(e.workdir)
	}
}

// template returns the store of sh, generating it the first time.
func (e *env) template(sh shape) (*storeTemplate, error) {
	key := fmt.Sprintf("%s-%d-%d", sh.Name, sh.Entries, sh.EntryBytes)
	if t, ok := e.stores[key]; ok {
		return t, nil
	}
	t := &storeTemplate{
		path:     filepath.Join(e.workdir, "store-"+key+".json"),
		keysFile: filepath.Join(e.workdir, "keys-"+key+".txt"),
	}
	start := time.Now()
	keys, size, err := genStore(t.path, sh, e.cfg.seed)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(t.keysFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	t.size = size
	t.ws = &workSet{keys: keys, puts: putValues(sh, 64, e.cfg.seed)}
	fmt.Fprintf(e.stderr, "generated store %s: %d entries, %.1f MB in %v\n", sh.Name, len(keys), float64(size)/1e6, time.Since(start).Round(time.Millisecond))
	e.stores[key] = t
	return t, nil
}

// copyFile copies the store template to dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// runCell runs one cell on a fresh copy of its store, in a directory of its own.
func (e *env) runCell(ctx context.Context, c cell) (Result, error) {
	t, err := e.template(c.shape)
	if err != nil {
		return Result{}, err
	}
	e.seq++
	dir, err := os.MkdirTemp(e.workdir, "r")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	store := filepath.Join(dir, "sessions.json")
	if err := copyFile(t.path, store); err != nil {
		return Result{}, err
	}
	res := Result{
		Group: c.group, System: c.system, Shape: c.shape.Name, Entries: c.shape.Entries, StoreBytes: t.size,
		Workload: c.load.workload, Mode: c.load.mode, Clients: c.load.clients, Rep: c.rep,
		SnapshotInterval: c.snapshotInterval, Parse: c.parse, NoRequestIDs: c.load.noRequestIDs && c.system == systemSessiond,
	}
	if c.load.mode == modeOpen {
		res.RateOffered = c.load.rate
	}
	seed := e.cfg.seed*1_000_003 + uint64(e.seq)
	if c.system == systemBaseline {
		return e.runBaseline(ctx, c, t, store, seed, res)
	}
	return e.runSessiond(ctx, c, t, store, seed, res)
}

func (e *env) runSessiond(ctx context.Context, c cell, t *storeTemplate, store string, seed uint64, res Result) (Result, error) {
	var extra []string
	if c.snapshotInterval != "" {
		extra = append(extra, "--snapshot-interval", c.snapshotInterval)
	}
	level := e.cfg.logLevel
	if level == "" {
		level = "info"
		if c.group == groupSnapshots {
			level = "debug"
		}
	}
	d, err := startDaemon(ctx, e.daemonBin, store, level, extra...)
	if err != nil {
		return res, err
	}
	spec := c.load
	var probe *syncProbe // the 1-client goal's fsync, between its requests
	if c.group == groupGoal && spec.clients == 1 {
		if probe, err = newSyncProbe(e.workdir, "fsync-between"); err != nil {
			d.stop(2 * time.Minute)
			return res, err
		}
		defer probe.close()
		spec.between = probe.sample
	}
	var cpu0, client0 time.Duration
	out, err := driveSessiond(ctx, d.socket, t.ws, spec, seed, func() {
		cpu0, _ = procCPU(d.pid()) // a failure shows as an implausible figure, not worth a run
		client0 = selfCPU()
	})
	cpu1, cerr := procCPU(d.pid())
	client1 := selfCPU()
	hwm, herr := procPeakRSS(d.pid())
	stopping := time.Now()
	stopErr := d.stop(2 * time.Minute)
	if err != nil {
		return res, err
	}
	if err := firstErr(cerr, herr, stopErr); err != nil {
		return res, err
	}
	lg, err := parseDaemonLog(d.logPath, stopping)
	if err != nil {
		return res, fmt.Errorf("daemon log: %w", err)
	}
	res.fill(out)
	res.ClientCPUs = (client1 - client0).Seconds()
	if probe != nil {
		if err := probe.close(); err != nil {
			return res, err
		}
		if len(probe.lat) == 0 {
			return res, fmt.Errorf("no fsync between the requests: %d measured", len(out.rec.lat))
		}
		res.FsyncBetween = &FsyncBetween{Samples: len(probe.lat), FsyncMs: ms(median(probe.lat))}
	}
	ds := &DaemonStats{
		LogLevel:  level,
		CPUs:      (cpu1 - cpu0).Seconds(),
		PeakRSSMB: float64(hwm) / (1 << 20),
		LoadMs:    ms(lg.Load),
		ReadyMs:   ms(d.readyIn),
		Snapshots: len(lg.Snapshots),
		Problems:  lg.Problems,
	}
	if res.Ops > 0 {
		ds.CPUPerOpUs = ds.CPUs / float64(res.Ops) * 1e6
	}
	if len(lg.Compactions) > 0 {
		ds.Compactions, ds.CompactionMaxMs = len(lg.Compactions), ms(maxOf(lg.Compactions))
	}
	if len(lg.SlowFsyncs) > 0 {
		ds.SlowFsyncs, ds.FsyncMaxMs = len(lg.SlowFsyncs), ms(maxOf(lg.SlowFsyncs))
	}
	if len(lg.Snapshots) > 0 {
		ds.SnapshotMedianMs = ms(median(lg.Snapshots))
		ds.SnapshotMaxMs = ms(maxOf(lg.Snapshots))
	}
	res.Daemon = ds
	return res, nil
}

func (e *env) runBaseline(ctx context.Context, c cell, t *storeTemplate, store string, seed uint64, res Result) (Result, error) {
	client0 := selfCPU()
	out, bs, _, err := driveBaseline(ctx, baselineSpec{
		exe: e.exe, parse: c.parse, store: store, keysFile: t.keysFile, entryBytes: c.shape.EntryBytes, load: c.load,
		lockTimeout: e.cfg.lockTimeout, lockPoll: e.cfg.lockPoll, seed: seed,
	})
	if err != nil {
		return res, err
	}
	res.fill(out)
	res.ClientCPUs = (selfCPU() - client0).Seconds()
	res.Dropped = out.rec.errs[reasonLockTimeout]
	res.Baseline = &bs
	return res, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
