package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The legacy protocol's constants, as the writers that sessiond replaces used them.
const (
	legacyLockPoll    = 25 * time.Millisecond
	legacyLockTimeout = 10 * time.Second
)

// Errors of the baseline.
var (
	// errLockTimeout is a legacy write that gave up waiting for sessions.json.lock: the
	// write is dropped, the message it carried is lost.
	errLockTimeout = errors.New("timed out waiting for sessions.json.lock")
)

// reasonLockTimeout is how a dropped legacy write is counted among a run's errors.
const reasonLockTimeout = "lock_timeout"

// childRoleEnv names the role of a process re-executed from the bench binary; its
// value childRoleBaseline makes it one legacy writer.
const (
	childRoleEnv      = "SESSIOND_BENCH_ROLE"
	childRoleBaseline = "baseline-writer"
)

// Parse modes of the baseline: how much of JSON.parse's work a legacy write redoes.
const (
	// parseFull decodes every value into map[string]any, as JSON.parse builds every
	// object. encoding/json does this 2-3x slower than Node.js does (see BENCHMARKS.md),
	// so this baseline is slower than the writers it stands for.
	parseFull = "full"
	// parseRaw validates the whole file (json.Valid) and splits it into its top-level
	// entries, decoding only the entry it changes and writing the others back as they
	// were read: as fast as Node.js's JSON.parse + JSON.stringify on the 5 MB store and
	// twice as fast on the 50 MB one, so a ratio against it is not flattering sessiond.
	parseRaw = "raw"
)

// legacyStore is sessions.json as a legacy writer holds it after JSON.parse: the
// top-level keys in file order (JavaScript objects keep insertion order, and the legacy
// writer relied on it) and the values, decoded by encoding/json into map[string]any
// (parseFull) or kept as the json.RawMessage they were read as (parseRaw) until changed.
// Inside decoded values Go's maps lose field order (encoding/json writes them sorted);
// the legacy writer kept it, but the cost, a parse and a re-serialisation of the whole
// file per write, is the same.
type legacyStore struct {
	keys []string
	vals map[string]any
}

// parseLegacy decodes a whole store in mode parseFull or parseRaw.
func parseLegacy(b []byte, mode string) (*legacyStore, error) {
	if mode == parseRaw {
		return splitLegacy(b)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("parse store: want an object, got %v (%v)", tok, err)
	}
	s := &legacyStore{vals: make(map[string]any)}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("parse store: %w", err)
		}
		key, _ := tok.(string) // inside an object, More guarantees a key
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("parse store: value of %q: %w", key, err)
		}
		if _, dup := s.vals[key]; !dup {
			s.keys = append(s.keys, key)
		}
		s.vals[key] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("parse store: %w", err)
	}
	return s, nil
}

// splitLegacy is parseLegacy's raw mode: validate everything, then cut the top-level
// object into keys and raw values with a scanner that only tracks strings and nesting.
func splitLegacy(b []byte) (*legacyStore, error) {
	if !json.Valid(b) {
		return nil, errors.New("parse store: invalid JSON")
	}
	s := &legacyStore{vals: make(map[string]any)}
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errors.New("parse store: want an object")
	}
	i = skipSpace(b, i+1)
	for i < len(b) && b[i] != '}' {
		end := stringEnd(b, i)
		var key string
		if err := json.Unmarshal(b[i:end], &key); err != nil {
			return nil, fmt.Errorf("parse store: key: %w", err)
		}
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // the colon
		start := i
		i = valueEnd(b, i)
		if _, dup := s.vals[key]; !dup {
			s.keys = append(s.keys, key)
		}
		s.vals[key] = json.RawMessage(b[start:i])
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return s, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the index just past the JSON value that starts at b[i]; b is valid.
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(b) && !bytes.ContainsRune([]byte(",}] \t\r\n"), rune(b[i])) { // number, true, false, null
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string that starts at b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// value returns the decoded value of key (nil if missing), decoding a raw one.
func (s *legacyStore) value(key string) any {
	v := s.vals[key]
	if raw, ok := v.(json.RawMessage); ok {
		var d any
		_ = json.Unmarshal(raw, &d) // validated when the file was parsed
		return d
	}
	return v
}

// set stores v under key, appending a new key at the end as JavaScript would.
func (s *legacyStore) set(key string, v any) {
	if _, ok := s.vals[key]; !ok {
		s.keys = append(s.keys, key)
	}
	s.vals[key] = v
}

// encode lays the store out as JSON.stringify(store, null, 2) does.
func (s *legacyStore) encode() []byte {
	var b bytes.Buffer
	if len(s.keys) == 0 {
		return []byte("{}")
	}
	b.WriteString("{\n")
	for i, k := range s.keys {
		b.WriteString("  ")
		b.WriteString(quote(k))
		b.WriteString(": ")
		if raw, ok := s.vals[k].(json.RawMessage); ok {
			b.Write(raw) // as read: already laid out for its place in the file
		} else {
			b.Write(encodeValue(s.vals[k]))
		}
		if i < len(s.keys)-1 {
			b.WriteString(",\n")
		}
	}
	b.WriteString("\n}")
	return b.Bytes()
}

// mergePatch applies an RFC 7396 merge patch to target and returns the result.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = make(map[string]any)
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
		} else {
			t[k] = mergePatch(t[k], v)
		}
	}
	return t
}

// legacyPhases is where the time of legacy writes went, summed over the writes that
// completed. Encoded as nanoseconds.
type legacyPhases struct {
	Wait   time.Duration `json:"wait"`   // polling for the lock
	Read   time.Duration `json:"read"`   // reading the whole file
	Parse  time.Duration `json:"parse"`  // decoding it
	Encode time.Duration `json:"encode"` // changing one entry and re-serialising everything
	Write  time.Duration `json:"write"`  // writing the temp file
	Fsync  time.Duration `json:"fsync"`
	Rename time.Duration `json:"rename"` // rename over sessions.json and unlink the lock
}

// legacyWriter performs writes with the legacy file-lock protocol. One per process;
// not goroutine-safe (the protocol has one writer per process).
type legacyWriter struct {
	parse         string // parseFull or parseRaw
	store, lock   string
	pid           int
	timeout, poll time.Duration
	tmpSeq        int
	recordCS      bool
	cs            [][2]int64 // [acquired, released) in Unix nanoseconds, when recordCS
	phases        legacyPhases
}

func newLegacyWriter(store, parse string, timeout, poll time.Duration) *legacyWriter {
	return &legacyWriter{parse: parse, store: store, lock: store + ".lock", pid: os.Getpid(), timeout: timeout, poll: poll}
}

// acquire takes sessions.json.lock by exclusive create, polling while another writer
// holds it, and gives up with errLockTimeout after w.timeout. A lock left by a writer
// that died is never broken: the legacy writers had no way to tell it from a slow one.
func (w *legacyWriter) acquire() error {
	deadline := time.Now().Add(w.timeout)
	for {
		f, err := os.OpenFile(w.lock, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			_, err = fmt.Fprintf(f, `{"pid":%d,"createdAt":%d}`, w.pid, time.Now().UnixMilli())
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				_ = os.Remove(w.lock)
				return fmt.Errorf("write lock %s: %w", w.lock, err)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("take lock %s: %w", w.lock, err)
		}
		if !time.Now().Before(deadline) {
			return errLockTimeout
		}
		time.Sleep(w.poll) // the protocol itself: there is nothing to wait on but time
	}
}

// update runs one legacy write: lock, read and parse the whole file, mutate, write a
// temp file, fsync, rename over the store, unlock. Blocks up to w.timeout for the lock.
func (w *legacyWriter) update(mutate func(*legacyStore) error) error {
	t0 := time.Now()
	if err := w.acquire(); err != nil {
		return err
	}
	t1 := time.Now()
	var ph legacyPhases
	ph.Wait = t1.Sub(t0)
	err := w.locked(mutate, &ph)
	released := time.Now()
	if w.recordCS {
		w.cs = append(w.cs, [2]int64{t1.UnixNano(), released.UnixNano()})
	}
	if rerr := os.Remove(w.lock); err == nil && rerr != nil {
		err = fmt.Errorf("remove lock: %w", rerr)
	}
	if err != nil {
		return err
	}
	ph.Rename += time.Since(released)
	w.phases.Wait += ph.Wait
	w.phases.Read += ph.Read
	w.phases.Parse += ph.Parse
	w.phases.Encode += ph.Encode
	w.phases.Write += ph.Write
	w.phases.Fsync += ph.Fsync
	w.phases.Rename += ph.Rename
	return nil
}

// locked is the part of update that runs under the lock.
func (w *legacyWriter) locked(mutate func(*legacyStore) error, ph *legacyPhases) error {
	t := time.Now()
	lap := func(d *time.Duration) {
		now := time.Now()
		*d += now.Sub(t)
		t = now
	}
	b, err := os.ReadFile(w.store)
	if err != nil {
		return fmt.Errorf("read store: %w", err)
	}
	lap(&ph.Read)
	s, err := parseLegacy(b, w.parse)
	if err != nil {
		return err
	}
	lap(&ph.Parse)
	if err := mutate(s); err != nil {
		return err
	}
	out := s.encode()
	lap(&ph.Encode)
	w.tmpSeq++
	tmp := w.store + "." + strconv.Itoa(w.pid) + "." + strconv.Itoa(w.tmpSeq) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if _, err := f.Write(out); err != nil {
		f.Close()
		return fmt.Errorf("write temp file: %w", err)
	}
	lap(&ph.Write)
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync temp file: %w", err)
	}
	lap(&ph.Fsync)
	if err := f.Close(); err != nil {
		return fmt.Errorf("close temp file: %w", err)
	}
	if err := os.Rename(tmp, w.store); err != nil {
		return fmt.Errorf("rename temp file: %w", err)
	}
	lap(&ph.Rename)
	return nil
}

// read is a legacy reader: the whole file, parsed, without the lock.
func (w *legacyWriter) read(key string) error {
	b, err := os.ReadFile(w.store)
	if err != nil {
		return fmt.Errorf("read store: %w", err)
	}
	s, err := parseLegacy(b, w.parse)
	if err != nil {
		return err
	}
	if _, ok := s.vals[key]; !ok {
		return fmt.Errorf("get %q: not found", key)
	}
	return nil
}

// childConfig is the command line of one baseline writer process.
type childConfig struct {
	store, keysFile   string
	parse             string
	workload, mode    string
	index, clients    int
	rate              float64 // open loop: this process's share of the offered rate
	entryBytes        int
	seed              uint64
	lockTimeout, poll time.Duration
	recordCS          bool
}

func (c childConfig) args() []string {
	return []string{
		"-store", c.store, "-keys", c.keysFile, "-parse", c.parse, "-workload", c.workload, "-mode", c.mode,
		"-index", strconv.Itoa(c.index), "-clients", strconv.Itoa(c.clients),
		"-rate", strconv.FormatFloat(c.rate, 'g', -1, 64), "-entry-bytes", strconv.Itoa(c.entryBytes),
		"-seed", strconv.FormatUint(c.seed, 10), "-lock-timeout", c.lockTimeout.String(),
		"-lock-poll", c.poll.String(), "-record-cs=" + strconv.FormatBool(c.recordCS),
	}
}

// childResult is what one baseline writer process reports on stdout when done.
type childResult struct {
	Lat    []time.Duration  `json:"lat_ns"` // successful operations
	Writes int64            `json:"writes"` // successful operations that wrote
	Errors map[string]int64 `json:"errors"`
	Unsent int64            `json:"unsent"`
	Last   int64            `json:"last_unix_ns"` // when the last operation ended
	Phases legacyPhases     `json:"phases"`
	CS     [][2]int64       `json:"critical_sections,omitempty"`
	// PeakRSS is the process's VmHWM. Not the parent's rusage Maxrss: Go starts children
	// with vfork semantics, and that figure then counts the parent's memory too.
	PeakRSS int64 `json:"peak_rss"`
}

// childMain is a baseline writer process: it prints "ready", reads "START END" (Unix
// nanoseconds) on stdin, runs its workload in that window (finishing the operation in
// progress at END, lock wait included), and prints a childResult.
func childMain(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var c childConfig
	fl := flag.NewFlagSet(childRoleBaseline, flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar(&c.store, "store", "", "sessions.json")
	fl.StringVar(&c.keysFile, "keys", "", "file of the store's keys, one a line")
	fl.StringVar(&c.parse, "parse", parseFull, "full or raw")
	fl.StringVar(&c.workload, "workload", workloadPatch, "patch, mixed, put or incr")
	fl.StringVar(&c.mode, "mode", modeClosed, "closed or open")
	fl.IntVar(&c.index, "index", 0, "this writer's number")
	fl.IntVar(&c.clients, "clients", 1, "writers in all")
	fl.Float64Var(&c.rate, "rate", 1, "open loop: this writer's operations per second")
	fl.IntVar(&c.entryBytes, "entry-bytes", 500, "size of a put's value")
	fl.Uint64Var(&c.seed, "seed", 1, "random seed")
	fl.DurationVar(&c.lockTimeout, "lock-timeout", legacyLockTimeout, "give up waiting for the lock after this")
	fl.DurationVar(&c.poll, "lock-poll", legacyLockPoll, "lock polling interval")
	fl.BoolVar(&c.recordCS, "record-cs", false, "report when the lock was held")
	if err := fl.Parse(args); err != nil {
		return err
	}
	kb, err := os.ReadFile(c.keysFile)
	if err != nil {
		return fmt.Errorf("read keys: %w", err)
	}
	ws := workSet{keys: strings.Split(strings.TrimSuffix(string(kb), "\n"), "\n")}
	var puts []any
	if c.workload == workloadPut {
		for _, raw := range putValues(shape{EntryBytes: c.entryBytes}, 8, c.seed) {
			var v any
			_ = json.Unmarshal(raw, &v) // generated: valid
			puts = append(puts, v)
		}
	}
	w := newLegacyWriter(c.store, c.parse, c.lockTimeout, c.poll)
	w.recordCS = c.recordCS
	r := rand.New(rand.NewPCG(c.seed, uint64(c.index)))

	fmt.Fprintln(stdout, "ready")
	var startNS, endNS int64
	if _, err := fmt.Fscan(stdin, &startNS, &endNS); err != nil {
		return fmt.Errorf("read window: %w", err)
	}
	start, end := time.Unix(0, startNS), time.Unix(0, endNS)
	res := childResult{Errors: make(map[string]int64)}

	op := func(seq int) (bool, error) {
		kind := c.workload
		if kind == workloadMixed {
			kind = workloadPatch
			if r.IntN(5) != 0 {
				return false, w.read(ws.keys[r.IntN(len(ws.keys))])
			}
		}
		switch kind {
		case workloadPatch:
			key := ws.keys[r.IntN(len(ws.keys))]
			var merge any
			_ = json.Unmarshal(patchMerge(nil, r, time.Now().UnixMilli()), &merge) // generated: valid
			return true, w.update(func(s *legacyStore) error {
				s.set(key, mergePatch(s.value(key), merge))
				return nil
			})
		case workloadPut:
			return true, w.update(func(s *legacyStore) error {
				s.set(benchKey(c.index, seq), puts[seq%len(puts)])
				return nil
			})
		case workloadIncr:
			return true, w.update(func(s *legacyStore) error {
				v, _ := s.value(ws.keys[0]).(map[string]any)
				if v == nil {
					v = make(map[string]any)
				}
				n, _ := v["benchCounter"].(float64)
				v["benchCounter"] = n + 1
				s.set(ws.keys[0], v)
				return nil
			})
		}
		return false, fmt.Errorf("unknown workload %q", c.workload)
	}
	record := func(from time.Time, write bool, err error) {
		now := time.Now()
		res.Last = now.UnixNano()
		switch {
		case errors.Is(err, errLockTimeout):
			res.Errors[reasonLockTimeout]++
		case err != nil:
			res.Errors["io_error"]++
			fmt.Fprintln(stderr, "baseline writer:", err)
		default:
			res.Lat = append(res.Lat, now.Sub(from))
			if write {
				res.Writes++
			}
		}
	}

	time.Sleep(time.Until(start))
	if c.mode == modeOpen {
		// This writer's share of the offered rate, staggered against the other writers.
		interval := time.Duration(float64(time.Second) / c.rate)
		offset := interval * time.Duration(c.index) / time.Duration(max(c.clients, 1))
		for seq := 0; ; seq++ {
			due := start.Add(offset + time.Duration(seq)*interval)
			if !due.Before(end) {
				break
			}
			if !time.Now().Before(end) {
				res.Unsent = int64((end.Sub(start)-offset-1)/interval) + 1 - int64(seq)
				break
			}
			time.Sleep(time.Until(due))
			write, err := op(seq)
			record(due, write, err)
		}
	} else {
		for seq := 0; time.Now().Before(end); seq++ {
			t0 := time.Now()
			write, err := op(seq)
			record(t0, write, err)
		}
	}
	res.Phases, res.CS = w.phases, w.cs
	res.PeakRSS, _ = procPeakRSS(os.Getpid()) // 0 if unreadable: shows as such in the report
	return json.NewEncoder(stdout).Encode(res)
}

// BaselineStats is what a baseline run cost its writer processes.
type BaselineStats struct {
	Processes int     `json:"processes"`
	CPUs      float64 `json:"cpu_s"`               // all writer processes together
	PeakRSSMB float64 `json:"peak_rss_mb_process"` // the largest writer process
	// PerWriteMs is the mean time of a completed write by phase: wait (for the lock),
	// read, parse, encode, write, fsync, rename.
	PerWriteMs map[string]float64 `json:"per_write_ms"`
}

// baselineSpec is one baseline run.
type baselineSpec struct {
	exe         string // the bench binary, re-executed as writer processes
	parse       string // parseFull or parseRaw
	store       string
	keysFile    string
	entryBytes  int
	load        loadSpec // warmup is ignored: every legacy write is cold anyway
	lockTimeout time.Duration
	lockPoll    time.Duration
	seed        uint64
	recordCS    bool
}

// driveBaseline runs spec.load.clients legacy writer processes against spec.store.
// Blocks for the window plus the drain: every operation in progress at the end of the
// window finishes, so a lock wait that started in it can still time out and be counted.
func driveBaseline(ctx context.Context, spec baselineSpec) (loadOutcome, BaselineStats, []childResult, error) {
	n := spec.load.clients
	type child struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		stdout *bufio.Reader
		stderr bytes.Buffer
	}
	children := make([]*child, n)
	env := append(os.Environ(), childRoleEnv+"="+childRoleBaseline,
		// One thread per writer, like the Node.js processes the protocol comes from.
		"GOMAXPROCS=1")
	// abort ends the writers started so far and reaps them.
	abort := func() {
		for _, ch := range children {
			if ch != nil {
				_ = ch.cmd.Process.Kill()
				_ = ch.cmd.Wait()
			}
		}
	}
	for i := range children {
		cfg := childConfig{
			store: spec.store, keysFile: spec.keysFile, parse: spec.parse, workload: spec.load.workload, mode: spec.load.mode,
			index: i, clients: n, rate: spec.load.rate / float64(n), entryBytes: spec.entryBytes,
			seed: spec.seed, lockTimeout: spec.lockTimeout, poll: spec.lockPoll, recordCS: spec.recordCS,
		}
		ch := &child{cmd: exec.CommandContext(ctx, spec.exe, cfg.args()...)}
		ch.cmd.Env = env
		ch.cmd.Stderr = &ch.stderr
		var err error
		if ch.stdin, err = ch.cmd.StdinPipe(); err != nil {
			abort()
			return loadOutcome{}, BaselineStats{}, nil, err
		}
		out, err := ch.cmd.StdoutPipe()
		if err != nil {
			abort()
			return loadOutcome{}, BaselineStats{}, nil, err
		}
		ch.stdout = bufio.NewReaderSize(out, 1<<20)
		if err := ch.cmd.Start(); err != nil {
			abort()
			return loadOutcome{}, BaselineStats{}, nil, fmt.Errorf("start baseline writer: %w", err)
		}
		children[i] = ch
	}
	for i, ch := range children {
		line, err := ch.stdout.ReadString('\n')
		if err != nil || line != "ready\n" {
			abort()
			return loadOutcome{}, BaselineStats{}, nil, fmt.Errorf("baseline writer %d not ready: %q %v: %s", i, line, err, ch.stderr.String())
		}
	}
	// Every writer starts at the same instant, a little ahead so that all have read it.
	start := time.Now().Add(20*time.Millisecond + time.Duration(n)*100*time.Microsecond)
	end := start.Add(spec.load.duration)
	for _, ch := range children {
		fmt.Fprintf(ch.stdin, "%d %d\n", start.UnixNano(), end.UnixNano())
		ch.stdin.Close()
	}

	results := make([]childResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, ch := range children {
		wg.Go(func() {
			if err := json.NewDecoder(ch.stdout).Decode(&results[i]); err != nil {
				errs[i] = fmt.Errorf("baseline writer %d: result: %w", i, err)
			}
		})
	}
	wg.Wait()
	out := loadOutcome{rec: newRecorder(), start: start, end: end}
	stats := BaselineStats{Processes: n, PerWriteMs: make(map[string]float64)}
	var phases legacyPhases
	var writes int64
	for i, ch := range children {
		werr := ch.cmd.Wait()
		if errs[i] == nil && werr != nil {
			errs[i] = fmt.Errorf("baseline writer %d: %w: %s", i, werr, ch.stderr.String())
		}
		if st := ch.cmd.ProcessState; st != nil {
			stats.CPUs += (st.UserTime() + st.SystemTime()).Seconds()
		}
		res := results[i]
		stats.PeakRSSMB = max(stats.PeakRSSMB, float64(res.PeakRSS)/(1<<20))
		out.rec.lat = append(out.rec.lat, res.Lat...)
		out.rec.writes += res.Writes
		for k, v := range res.Errors {
			out.rec.errs[k] += v
		}
		out.unsent += res.Unsent
		if t := time.Unix(0, res.Last); res.Last > 0 && t.After(out.rec.last) {
			out.rec.last = t
		}
		writes += res.Writes
		phases.Wait += res.Phases.Wait
		phases.Read += res.Phases.Read
		phases.Parse += res.Phases.Parse
		phases.Encode += res.Phases.Encode
		phases.Write += res.Phases.Write
		phases.Fsync += res.Phases.Fsync
		phases.Rename += res.Phases.Rename
	}
	out.end = later(end, out.rec.last)
	if writes > 0 {
		per := func(d time.Duration) float64 { return ms(d / time.Duration(writes)) }
		stats.PerWriteMs = map[string]float64{
			"wait": per(phases.Wait), "read": per(phases.Read), "parse": per(phases.Parse),
			"encode": per(phases.Encode), "write": per(phases.Write), "fsync": per(phases.Fsync),
			"rename": per(phases.Rename),
		}
	}
	return out, stats, results, errors.Join(errs...)
}
