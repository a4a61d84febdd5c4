package main

import (
	"fmt"
	"time"
)

// Systems under test.
const (
	systemSessiond = "sessiond"
	systemBaseline = "baseline"
)

// Groups of runs, as results.json and BENCHMARKS.md name them.
const (
	groupMatrix    = "matrix"
	groupGoal      = "goal"
	groupSnapshots = "snapshots"
	groupCustom    = "custom"
)

// The cells the issue sets targets for.
const (
	goalShape   = "10k"
	goalClients = 64
	// snapRate is the offered rate of the snapshot comparison: well below what the
	// daemon sustains on the 50 MB store, so that any extra latency is the snapshots'.
	snapRate    = 500
	snapClients = 16
	snapShape   = "1kx50k"
	// snapshotsOff is the --snapshot-interval that leaves only the final snapshot.
	snapshotsOff = "-1s"
)

// baselineMixedCap1kx50k bounds the writer processes of the baseline's mixed workload
// on the 50 MB store: every legacy get parses the whole file without the lock, so each
// process holds it and its parse (200-260 MB); 256 of them would exhaust the machine.
const baselineMixedCap1kx50k = 16

// cell is one run: one system, one store, one load, one repetition.
type cell struct {
	group            string
	system           string
	shape            shape
	load             loadSpec
	snapshotInterval string // sessiond --snapshot-interval; "" for the daemon's default
	parse            string // baseline: parseFull or parseRaw
	rep              int    // 1-based
}

func (c cell) name() string {
	s := fmt.Sprintf("%s/%s %s %s %s c=%d", c.group, c.system, c.shape.Name, c.load.workload, c.load.mode, c.load.clients)
	if c.load.mode == modeOpen {
		s += fmt.Sprintf(" rate=%g", c.load.rate)
	}
	if c.snapshotInterval != "" {
		s += " snapshot-interval=" + c.snapshotInterval
	}
	if c.load.noRequestIDs {
		s += " no-request-ids"
	}
	if c.system == systemBaseline {
		s += " parse=" + c.parse
	}
	return s + fmt.Sprintf(" rep=%d", c.rep)
}

// smokeConfig shrinks cfg to a smoke run: tiny stores, fractions of a second, two
// clients (plus one client for the charted cells), the open loop for one cell only.
// Every kind of run still happens.
func smokeConfig(cfg *config) *config {
	c := *cfg
	c.shapes = nil
	for _, sh := range shapes {
		c.shapes = append(c.shapes, sh.tiny())
	}
	c.clients = []int{2}
	// No warmup: a client's first request then starts in the window and is measured,
	// however long a disk stall makes it. With one, a request begun in the warmup could
	// outlast the whole window, and a run with no request measured fails the smoke test
	// (it did once, "sessiond 1k patch closed made no progress").
	c.duration, c.warmup = 200*time.Millisecond, 0
	c.baselineDuration, c.goalDuration = 200*time.Millisecond, 200*time.Millisecond
	c.goalReps, c.reps = 1, 1
	c.rate, c.baselineRate = 200, 20
	return &c
}

// plan lists the runs of cfg's scenario, in the order they run.
func plan(cfg *config) []cell {
	if cfg.smoke {
		cfg = smokeConfig(cfg)
	}
	var cells []cell
	add := func(c cell) {
		if c.system == systemBaseline {
			if c.parse == "" {
				c.parse = cfg.baselineParse
			}
			c.load.rate = cfg.baselineRate
			if c.group != groupGoal {
				c.load.duration = cfg.baselineDuration
			}
			if c.shape.Name == snapShape && c.load.workload == workloadMixed && c.load.clients > baselineMixedCap1kx50k {
				return
			}
		}
		cells = append(cells, c)
	}
	both := func(c cell, reps, baselineReps int) {
		for rep := 1; rep <= reps; rep++ {
			c.system, c.rep = systemSessiond, rep
			add(c)
		}
		if cfg.baseline {
			for rep := 1; rep <= baselineReps; rep++ {
				c.system, c.rep = systemBaseline, rep
				add(c)
			}
		}
	}
	load := func(workload, mode string, clients int, d time.Duration) loadSpec {
		return loadSpec{workload: workload, mode: mode, clients: clients, rate: cfg.rate, warmup: cfg.warmup, duration: d,
			noRequestIDs: !cfg.requestIDs}
	}
	shapeOf := func(name string) shape {
		for _, sh := range cfg.shapes {
			if sh.Name == name {
				return sh
			}
		}
		sh, _ := shapeByName(name) // a constant of this file: always known
		if cfg.smoke {
			sh = sh.tiny()
		}
		return sh
	}
	all, matrixShapes := cfg.scenario == scenarioAll, cfg.shapes
	if all || cfg.scenario == scenarioMatrix {
		if all {
			matrixShapes = nil
			for _, sh := range shapes {
				matrixShapes = append(matrixShapes, shapeOf(sh.Name))
			}
		}
		for _, sh := range matrixShapes {
			for _, wl := range []string{workloadPatch, workloadMixed, workloadPut} {
				for _, mode := range []string{modeClosed, modeOpen} {
					if cfg.smoke && mode == modeOpen && (sh.Name != goalShape || wl != workloadPatch) {
						continue // the open loop's code is the same for every workload and store
					}
					clients := cfg.clients
					if cfg.smoke && wl == workloadPatch && mode == modeClosed {
						clients = []int{1, 2} // two points: the chart has lines to draw
					}
					for _, n := range clients {
						both(cell{group: groupMatrix, shape: sh, load: load(wl, mode, n, cfg.duration)}, 1, 1)
					}
				}
			}
		}
	}
	if all || cfg.scenario == scenarioGoals {
		goalN := goalClients
		if cfg.smoke {
			goalN = 4
		}
		hot := cell{group: groupGoal, shape: shapeOf(goalShape), load: load(workloadPatch, modeClosed, goalN, cfg.goalDuration)}
		both(hot, cfg.goalReps, cfg.goalReps)
		if cfg.baseline {
			// The other parse mode too: the full decode is slower than the Node.js
			// writers it stands for, the raw one faster; the ratio is judged on the faster.
			hot.system, hot.parse = systemBaseline, parseRaw
			if cfg.baselineParse == parseRaw {
				hot.parse = parseFull
			}
			for rep := 1; rep <= cfg.goalReps; rep++ {
				hot.rep = rep
				add(hot)
			}
		}
		both(cell{group: groupGoal, shape: shapeOf(goalShape), load: load(workloadPatch, modeClosed, 1, cfg.goalDuration)}, cfg.goalReps, 0)
	}
	if all || cfg.scenario == scenarioSnapshots {
		rate := float64(snapRate)
		if cfg.smoke {
			rate = cfg.rate
		}
		intervals := []string{"", snapshotsOff}
		if cfg.smoke {
			intervals[0] = "100ms" // the default 1s would see no snapshot before the stop
		}
		for rep := 1; rep <= cfg.goalReps; rep++ {
			// Interleaved, so that a noisy minute on the shared machine hits every side.
			// The last run leaves request_id out: how much of the memory is the dedup
			// window's copies of patched entries.
			for i, interval := range append(intervals, intervals[0]) {
				l := load(workloadPatch, modeOpen, snapClients, cfg.goalDuration)
				l.rate, l.noRequestIDs = rate, i == len(intervals)
				add(cell{group: groupSnapshots, system: systemSessiond, shape: shapeOf(snapShape), load: l, snapshotInterval: interval, rep: rep})
			}
		}
	}
	if cfg.scenario == scenarioCustom {
		for _, sh := range cfg.shapes {
			for _, wl := range cfg.workloads {
				for _, mode := range cfg.modes {
					for _, n := range cfg.clients {
						c := cell{group: groupCustom, shape: sh, load: load(wl, mode, n, cfg.duration), snapshotInterval: cfg.snapshotInterval}
						both(c, cfg.reps, cfg.reps)
					}
				}
			}
		}
	}
	return cells
}

// capped lists, for the report, where the baseline was run with less than sessiond.
func capped(cfg *config) []string {
	if !cfg.baseline {
		return []string{"the baseline was not run (-baseline=false)"}
	}
	if cfg.smoke {
		cfg = smokeConfig(cfg)
	}
	out := []string{
		fmt.Sprintf("baseline window %v per run (sessiond: %v after %v warmup); the goal runs use %v for both. "+
			"Operations in progress when a baseline window closes still finish (a lock wait up to its %v timeout), "+
			"so the baseline's throughput is its completed operations over the window plus that drain",
			cfg.baselineDuration, cfg.duration, cfg.warmup, cfg.goalDuration, cfg.lockTimeout),
		fmt.Sprintf("open loop: the baseline is offered %g ops/s in all, sessiond %g ops/s (the snapshot runs %d ops/s); "+
			"the baseline cannot sustain sessiond's rate on any store", cfg.baselineRate, cfg.rate, snapRate),
		fmt.Sprintf("baseline mixed workload on the 1kx50k store: at most %d writer processes "+
			"(every legacy get holds the 50 MB file and its parse, 200-260 MB; 64 and 256 of them would exhaust memory)", baselineMixedCap1kx50k),
	}
	if cfg.lockTimeout != legacyLockTimeout || cfg.lockPoll != legacyLockPoll {
		out = append(out, fmt.Sprintf("baseline lock timeout %v and poll %v instead of the protocol's %v and %v",
			cfg.lockTimeout, cfg.lockPoll, legacyLockTimeout, legacyLockPoll))
	}
	return out
}
