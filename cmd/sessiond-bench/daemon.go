package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"sessiond/ipc"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100 on
// every Linux architecture Go supports; the kernel fixed it for user space.
const clockTicks = 100

// moduleRoot returns the directory of the sessiond module (the go.mod above the
// working directory), where `go build` must run.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module sessiond")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the sessiond module (go.mod) is not above the working directory; pass -sessiond")
		}
		dir = parent
	}
}

// buildDaemon builds ./cmd/sessiond into dir and returns the binary's path. Blocks for
// the build.
func buildDaemon(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "sessiond")
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version=bench", "-o", bin, "./cmd/sessiond")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/sessiond: %w\n%s", err, out)
	}
	return bin, nil
}

// daemon is one sessiond process started for one run. Not goroutine-safe.
type daemon struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // valid once exited is closed
	socket  string
	logPath string
	logFile *os.File
	readyIn time.Duration // from exec to the first status answered in phase serving
}

// startDaemon runs `bin serve` on store, logging JSON at logLevel into a file beside it,
// and returns once it answers status in phase "serving". Blocks for the store's load.
func startDaemon(ctx context.Context, bin, store, logLevel string, extra ...string) (*daemon, error) {
	d := &daemon{
		socket:  store + ".sock",
		logPath: store + ".log",
		exited:  make(chan struct{}),
	}
	var err error
	if d.logFile, err = os.Create(d.logPath); err != nil {
		return nil, fmt.Errorf("daemon log: %w", err)
	}
	args := append([]string{"serve", "--store", store, "--socket", d.socket,
		"--log-format", "json", "--log-level", logLevel}, extra...)
	// Not CommandContext: the daemon is stopped with SIGTERM so that it writes its final
	// snapshot and removes its socket; stop does that, also when ctx ends.
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logFile, d.logFile
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		d.logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()

	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-d.exited:
			cancel()
		case <-rctx.Done():
		}
	}()
	c := ipc.NewClient(d.socket, ipc.WithRetryFor(2*time.Minute))
	defer c.Close()
	for {
		st, err := c.Status(rctx)
		if err == nil && st.Phase == "serving" {
			break
		}
		if rctx.Err() != nil {
			_ = d.stop(5 * time.Second)
			return nil, fmt.Errorf("sessiond did not become ready: %v (log %s)%s", err, d.logPath, d.logTail())
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-rctx.Done():
		}
	}
	d.readyIn = time.Since(start)
	return d, nil
}

// pid is the daemon's process id.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM and waits for the exit (the final snapshot included), killing the
// process after timeout. Idempotent. It reports an exit that was not clean.
func (d *daemon) stop(timeout time.Duration) error {
	defer d.logFile.Close()
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(timeout):
			_ = d.cmd.Process.Kill()
			<-d.exited
			return fmt.Errorf("sessiond did not stop within %v after SIGTERM; killed", timeout)
		}
	}
	if d.waitErr != nil {
		return fmt.Errorf("sessiond exited: %w%s", d.waitErr, d.logTail())
	}
	return nil
}

// logTail returns the last lines of the daemon's log, for error messages.
func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "\n  " + strings.Join(lines, "\n  ")
}

// procCPU returns the CPU time (user + system) pid has used so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: count from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// procPeakRSS returns VmHWM of pid in bytes: the most resident memory it ever had.
func procPeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status VmHWM: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// selfCPU returns the CPU time this process has used so far (the client side of a run).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru) // cannot fail with RUSAGE_SELF
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// daemonLog is what the daemon's JSON log says about a run.
type daemonLog struct {
	Load      time.Duration   // "store loaded" took
	Snapshots []time.Duration // "snapshot written" took, in order
	// Compactions are "journal compacted" took: the journal rewritten on the actor
	// goroutine after a snapshot, once it outgrew its limit.
	Compactions []time.Duration
	// SlowFsyncs are "journal fsync was slow" took: every journal fsync of 10 ms or more
	// (debug level), the disk's stalls as the daemon met them.
	SlowFsyncs []time.Duration
	Problems   []string // WARN and ERROR lines but slow fsyncs, and anything that is not JSON (a panic)
}

// parseDaemonLog reads the log of a daemon run with --log-format json. Snapshots and
// compactions logged at or after until (the stop: the final snapshot) are not counted.
// Durations of slog's JSON handler are integer nanoseconds.
func parseDaemonLog(path string, until time.Time) (daemonLog, error) {
	var out daemonLog
	f, err := os.Open(path)
	if err != nil {
		return out, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		// Most lines are per-request debug lines: skip them before paying for a decode.
		if bytes.Contains(line, []byte(`"msg":"request"`)) {
			continue
		}
		var rec struct {
			Time  time.Time `json:"time"`
			Level string    `json:"level"`
			Msg   string    `json:"msg"`
			Took  int64     `json:"took"`
		}
		if json.Unmarshal(line, &rec) != nil {
			if len(bytes.TrimSpace(line)) > 0 && len(out.Problems) < 20 {
				out.Problems = append(out.Problems, string(line))
			}
			continue
		}
		switch {
		case rec.Msg == "store loaded":
			out.Load = time.Duration(rec.Took)
		case !rec.Time.Before(until) && (rec.Msg == "snapshot written" || rec.Msg == "journal compacted"):
		case rec.Msg == "snapshot written":
			out.Snapshots = append(out.Snapshots, time.Duration(rec.Took))
		case rec.Msg == "journal compacted":
			out.Compactions = append(out.Compactions, time.Duration(rec.Took))
		case strings.HasPrefix(rec.Msg, "journal fsync was slow"):
			out.SlowFsyncs = append(out.SlowFsyncs, time.Duration(rec.Took))
		case (rec.Level == "WARN" || rec.Level == "ERROR") && len(out.Problems) < 20:
			out.Problems = append(out.Problems, string(line))
		}
	}
	return out, sc.Err()
}
