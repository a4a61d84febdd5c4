// Package integration drives the real sessiond binary over its socket and with real
// signals. The binary is built once (with the race detector) in TestMain; every test
// starts its own daemon on a store in a short temp dir and checks on exit that it
// neither panicked nor raced.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"sessiond/ipc"
)

// bin is the sessiond binary under test.
var bin string

func TestMain(m *testing.M) {
	if child := os.Getenv("SESSIOND_TEST_CHILD"); child != "" {
		os.Exit(childMain(child))
	}
	dir, err := os.MkdirTemp("", "sdbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "sessiond")
	// A race-built binary sleeps a second at exit by default: every CLI call, every stop
	// and the preflight of every restart would pay it.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	build := exec.Command("go", "build", "-race", "-ldflags", "-X main.version=itest", "-o", bin, "sessiond/cmd/sessiond")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sessiond:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// Every client, reader and daemon watcher a test started must be gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// childMain runs helper processes that the tests start from this same test binary.
func childMain(kind string) int {
	switch kind {
	case "reader":
		return readerMain(os.Args[len(os.Args)-1])
	}
	fmt.Fprintln(os.Stderr, "unknown child", kind)
	return 2
}

// syncBuffer collects a child's stderr while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type daemon struct {
	t      *testing.T
	dir    string
	store  string
	socket string
	args   []string
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

// newDir makes a short temp dir (sun_path is 108 bytes) removed after the test.
func newDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startDaemon runs `sessiond serve` on dir/sessions.json and waits until it answers.
func startDaemon(t *testing.T, dir string, extra ...string) *daemon {
	t.Helper()
	d := launch(t, dir, extra...)
	d.waitReady()
	return d
}

// launch starts the daemon without waiting for it.
func launch(t *testing.T, dir string, extra ...string) *daemon {
	t.Helper()
	return launchWith(t, dir, bin, nil, extra...)
}

// launchWith starts the binary at path (a copy of bin, for tests that replace it) with
// extra environment variables.
func launchWith(t *testing.T, dir, path string, env []string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, dir: dir, store: filepath.Join(dir, "sessions.json"), stderr: &syncBuffer{}, done: make(chan struct{})}
	d.socket = d.store + ".sock"
	d.args = append([]string{"serve", "--store", d.store, "--log-format", "json", "--log-level", "debug"}, extra...)
	d.cmd = exec.Command(path, d.args...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stderr = d.stderr
	require.NoError(t, d.cmd.Start())
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("sessiond stderr:\n%s", d.stderr.String())
		}
	})
	return d
}

func (d *daemon) waitReady() {
	d.t.Helper()
	require.Eventually(d.t, func() bool {
		select {
		case <-d.done:
			d.t.Fatalf("sessiond exited during start-up: %v\n%s", d.err, d.stderr.String())
		default:
		}
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintln(c, `{"jsonrpc":"2.0","id":1,"method":"status"}`)
		line, err := bufio.NewReader(c).ReadBytes('\n')
		return err == nil && bytes.Contains(line, []byte(`"phase":"serving"`))
	}, 60*time.Second, 5*time.Millisecond, "sessiond did not become ready")
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	require.NoError(d.t, d.cmd.Process.Signal(sig))
}

// wait waits for the daemon to exit and checks it neither panicked nor raced. It returns
// the exit error (nil for exit status 0).
func (d *daemon) wait() error {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		d.t.Fatalf("sessiond did not exit\n%s", d.stderr.String())
	}
	d.checkLog()
	return d.err
}

// stop sends SIGTERM and requires a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	d.signal(syscall.SIGTERM)
	require.NoError(d.t, d.wait(), d.stderr.String())
}

func (d *daemon) checkLog() {
	d.t.Helper()
	out := d.stderr.String()
	for _, bad := range []string{"panic:", "DATA RACE", "fatal error:"} {
		require.NotContains(d.t, out, bad, out)
	}
}

func (d *daemon) client(opts ...ipc.ClientOption) *ipc.Client {
	c := ipc.NewClient(d.socket, opts...)
	d.t.Cleanup(func() { c.Close() })
	return c
}

// cli runs a client subcommand of the binary against the daemon.
func (d *daemon) cli(stdin string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(bin, append(args[:1:1], append([]string{"--socket", d.socket}, args[1:]...)...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// rawConn is a line-oriented connection for speaking the protocol by hand.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, socket string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReaderSize(c, 1<<20)}
}

func (rc *rawConn) send(lines ...string) {
	rc.t.Helper()
	for _, l := range lines {
		_, err := rc.c.Write([]byte(l + "\n"))
		require.NoError(rc.t, err)
	}
}

// recv reads one message and decodes it.
func (rc *rawConn) recv() map[string]any {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := rc.r.ReadBytes('\n')
	require.NoError(rc.t, err)
	var m map[string]any
	require.NoError(rc.t, json.Unmarshal(line, &m), string(line))
	return m
}

// call sends one request and returns its response.
func (rc *rawConn) call(line string) map[string]any {
	rc.t.Helper()
	rc.send(line)
	return rc.recv()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// readerMain keeps parsing the store file until killed; any failure to parse exits 1
// with the offending bytes' length. A missing file is fine (not written yet).
func readerMain(path string) int {
	n := 0
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			var v map[string]json.RawMessage
			if err := json.Unmarshal(b, &v); err != nil {
				fmt.Fprintf(os.Stderr, "read %d: %d bytes do not parse: %v\n", n, len(b), err)
				return 1
			}
			n++
			if n%50 == 0 {
				fmt.Fprintf(os.Stdout, "%d\n", n)
			}
		}
	}
}

// skipUnlessRequired skips a test that this machine cannot run (it needs root), unless
// SESSIOND_TEST_ALL is set, as .ci/run sets it: there the test fails instead, so that CI
// can never pass without having run it.
func skipUnlessRequired(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("SESSIOND_TEST_ALL") != "" {
		t.Fatalf("SESSIOND_TEST_ALL is set but this test cannot run here: %s", why)
	}
	t.Skip(why + " (CI runs it: SESSIOND_TEST_ALL)")
}
