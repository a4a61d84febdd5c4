package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"sessiond/ipc"
)

// requireExitCode checks that err is a non-zero exit of a process that was not killed.
func requireExitCode(t *testing.T, err error, msgAndArgs ...any) int {
	t.Helper()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, msgAndArgs...)
	code := exitErr.ExitCode()
	require.Greater(t, code, 0, msgAndArgs...) // -1 would mean killed by a signal
	return code
}

// readStore parses sessions.json into its raw entries.
func readStore(t *testing.T, path string) map[string]json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(b, &m), string(b))
	return m
}

func TestSecondInstanceRefused(t *testing.T) {
	dir := newDir(t)
	d := startDaemon(t, dir)
	c := d.client()
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := c.Put(ctx, "k", json.RawMessage(`{"v":1}`))
	require.NoError(t, err)

	// The same store, through the same socket path or another one: refused at once.
	for _, extra := range [][]string{nil, {"--socket", filepath.Join(dir, "other.sock")}} {
		began := time.Now()
		second := launch(t, dir, extra...)
		err := second.wait()
		requireExitCode(t, err, "second instance %v: %s", extra, second.stderr.String())
		require.Less(t, time.Since(began), 15*time.Second, "the second instance waited instead of exiting")
		require.Contains(t, second.stderr.String(), "pid "+strconv.Itoa(d.pid()), "the message names the running pid")
	}
	_, err = os.Stat(filepath.Join(dir, "other.sock"))
	require.ErrorIs(t, err, os.ErrNotExist, "the refused instance left a socket")

	// The first one was not disturbed: its socket still leads to it.
	st, err := c.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, d.pid(), st.PID)
	e, err := c.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, `{"v":1}`, compactJSON(t, e.Value))
	c.Close()
	d.stop()
}

func TestUnparseableStoreRefused(t *testing.T) {
	cases := []struct {
		name    string
		content string
		offset  int
		reason  string // part of the reason in the message
	}{
		{"truncated", "{\n  \"a\": {\n    \"x\": 1", 21, "end of input"},
		{"trailing comma", "{\n  \"a\": {\n    \"x\": 1\n  },\n}", 27, "invalid character '}'"},
		{"top level array", `[{"a":{}}]`, 0, "not an object"},
		{"top level string", `"sessions"`, 0, "not an object"},
		{"garbage after the object", `{"a":{}} {"b":{}}`, 9, "after top-level value"},
		{"invalid UTF-8", "{\"a\":{\"s\":\"\xff\"}}", 11, "invalid UTF-8"},
		{"empty file", "", 0, "end of input"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := newDir(t)
			store := filepath.Join(dir, "sessions.json")
			require.NoError(t, os.WriteFile(store, []byte(tc.content), 0o644))
			old := time.Now().Add(-time.Hour).Truncate(time.Second)
			require.NoError(t, os.Chtimes(store, old, old))

			d := launch(t, dir)
			err := d.wait()
			stderr := d.stderr.String()
			requireExitCode(t, err, stderr)
			// The error is the last line, printed by main (the log before it is JSON).
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			msg := lines[len(lines)-1]
			require.Contains(t, msg, store, "the message names the file")
			require.Contains(t, msg, fmt.Sprintf("offset %d", tc.offset), "the message names the byte offset")
			require.Contains(t, msg, tc.reason)

			got, err := os.ReadFile(store)
			require.NoError(t, err)
			require.Equal(t, tc.content, string(got), "the refused store was modified")
			fi, err := os.Stat(store)
			require.NoError(t, err)
			require.True(t, fi.ModTime().Equal(old), "the refused store was rewritten")
			require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
			for _, left := range []string{".journal", ".sock"} {
				_, err := os.Stat(store + left)
				require.ErrorIs(t, err, os.ErrNotExist, "a refused start left %s behind", left)
			}
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			for _, e := range ents {
				require.Contains(t, []string{"sessions.json", "sessions.json.owner"}, e.Name(), "a refused start left a file")
			}
		})
	}
}

// TestCorruptedStoreBesideJournal: a store that sessiond wrote, damaged while it was down,
// is refused, and neither it nor the journal (the only other copy of the data) is touched.
func TestCorruptedStoreBesideJournal(t *testing.T) {
	dir := newDir(t)
	d := startDaemon(t, dir)
	_, err := d.client().Put(ctxTimeout(t, 20*time.Second), "k", json.RawMessage(`{"v":1}`))
	require.NoError(t, err)
	d.stop()
	good, err := os.ReadFile(d.store)
	require.NoError(t, err)
	bad := good[:len(good)-3]
	require.NoError(t, os.WriteFile(d.store, bad, 0o600))
	journal, err := os.ReadFile(d.store + ".journal")
	require.NoError(t, err, "a stopped daemon leaves its journal")

	d = launch(t, dir)
	requireExitCode(t, d.wait(), d.stderr.String())
	require.Contains(t, d.stderr.String(), fmt.Sprintf("offset %d", len(bad)))
	got, err := os.ReadFile(d.store)
	require.NoError(t, err)
	require.Equal(t, bad, got, "the refused store was modified")
	got, err = os.ReadFile(d.store + ".journal")
	require.NoError(t, err)
	require.Equal(t, journal, got, "the journal of a refused store was modified")
}

func TestMissingStoreStartsEmpty(t *testing.T) {
	d := startDaemon(t, newDir(t))
	c := d.client()
	ctx := ctxTimeout(t, 30*time.Second)
	st, err := c.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, st.Entries)
	require.Equal(t, int64(0), st.Rev)
	page, err := c.List(ctx, ipc.ListOptions{})
	require.NoError(t, err)
	require.Empty(t, page.Items)
	require.Equal(t, "", page.Next)
	c.Close()
	d.stop()
	b, err := os.ReadFile(d.store)
	require.NoError(t, err)
	require.Equal(t, "{}", string(b), "JSON.stringify({}, null, 2)")
	fi, err := os.Stat(d.store)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// TestLegacyLockIgnored: a sessions.json.lock of the old writers, even one held with
// flock, is reported and not waited on, and left alone.
func TestLegacyLockIgnored(t *testing.T) {
	dir := newDir(t)
	lockPath := filepath.Join(dir, "sessions.json.lock")
	require.NoError(t, os.WriteFile(lockPath, []byte("4242\n"), 0o644))
	f, err := os.Open(lockPath)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB))

	d := startDaemon(t, dir)
	var warned bool
	for _, line := range strings.Split(d.stderr.String(), "\n") {
		var rec struct{ Level, Msg, Path string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == "WARN" && rec.Path == lockPath {
			warned = true
		}
	}
	require.True(t, warned, "no warning naming %s:\n%s", lockPath, d.stderr.String())
	_, err = d.client().Put(ctxTimeout(t, 20*time.Second), "k", json.RawMessage(`{}`))
	require.NoError(t, err)
	d.stop()
	b, err := os.ReadFile(lockPath)
	require.NoError(t, err)
	require.Equal(t, "4242\n", string(b), "the legacy lock file was modified")
}

// TestServeDefaults runs `sessiond serve` with no flags at all: the store is
// ./sessions.json, the socket beside it with mode 0600, and SIGTERM removes it and exits 0.
func TestServeDefaults(t *testing.T) {
	dir := newDir(t)
	cmd := exec.Command(bin, "serve")
	cmd.Dir = dir
	var stderr syncBuffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	socket := filepath.Join(dir, "sessions.json.sock")
	c := ipc.NewClient(socket)
	defer c.Close()
	var st ipc.Status
	require.Eventually(t, func() bool {
		var err error
		st, err = c.Status(ctxTimeout(t, 5*time.Second))
		return err == nil && st.Phase == "serving"
	}, 60*time.Second, 10*time.Millisecond, "serve with no flags did not come up:\n%s", &stderr)
	store := filepath.Join(dir, "sessions.json")
	require.Equal(t, store, st.Store)
	require.Equal(t, store+".sock", st.Socket)
	require.Equal(t, cmd.Process.Pid, st.PID)
	fi, err := os.Stat(socket)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket, fi.Mode().Type())
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "socket mode")
	_, err = c.Put(ctxTimeout(t, 10*time.Second), "k", json.RawMessage(`{"v":1}`))
	require.NoError(t, err)
	c.Close()

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-done:
		require.NoError(t, waitErr, "exit status after SIGTERM:\n%s", &stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", &stderr)
	}
	_, err = os.Stat(socket)
	require.ErrorIs(t, err, os.ErrNotExist, "SIGTERM left the socket")
	require.Contains(t, readStore(t, filepath.Join(dir, "sessions.json")), "k")
	for _, bad := range []string{"panic:", "DATA RACE"} {
		require.NotContains(t, stderr.String(), bad)
	}
}

// TestSignalsStop: SIGINT stops like SIGTERM, and a stale socket file left by a killed
// instance does not stop the next one.
func TestSignalsStop(t *testing.T) {
	dir := newDir(t)
	d := startDaemon(t, dir)
	d.signal(syscall.SIGKILL)
	require.Error(t, d.wait())
	_, err := os.Stat(d.socket)
	require.NoError(t, err, "kill -9 cannot remove the socket; the next start must cope")

	d = startDaemon(t, dir)
	rc := dialRaw(t, d.socket)
	rc.ping(1)
	rc.c.Close()
	d.signal(syscall.SIGINT)
	require.NoError(t, d.wait(), d.stderr.String())
	_, err = os.Stat(d.socket)
	require.ErrorIs(t, err, os.ErrNotExist, "SIGINT left the socket")
}

// TestListenRefusesLiveSocket: a --socket path where another process listens is not
// stolen: the daemon refuses to start and the other listener keeps working.
func TestListenRefusesLiveSocket(t *testing.T) {
	dir := newDir(t)
	path := filepath.Join(dir, "busy.sock")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	defer ln.Close()
	d := launch(t, dir, "--socket", path)
	requireExitCode(t, d.wait(), d.stderr.String())
	_, err = os.Stat(path)
	require.NoError(t, err, "the live socket was removed")
	c, err := net.Dial("unix", path)
	require.NoError(t, err, "the live socket no longer leads to its listener")
	c.Close()
}

func TestServeHelp(t *testing.T) {
	cmd := exec.Command(bin, "serve", "-h")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), out.String())
	for _, flag := range []string{"-store", "-socket", "-log-level", "-log-format", "-snapshot-interval",
		"-queue-size", "-max-request-bytes", "-max-value-bytes", "-max-conns", "-allow-uid", "-allow-gid"} {
		require.Contains(t, out.String(), flag, "serve -h does not explain %s", flag)
	}
	require.Contains(t, out.String(), "SIGTERM")
}

// TestCLI drives every client subcommand of the binary.
func TestCLI(t *testing.T) {
	d := startDaemon(t, newDir(t))
	// run runs a subcommand that must succeed and print one line of JSON.
	run := func(stdin string, args ...string) map[string]any {
		t.Helper()
		out, stderr, err := d.cli(stdin, args...)
		require.NoError(t, err, "%v: %s", args, stderr)
		require.True(t, strings.HasSuffix(out, "\n") && strings.Count(out, "\n") == 1, "%v: want one line, got %q", args, out)
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &m), out)
		return m
	}
	// fail runs a subcommand that must fail with reason on stderr and nothing on stdout.
	fail := func(stdin, reason string, args ...string) int {
		t.Helper()
		out, stderr, err := d.cli(stdin, args...)
		code := requireExitCode(t, err, "%v: stdout %q stderr %q", args, out, stderr)
		require.Contains(t, stderr, reason, args)
		require.Empty(t, out, args)
		return code
	}

	// put: value as an argument, from stdin with "-", and from stdin with no argument
	m := run("", "put", "a", `{"x":1,"y":"<&>"}`)
	require.Equal(t, "a", m["key"])
	revA := m["rev"].(float64)
	m = run(`{"from":"stdin"}`, "put", "b", "-")
	require.Equal(t, "b", m["key"])
	m = run("{\"multi\":\n  [1,\n 2]}\n", "put", "c")
	require.Greater(t, m["rev"].(float64), revA)

	m = run("", "get", "a")
	require.Equal(t, map[string]any{"key": "a", "rev": revA, "value": map[string]any{"x": 1.0, "y": "<&>"}}, m)
	m = run("", "get", "c")
	require.Equal(t, map[string]any{"multi": []any{1.0, 2.0}}, m["value"])

	// patch, with --if-rev and --request-id
	m = run("", "patch", "a", `{"y":null,"z":true}`, "--if-rev", fmt.Sprint(revA), "--request-id", "cli-1")
	require.Equal(t, map[string]any{"x": 1.0, "z": true}, m["value"])
	revPatch := m["rev"].(float64)
	m = run("", "patch", "a", `{"y":null,"z":true}`, "--if-rev", fmt.Sprint(revA), "--request-id", "cli-1")
	require.Equal(t, revPatch, m["rev"], "a retried --request-id is answered with the original result")
	m = run(`{"w":1}`, "patch", "new", "--durable=false")
	require.Equal(t, map[string]any{"w": 1.0}, m["value"])

	// list: prefix, values, paging, --all
	for i := range 5 {
		run("", "put", fmt.Sprintf("p/%d", i), fmt.Sprintf(`{"i":%d}`, i))
	}
	m = run("", "list", "--prefix", "p/", "--limit", "2")
	require.Len(t, m["items"], 2)
	next, ok := m["next"].(string)
	require.True(t, ok, "next of a partial page: %v", m)
	m = run("", "list", "--prefix", "p/", "--limit", "2", "--cursor", next, "--values")
	items := m["items"].([]any)
	require.Len(t, items, 2)
	require.Equal(t, map[string]any{"i": 2.0}, items[0].(map[string]any)["value"])
	out, stderr, err := d.cli("", "list", "--prefix", "p/", "--limit", "2", "--all")
	require.NoError(t, err, stderr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 5, "--all prints every item as a line")
	for i, l := range lines {
		var it map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &it))
		require.Equal(t, fmt.Sprintf("p/%d", i), it["key"])
	}
	m = run("", "list")
	require.Nil(t, m["next"])
	require.Len(t, m["items"], 4+5)

	// txn from stdin
	revC := run("", "get", "c")["rev"].(float64)
	m = run(`[{"op":"put","key":"t","value":{"t":1}},{"op":"delete","key":"b"},{"op":"check","key":"c","if_rev":`+
		fmt.Sprint(revC)+`}]`, "txn")
	results := m["results"].([]any)
	require.Len(t, results, 3)
	require.Equal(t, true, results[1].(map[string]any)["deleted"])

	// delete
	m = run("", "delete", "t")
	require.Equal(t, true, m["deleted"])
	m = run("", "delete", "t")
	require.Equal(t, false, m["deleted"])

	// flush and status
	m = run("", "flush")
	require.Equal(t, m["rev"], m["snapshot_rev"])
	require.Contains(t, readStore(t, d.store), "new")
	m = run("", "status")
	require.EqualValues(t, 1, m["protocol"])
	require.EqualValues(t, d.pid(), m["pid"])
	require.Equal(t, "serving", m["phase"])

	// errors: non-zero exit with the reason on stderr
	fail("", "not_found", "get", "missing")
	fail("", "conflict", "put", "a", `{}`, "--if-rev", "0")
	fail("", "conflict", "delete", "a", "--if-rev", "1")
	fail("", "invalid_params", "put", "arr", `[1,2]`)
	fail("", "request_id_reused", "patch", "a", `{"other":1}`, "--request-id", "cli-1")
	fail("", "conflict", "txn", `[{"op":"put","key":"t2","value":{}},{"op":"check","key":"a","if_rev":1}]`)
	require.NotContains(t, readStore(t, d.store), "t2")
	// a bad command line is exit code 2
	require.Equal(t, 2, fail("", "not valid JSON", "put", "a", `{not json`))
	require.Equal(t, 2, fail("", "no value given", "put", "a"))
	require.Equal(t, 2, fail("", "takes", "get"))
	require.Equal(t, 2, fail("", "unknown command", "frobnicate"))
	// no daemon there: fails (after retrying up to --timeout)
	_, stderr, err = (&daemon{socket: filepath.Join(d.dir, "nobody.sock")}).cli("", "status", "--timeout", "300ms")
	requireExitCode(t, err, stderr)
	require.NotEmpty(t, stderr)
	d.stop()
}
