// Command sessiond-bench measures sessiond against the legacy file-lock protocol it
// replaces (issue 4), on the same stores, with the same workloads and client counts,
// in the same run, and writes the figures as JSON, an SVG chart and the results
// section of BENCHMARKS.md.
//
// sessiond is built from ./cmd/sessiond (or taken from -sessiond) and started afresh
// for every run on a copy of a generated store; N clients drive it over its socket, one
// connection each. The baseline is N writer processes, this same binary re-executed
// with SESSIOND_BENCH_ROLE=baseline-writer, that follow the legacy protocol on another
// copy of the store.
//
// The program is single-shot: runs happen one after another, never overlapping, since
// the client, the daemon and the writers share the machine's cores. It is not a
// library; nothing here is goroutine-safe unless its comment says so.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// errUsage marks a bad command line: exit code 2.
var errUsage = errors.New("usage")

func main() {
	if os.Getenv(childRoleEnv) == childRoleBaseline {
		if err := childMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "baseline writer:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "sessiond-bench:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "sessiond-bench:", err)
		os.Exit(1)
	}
}

// Scenarios: what a run measures.
const (
	scenarioAll       = "all"       // fsync probe, matrix, goals, snapshots: what make bench runs
	scenarioMatrix    = "matrix"    // every shape x workload x mode x clients, both systems
	scenarioGoals     = "goals"     // the cells the issue sets targets for, repeated
	scenarioSnapshots = "snapshots" // 50 MB store: background snapshots on and off
	scenarioCustom    = "custom"    // the cross product of -store-shape, -workload, -mode, -clients
)

// config is the command line.
type config struct {
	scenario         string
	shapes           []shape
	clients          []int
	workloads        []string
	modes            []string
	rate             float64
	baselineRate     float64
	duration         time.Duration
	warmup           time.Duration
	baselineDuration time.Duration
	goalDuration     time.Duration
	goalReps         int
	reps             int
	baseline         bool
	baselineParse    string
	smoke            bool
	out              string
	updateDoc        string
	workdir          string
	sessiond         string
	logLevel         string
	snapshotInterval string
	requestIDs       bool
	lockTimeout      time.Duration
	lockPoll         time.Duration
	seed             uint64
	args             []string // as given, for the record of the command
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{args: args}
	fl := flag.NewFlagSet("sessiond-bench", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprint(stderr, `Usage: go run ./cmd/sessiond-bench [flags]

Drives sessiond and, side by side, the legacy sessions.json.lock protocol (as separate
writer processes) on generated stores, and reports throughput, latency percentiles,
errors, daemon CPU and memory, snapshot and load times. make bench runs -scenario all.

List flags take comma-separated values. Results go to -out (results.json, chart.svg,
results.md); -update-doc rewrites the results section of BENCHMARKS.md.

Flags:
`)
		fl.PrintDefaults()
	}
	var shapeList, clientList, workloadList, modeList string
	fl.StringVar(&c.scenario, "scenario", scenarioCustom, "all, matrix, goals, snapshots, restart (SIGUSR1 pauses; not part of all) or custom")
	fl.StringVar(&shapeList, "store-shape", "10k", "store shapes: 1k, 10k (entries of ~500 B), 1kx50k (~50 KB each, 50 MB)")
	fl.StringVar(&clientList, "clients", "1,16,64,256", "concurrent clients (connections; baseline: writer processes)")
	fl.StringVar(&workloadList, "workload", "patch", "patch (durable merge patch), mixed (80% get / 20% patch), put (new keys)")
	fl.StringVar(&modeList, "mode", "closed", "closed (next request when answered) or open (fixed offered -rate)")
	fl.Float64Var(&c.rate, "rate", 2000, "open loop: offered requests per second to sessiond, all clients together")
	fl.Float64Var(&c.baselineRate, "baseline-rate", 5, "open loop: offered operations per second to the baseline, all writers together")
	fl.DurationVar(&c.duration, "duration", 2*time.Second, "measured window of a sessiond run")
	fl.DurationVar(&c.warmup, "warmup", 500*time.Millisecond, "sessiond: load before the window that is not measured")
	fl.DurationVar(&c.baselineDuration, "baseline-duration", 3*time.Second, "window of a baseline run (operations in progress at its end still finish: up to the lock timeout more)")
	fl.DurationVar(&c.goalDuration, "goal-duration", 5*time.Second, "window of the goal and snapshot runs")
	fl.IntVar(&c.goalReps, "goal-reps", 3, "repetitions of the goal and snapshot runs (medians are reported)")
	fl.IntVar(&c.reps, "reps", 1, "repetitions of each custom run")
	fl.BoolVar(&c.baseline, "baseline", true, "also run the legacy file-lock baseline")
	fl.StringVar(&c.baselineParse, "baseline-parse", parseRaw, "baseline: raw (validate the whole file, decode the changed entry: about Node.js speed) or full (decode every value: 2-3x slower than Node.js); the goal runs do both")
	fl.BoolVar(&c.smoke, "smoke", false, "every kind of run for a fraction of a second on tiny stores (the tool's own test)")
	fl.StringVar(&c.out, "out", "bench-results", "directory for results.json, chart.svg and results.md")
	fl.StringVar(&c.updateDoc, "update-doc", "", "rewrite the results section of this file (BENCHMARKS.md)")
	fl.StringVar(&c.workdir, "workdir", "", "where stores and sockets live (default: a new temp dir; keep paths short)")
	fl.StringVar(&c.sessiond, "sessiond", "", "sessiond binary (default: go build ./cmd/sessiond into a temp dir)")
	fl.StringVar(&c.logLevel, "daemon-log-level", "", `sessiond --log-level (default: debug for the snapshot runs, whose snapshot durations only the debug log has, info for the others: debug logs every request and costs the daemon 15-25% CPU per write)`)
	fl.StringVar(&c.snapshotInterval, "snapshot-interval", "", "custom runs: sessiond --snapshot-interval (default: the daemon's)")
	fl.BoolVar(&c.requestIDs, "request-ids", true, "matrix, goal and custom runs: every sessiond write carries a request_id, as the Go client's do by default (false: ipc.NoRequestID; the snapshot scenario runs both)")
	fl.DurationVar(&c.lockTimeout, "baseline-lock-timeout", legacyLockTimeout, "baseline: give up waiting for the lock after this (a dropped write)")
	fl.DurationVar(&c.lockPoll, "baseline-lock-poll", legacyLockPoll, "baseline: lock polling interval")
	fl.Uint64Var(&c.seed, "seed", 1, "random seed of stores and workloads")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fl.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fl.Args())
	}
	var err error
	for name := range strings.SplitSeq(shapeList, ",") {
		sh, err := shapeByName(strings.TrimSpace(name))
		if err != nil {
			return nil, fmt.Errorf("%w: -store-shape: %v", errUsage, err)
		}
		c.shapes = append(c.shapes, sh)
	}
	if c.clients, err = parseInts(clientList); err != nil {
		return nil, fmt.Errorf("%w: -clients: %v", errUsage, err)
	}
	if c.workloads, err = parseEnum(workloadList, workloadPatch, workloadMixed, workloadPut); err != nil {
		return nil, fmt.Errorf("%w: -workload: %v", errUsage, err)
	}
	if c.modes, err = parseEnum(modeList, modeClosed, modeOpen); err != nil {
		return nil, fmt.Errorf("%w: -mode: %v", errUsage, err)
	}
	switch c.scenario {
	case scenarioAll, scenarioMatrix, scenarioGoals, scenarioSnapshots, scenarioCustom, scenarioRestart:
	default:
		return nil, fmt.Errorf("%w: -scenario %q: want all, matrix, goals, snapshots, restart or custom", errUsage, c.scenario)
	}
	if c.baselineParse != parseFull && c.baselineParse != parseRaw {
		return nil, fmt.Errorf("%w: -baseline-parse %q: want full or raw", errUsage, c.baselineParse)
	}
	if c.rate <= 0 || c.baselineRate <= 0 || c.duration <= 0 || c.baselineDuration <= 0 || c.goalDuration <= 0 {
		return nil, fmt.Errorf("%w: rates and durations must be positive", errUsage)
	}
	if c.reps < 1 || c.goalReps < 1 {
		return nil, fmt.Errorf("%w: repetitions must be at least 1", errUsage)
	}
	return c, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseEnum(s string, allowed ...string) ([]string, error) {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		ok := false
		for _, a := range allowed {
			ok = ok || f == a
		}
		if !ok {
			return nil, fmt.Errorf("%q: want one of %s", f, strings.Join(allowed, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// run is the whole program: plan the runs, make the stores, run, report.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if cfg == nil || err != nil {
		return err
	}
	started := time.Now()
	e, err := newEnv(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer e.close()

	if cfg.scenario == scenarioRestart {
		return runRestartScenario(ctx, e, 16, 5, cfg.out, stdout)
	}
	rep := newReport(cfg, started)
	cells := plan(cfg)
	fmt.Fprintf(stderr, "sessiond-bench: %d runs planned; daemon %s; stores in %s\n", len(cells), e.daemonBin, e.workdir)

	probe := func(when string) error {
		lat, _, err := probeFsync(e.workdir, 200, 0)
		if err != nil {
			return err
		}
		paused, slept, err := probeFsync(e.workdir, 200, probePause)
		if err != nil {
			return err
		}
		s := summarize(lat)
		rep.Fsync = append(rep.Fsync, FsyncProbe{When: when, Samples: s.Count, MedianMs: s.P50ms, P99ms: s.P99ms,
			PausedMs: ms(median(paused)), PauseMs: ms(slept)})
		rep.fsyncSamples = append(rep.fsyncSamples, lat...)
		rep.pausedSamples = append(rep.pausedSamples, paused...)
		fmt.Fprintf(stderr, "fsync probe (%s): median %.3f ms, p99 %.3f ms; after %.2f ms idle: median %.3f ms\n",
			when, s.P50ms, s.P99ms, ms(slept), ms(median(paused)))
		return nil
	}
	if err := probe("start"); err != nil {
		return err
	}
	for i, c := range cells {
		if err := ctx.Err(); err != nil {
			return err
		}
		res, err := e.runCell(ctx, c)
		if err != nil {
			return fmt.Errorf("run %s: %w", c.name(), err)
		}
		fmt.Fprintf(stderr, "[%d/%d] %s\n", i+1, len(cells), res.line())
		rep.Results = append(rep.Results, res)
	}
	if err := probe("end"); err != nil {
		return err
	}
	rep.Capped = capped(cfg)
	rep.finish(time.Since(started))
	if err := rep.write(cfg.out); err != nil {
		return err
	}
	if cfg.updateDoc != "" {
		if err := rep.updateDoc(cfg.updateDoc); err != nil {
			return err
		}
	}
	fmt.Fprint(stdout, rep.markdown())
	return nil
}
