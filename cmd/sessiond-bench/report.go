package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Result is one run as results.json records it.
type Result struct {
	Group            string  `json:"group"`
	System           string  `json:"system"`
	Shape            string  `json:"shape"`
	Entries          int     `json:"entries"`
	StoreBytes       int64   `json:"store_bytes"`
	Workload         string  `json:"workload"`
	Mode             string  `json:"mode"`
	Clients          int     `json:"clients"`
	RateOffered      float64 `json:"rate_offered,omitempty"`
	Rep              int     `json:"rep"`
	SnapshotInterval string  `json:"snapshot_interval,omitempty"`
	NoRequestIDs     bool    `json:"no_request_ids,omitempty"` // sessiond writes without request_id
	Parse            string  `json:"baseline_parse,omitempty"` // baseline: full or raw
	// WindowS is the measured window plus the drain after it (the last answer).
	WindowS    float64          `json:"window_s"`
	Ops        int64            `json:"ops"`    // operations that succeeded in the window
	Writes     int64            `json:"writes"` // of which wrote (patch, put)
	Throughput float64          `json:"throughput"`
	Latency    Latency          `json:"latency"` // successful operations; open loop: from the intended send time
	Errors     map[string]int64 `json:"errors"`  // failed operations by reason
	Dropped    int64            `json:"dropped"` // baseline: writes that gave up waiting for the lock
	Unsent     int64            `json:"unsent"`  // open loop: due in the window, never sent
	ClientCPUs float64          `json:"client_cpu_s"`
	// FsyncBetween: 1-client goal runs, the fsync probes taken between the requests.
	FsyncBetween *FsyncBetween  `json:"fsync_between,omitempty"`
	Daemon       *DaemonStats   `json:"daemon,omitempty"`
	Baseline     *BaselineStats `json:"baseline,omitempty"`
}

// DaemonStats is what a sessiond run cost the daemon, from /proc and its log.
type DaemonStats struct {
	LogLevel         string  `json:"log_level"` // sessiond --log-level of the run
	CPUs             float64 `json:"cpu_s"`     // user + system during the window
	CPUPerOpUs       float64 `json:"cpu_us_per_op"`
	PeakRSSMB        float64 `json:"peak_rss_mb"` // VmHWM at the end of the run: load included
	LoadMs           float64 `json:"load_ms"`     // "store loaded" took
	ReadyMs          float64 `json:"ready_ms"`    // exec to the first status in phase serving
	Snapshots        int     `json:"snapshots"`
	SnapshotMedianMs float64 `json:"snapshot_median_ms"`
	SnapshotMaxMs    float64 `json:"snapshot_max_ms"`
	Compactions      int     `json:"journal_compactions"` // "journal compacted" (info)
	CompactionMaxMs  float64 `json:"journal_compaction_max_ms"`
	// SlowFsyncs counts the journal fsyncs of 10 ms or more, FsyncMaxMs is the slowest
	// (from the debug log: the snapshot runs only).
	SlowFsyncs int      `json:"journal_fsyncs_over_10ms"`
	FsyncMaxMs float64  `json:"journal_fsync_max_ms"`
	Problems   []string `json:"problems,omitempty"` // WARN/ERROR log lines
}

func (r *Result) fill(out loadOutcome) {
	window := out.end.Sub(out.start)
	r.WindowS = window.Seconds()
	r.Ops = int64(len(out.rec.lat))
	r.Writes = out.rec.writes
	r.Latency = summarize(out.rec.lat)
	if window > 0 {
		r.Throughput = float64(r.Ops) / window.Seconds()
	}
	r.Errors = out.rec.errs
	r.Unsent = out.unsent
}

func (r *Result) errorCount() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// line is the one-line progress report of a run.
func (r *Result) line() string {
	s := fmt.Sprintf("%-8s %-6s %-5s %-6s c=%-3d %9.1f ops/s  p50 %8.3f  p99 %8.3f  p99.9 %8.3f ms",
		r.System, r.Shape, r.Workload, r.Mode, r.Clients, r.Throughput, r.Latency.P50ms, r.Latency.P99ms, r.Latency.P999ms)
	if n := r.errorCount(); n > 0 {
		s += fmt.Sprintf("  errors %v", r.Errors)
	}
	if r.Unsent > 0 {
		s += fmt.Sprintf("  unsent %d", r.Unsent)
	}
	if f := r.FsyncBetween; f != nil {
		s += fmt.Sprintf("  fsync between %.3f ms", f.FsyncMs)
	}
	if d := r.Daemon; d != nil {
		s += fmt.Sprintf("  daemon %.0f µs/op, %.0f MB", d.CPUPerOpUs, d.PeakRSSMB)
		if r.SnapshotInterval != "" {
			s += " snapshot-interval " + r.SnapshotInterval
		}
		if r.NoRequestIDs {
			s += " no request_ids"
		}
	}
	return s
}

// Goal is one target of the issue, met or not.
type Goal struct {
	Goal     string `json:"goal"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// Machine describes where the figures come from.
type Machine struct {
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go"`
	Kernel    string `json:"kernel"`
	Commit    string `json:"commit"`
}

// Report is results.json.
type Report struct {
	Command string       `json:"command"`
	Started time.Time    `json:"started"`
	TookS   float64      `json:"took_s"`
	Machine Machine      `json:"machine"`
	Smoke   bool         `json:"smoke,omitempty"`
	Fsync   []FsyncProbe `json:"fsync"`
	FsyncMs float64      `json:"fsync_median_ms"` // median of every back-to-back probe sample
	// FsyncPausedMs is the median of every probe sample taken after a pause.
	FsyncPausedMs float64  `json:"fsync_after_pause_median_ms"`
	Goals         []Goal   `json:"goals"`
	Capped        []string `json:"capped"`
	Results       []Result `json:"results"`
	LogLevel      string   `json:"daemon_log_level"` // "" : debug for the snapshot runs, info for the others
	// BaselineParse is the parse mode of the baseline runs outside the goal group.
	BaselineParse string `json:"baseline_parse"`

	fsyncSamples, pausedSamples []time.Duration
}

func newReport(cfg *config, started time.Time) *Report {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if root, err := moduleRoot(); err == nil {
		cmd := exec.Command("git", "describe", "--always", "--dirty")
		cmd.Dir = root
		if b, err := cmd.Output(); err == nil {
			m.Commit = strings.TrimSpace(string(b))
		}
	}
	return &Report{
		Command:  "go run ./cmd/sessiond-bench " + strings.Join(cfg.args, " "),
		Started:  started.UTC().Truncate(time.Second),
		Machine:  m,
		Smoke:    cfg.smoke,
		LogLevel: cfg.logLevel,

		BaselineParse: cfg.baselineParse,
	}
}

// finish computes the pooled fsync median and the goals.
func (r *Report) finish(took time.Duration) {
	r.TookS = took.Seconds()
	r.FsyncMs = ms(median(r.fsyncSamples))
	r.FsyncPausedMs = ms(median(r.pausedSamples))
	r.Goals = r.goals()
}

// pick returns the results matching every non-zero field of q.
func (r *Report) pick(q Result) []Result {
	var out []Result
	for _, x := range r.Results {
		if (q.Group == "" || x.Group == q.Group) && (q.System == "" || x.System == q.System) &&
			(q.Shape == "" || x.Shape == q.Shape) && (q.Workload == "" || x.Workload == q.Workload) &&
			(q.Mode == "" || x.Mode == q.Mode) && (q.Clients == 0 || x.Clients == q.Clients) &&
			(q.SnapshotInterval == "" || x.SnapshotInterval == q.SnapshotInterval) &&
			(q.Parse == "" || x.Parse == q.Parse) {
			out = append(out, x)
		}
	}
	return out
}

func medianOf(rs []Result, f func(Result) float64) float64 {
	xs := make([]float64, len(rs))
	for i, x := range rs {
		xs[i] = f(x)
	}
	return median(xs)
}

func throughputOf(x Result) float64 { return x.Throughput }
func p99Of(x Result) float64        { return x.Latency.P99ms }

// oneClientGoal judges each 1-client run's p50 against the fsync measured between its own
// requests, and the goal by the median of those ratios (of an even number, the higher
// middle one); false without runs. A run without that fsync fails the goal. The ratio
// of the median p50 to backToBack, the back-to-back probes, is printed beside.
func oneClientGoal(one []Result, backToBack float64) (Goal, bool) {
	if len(one) == 0 {
		return Goal{}, false
	}
	g := Goal{Goal: fmt.Sprintf("durable patch, %s store, 1 client: p50", one[0].Shape), Target: "<= 2x one fsync"}
	type run struct {
		ratio float64
		text  string
	}
	var runs []run
	for _, x := range one {
		if f := x.FsyncBetween; f != nil && f.FsyncMs > 0 {
			r := x.Latency.P50ms / f.FsyncMs
			runs = append(runs, run{r, fmt.Sprintf("%.3f / %.3f ms = %.2fx", x.Latency.P50ms, f.FsyncMs, r)})
		}
	}
	if len(runs) < len(one) {
		g.Measured = fmt.Sprintf("%d of %d runs took no fsync between their requests", len(one)-len(runs), len(one))
		return g, true
	}
	slices.SortFunc(runs, func(a, b run) int { return cmp.Compare(a.ratio, b.ratio) })
	mid := runs[len(runs)/2]
	texts := make([]string, len(runs))
	for i, r := range runs {
		texts[i] = r.text
	}
	p50 := medianOf(one, func(x Result) float64 { return x.Latency.P50ms })
	g.Measured = fmt.Sprintf("%.2fx, the median of %d runs' p50 over the fsync (append 700 B + fsync) taken after every %dth of its requests: %s. "+
		"The median p50 over the back-to-back fsync at the start and end of the run: %.3f / %.3f ms = %.2fx",
		mid.ratio, len(runs), probeEvery, strings.Join(texts, "; "), p50, backToBack, p50/backToBack)
	g.Met = mid.ratio <= 2
	return g, true
}

// goals checks the targets against the goal and snapshot runs (medians of the
// repetitions). A target whose runs are missing from this scenario is left out.
func (r *Report) goals() []Goal {
	var goals []Goal
	gs := r.pick(Result{Group: groupGoal, System: systemSessiond, Workload: workloadPatch})
	var hot, one []Result
	hotN := 0
	for _, x := range gs {
		if x.Clients > 1 {
			hot, hotN = append(hot, x), x.Clients
		} else {
			one = append(one, x)
		}
	}
	if len(hot) > 0 {
		name := fmt.Sprintf("durable patch, %s store, %d clients", hot[0].Shape, hotN)
		tp, p99 := medianOf(hot, throughputOf), medianOf(hot, p99Of)
		goals = append(goals,
			Goal{name + ": throughput", ">= 20,000 acks/s", fmt.Sprintf("%.0f acks/s (median of %d)", tp, len(hot)), tp >= 20_000},
			Goal{name + ": p99", "< 10 ms", fmt.Sprintf("%.2f ms (median of %d)", p99, len(hot)), p99 < 10})
		// Judged against the faster of the two baselines (parse modes): the conservative ratio.
		var base []Result
		var parts []string
		var btp float64
		for _, mode := range []string{parseFull, parseRaw} {
			b := r.pick(Result{Group: groupGoal, System: systemBaseline, Workload: workloadPatch, Clients: hotN, Parse: mode})
			if len(b) == 0 {
				continue
			}
			base = append(base, b...)
			t := medianOf(b, throughputOf)
			if t > btp {
				btp = t
			}
			if t > 0 {
				parts = append(parts, fmt.Sprintf("%.0fx vs the %s-parse baseline (%.2f writes/s, median of %d)", tp/t, mode, t, len(b)))
			} else {
				parts = append(parts, fmt.Sprintf("the %s-parse baseline completed no write", mode))
			}
		}
		if len(base) > 0 {
			met := btp == 0 || tp/btp >= 1000
			goals = append(goals, Goal{name + ": vs baseline", ">= 1000x the baseline's throughput (the faster baseline)",
				fmt.Sprintf("sessiond %.0f acks/s: %s", tp, strings.Join(parts, "; ")), met})
			var errs, dropped int64
			for _, x := range hot {
				errs += x.errorCount()
			}
			for _, x := range base {
				dropped += x.Dropped
			}
			goals = append(goals, Goal{name + ": no dropped writes", "0 failed writes where the baseline drops",
				fmt.Sprintf("sessiond %d failed in %d runs; baseline dropped %d in %d runs", errs, len(hot), dropped, len(base)),
				errs == 0 && dropped > 0})
		}
	}
	if g, ok := oneClientGoal(one, r.FsyncMs); ok {
		goals = append(goals, g)
	}
	on := r.pick(Result{Group: groupSnapshots, System: systemSessiond})
	var with, without, noIDs []Result
	for _, x := range on {
		switch {
		case x.NoRequestIDs:
			noIDs = append(noIDs, x)
		case x.SnapshotInterval != snapshotsOff:
			with = append(with, x)
		default:
			without = append(without, x)
		}
	}
	if len(with) > 0 && len(without) > 0 {
		pOn, pOff := medianOf(with, p99Of), medianOf(without, p99Of)
		var snaps []float64
		for _, x := range with {
			snaps = append(snaps, float64(x.Daemon.Snapshots))
		}
		goals = append(goals, Goal{fmt.Sprintf("%s store: patch p99 with background snapshots", with[0].Shape),
			"unaffected: <= 1.5x the p99 with --snapshot-interval -1",
			fmt.Sprintf("%.2f ms vs %.2f ms = %.2fx (medians of %d; %.0f snapshots per run)", pOn, pOff, pOn/pOff, len(with), median(snaps)),
			pOn <= 1.5*pOff})
		all := append(slices.Clone(with), without...)
		load := medianOf(all, func(x Result) float64 { return x.Daemon.LoadMs })
		goals = append(goals, Goal{fmt.Sprintf("%s store: load at start", with[0].Shape), "< 1 s",
			fmt.Sprintf("%.0f ms (median of %d)", load, len(all)), load < 1000})
		storeMB := float64(all[0].StoreBytes) / (1 << 20)
		limit := 2.5*storeMB + 50
		rssGoal := func(runs []Result, how string) {
			var rss float64
			for _, x := range runs {
				rss = max(rss, x.Daemon.PeakRSSMB)
			}
			goals = append(goals, Goal{fmt.Sprintf("%s store: peak RSS, %s", with[0].Shape, how),
				fmt.Sprintf("< 2.5x store + 50 MB = %.0f MB", limit),
				fmt.Sprintf("%.0f MB (largest of %d runs; store %.0f MB)", rss, len(runs), storeMB), rss < limit})
		}
		rssGoal(all, "every write with a request_id (the Go client's default)")
		if len(noIDs) > 0 {
			rssGoal(noIDs, "writes without request_id")
		}
	}
	return goals
}

// write saves results.json, chart.svg and results.md into dir.
func (r *Report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"results.json": append(b, '\n'),
		"chart.svg":    chartSVG(r),
		"results.md":   []byte(r.markdown()),
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := os.WriteFile(filepath.Join(dir, name), files[name], 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Markers of the generated section of BENCHMARKS.md.
const (
	docBegin = "<!-- bench:results:begin (generated by sessiond-bench -update-doc; edits inside are overwritten) -->"
	docEnd   = "<!-- bench:results:end -->"
)

// updateDoc replaces the generated section of path (between docBegin and docEnd) with
// the markdown of r; the text around it is left alone.
func (r *Report) updateDoc(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	i, j := bytes.Index(b, []byte(docBegin)), bytes.Index(b, []byte(docEnd))
	if i < 0 || j < i {
		return fmt.Errorf("update %s: markers %q and %q not found", path, docBegin, docEnd)
	}
	var out bytes.Buffer
	out.Write(b[:i+len(docBegin)])
	out.WriteString("\n\n")
	out.WriteString(r.markdown())
	out.WriteString("\n")
	out.Write(b[j:])
	return os.WriteFile(path, out.Bytes(), 0o644)
}

// markdown is the results section: the command, the goals, the tables.
func (r *Report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("Generated by:\n\n```\n%s\n```\n\n", r.Command)
	level := r.LogLevel
	if level == "" {
		level = "info (debug in the snapshot runs, for the snapshot durations)"
	}
	p("Run %s, took %.0f s, %d CPUs, %s, kernel %s, commit %s; daemon log level %s. ",
		r.Started.Format(time.RFC3339), r.TookS, r.Machine.CPUs, r.Machine.GoVersion, r.Machine.Kernel, r.Machine.Commit, level)
	p("Clients, daemon and baseline writers share the machine. Latencies are of successful operations, in ms; "+
		"open-loop latencies count from the intended send time. One fsync (append 700 B + fsync) at the start and end of the run, "+
		"200 back to back, then 200 each after a sleep of %v:", probePause)
	for _, f := range r.Fsync {
		p(" %s median %.3f ms (p99 %.3f), after a sleep %.3f ms (it slept %.2f ms);", f.When, f.MedianMs, f.P99ms, f.PausedMs, f.PauseMs)
	}
	p(" pooled medians **%.3f ms** back to back, **%.3f ms** after a sleep. "+
		"The 1-client goal runs also take one sample after every %dth request (in the goal's line).\n\n", r.FsyncMs, r.FsyncPausedMs, probeEvery)

	if len(r.Goals) > 0 {
		p("#### Goals of issue 4\n\n| goal | target | measured | met |\n|---|---|---|---|\n")
		for _, g := range r.Goals {
			met := "**no**"
			if g.Met {
				met = "yes"
			}
			p("| %s | %s | %s | %s |\n", g.Goal, g.Target, g.Measured, met)
		}
		p("\n")
	}
	r.sideBySide(&b, groupGoal, "Goal runs (every repetition)")
	r.sideBySide(&b, groupMatrix, "Matrix: sessiond beside the baseline (one run per cell)")
	r.sideBySide(&b, groupCustom, "Custom runs")
	if snaps := r.pick(Result{Group: groupSnapshots}); len(snaps) > 0 {
		p("#### Background snapshots on the 50 MB store (open loop, %d clients, %g ops/s offered)\n\n", snaps[0].Clients, snaps[0].RateOffered)
		p("| rep | snapshot-interval | request_id | ops/s | p50 | p99 | p99.9 | max | snapshots | snapshot median / max ms | journal compactions (max ms) | journal fsyncs >= 10 ms (max ms) | load ms | peak RSS MB | daemon CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range snaps {
			iv := x.SnapshotInterval
			if iv == "" {
				iv = "default (1s)"
			}
			d := x.Daemon
			ids := "yes"
			if x.NoRequestIDs {
				ids = "no"
			}
			p("| %d | %s | %s | %.0f | %.3f | %.3f | %.3f | %.3f | %d | %.0f / %.0f | %d (%.0f) | %d (%.0f) | %.0f | %.0f | %.2f |\n", x.Rep, iv, ids, x.Throughput,
				x.Latency.P50ms, x.Latency.P99ms, x.Latency.P999ms, x.Latency.MaxMs, d.Snapshots, d.SnapshotMedianMs, d.SnapshotMaxMs,
				d.Compactions, d.CompactionMaxMs, d.SlowFsyncs, d.FsyncMaxMs, d.LoadMs, d.PeakRSSMB, d.CPUs)
		}
		p("\n")
	}
	if base := r.pick(Result{System: systemBaseline, Workload: workloadPatch, Mode: modeClosed}); len(base) > 0 {
		p("#### Where a baseline write's time goes (patch, closed loop; mean ms per completed write)\n\n")
		p("| store | parse | writers | writes | lock wait | read | parse | encode | write | fsync | rename+unlock | CPU s (all writers) | peak RSS MB (one writer) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range base {
			if x.Group == groupGoal && x.Rep > 1 {
				continue
			}
			w := x.Baseline.PerWriteMs
			p("| %s | %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f |\n", x.Shape, x.Parse, x.Clients, x.Writes,
				w["wait"], w["read"], w["parse"], w["encode"], w["write"], w["fsync"], w["rename"], x.Baseline.CPUs, x.Baseline.PeakRSSMB)
		}
		p("\n")
	}
	if len(r.Capped) > 0 {
		p("#### Where the baseline ran with less\n\n")
		for _, c := range r.Capped {
			p("- %s\n", c)
		}
		p("\n")
	}
	var problems []string
	for _, x := range r.Results {
		if x.Daemon != nil {
			problems = append(problems, x.Daemon.Problems...)
		}
	}
	if len(problems) > 0 {
		p("#### Daemon warnings and errors during the runs\n\n```\n%s\n```\n\n", strings.Join(problems[:min(len(problems), 10)], "\n"))
	}
	return b.String()
}

// sideBySide writes the table of group: one row per sessiond run, the baseline's run
// of the same cell beside it.
func (r *Report) sideBySide(b *strings.Builder, group, title string) {
	runs := r.pick(Result{Group: group, System: systemSessiond})
	if len(runs) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("#### %s\n\n", title)
	p("| store | workload | mode | clients | rep | sessiond ops/s | p50 | p99 | p99.9 | errors | daemon CPU µs/op | daemon RSS MB | client CPU s | snapshots | baseline ops/s | p50 | p99 | dropped | ratio |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range runs {
		snaps := "–" // only the debug log says
		if x.Daemon.LogLevel == "debug" {
			snaps = fmt.Sprint(x.Daemon.Snapshots)
		}
		p("| %s | %s | %s | %d | %d | %.0f | %.3f | %.3f | %.3f | %s | %.0f | %.0f | %.2f | %s |", x.Shape, x.Workload, modeLabel(x), x.Clients, x.Rep,
			x.Throughput, x.Latency.P50ms, x.Latency.P99ms, x.Latency.P999ms, errorsLabel(x), x.Daemon.CPUPerOpUs, x.Daemon.PeakRSSMB, x.ClientCPUs, snaps)
		base := r.pick(Result{Group: group, System: systemBaseline, Shape: x.Shape, Workload: x.Workload, Mode: x.Mode, Clients: x.Clients, Parse: r.BaselineParse})
		var bx *Result
		for i := range base {
			if base[i].Rep == x.Rep || bx == nil {
				bx = &base[i]
			}
		}
		if bx == nil {
			p(" – | – | – | – | – |\n")
			continue
		}
		ratio := "∞"
		switch {
		case x.Mode == modeOpen:
			ratio = "–" // both throughputs are the offered rates, or what overload left of them
		case bx.Throughput > 0:
			ratio = fmt.Sprintf("%.0fx", x.Throughput/bx.Throughput)
		}
		p(" %.2f | %.1f | %.1f | %s | %s |\n", bx.Throughput, bx.Latency.P50ms, bx.Latency.P99ms, droppedLabel(*bx), ratio)
	}
	p("\n")
}

func modeLabel(x Result) string {
	if x.Mode == modeOpen {
		return fmt.Sprintf("open %g/s", x.RateOffered)
	}
	return x.Mode
}

func errorsLabel(x Result) string {
	if x.errorCount() == 0 && x.Unsent == 0 {
		return "0"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(x.Errors)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, x.Errors[k]))
	}
	if x.Unsent > 0 {
		parts = append(parts, fmt.Sprintf("unsent %d", x.Unsent))
	}
	return strings.Join(parts, ", ")
}

func droppedLabel(x Result) string {
	s := fmt.Sprintf("%d", x.Dropped)
	if other := x.errorCount() - x.Dropped; other > 0 {
		s += fmt.Sprintf(" (+%d errors)", other)
	}
	if x.Unsent > 0 {
		s += fmt.Sprintf(" (+%d unsent)", x.Unsent)
	}
	return s
}
