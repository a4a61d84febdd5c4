package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"sessiond/ipc"
)

var (
	bin2Once sync.Once
	bin2     string
	bin2Err  error
)

// secondBuild is the same daemon reporting another version, for upgrade tests.
func secondBuild(t *testing.T) string {
	t.Helper()
	bin2Once.Do(func() {
		bin2 = bin + "-v2"
		out, err := exec.Command("go", "build", "-race", "-ldflags", "-X main.version=itest2", "-o", bin2, "sessiond/cmd/sessiond").CombinedOutput()
		if err != nil {
			bin2Err = fmt.Errorf("%v: %s", err, out)
		}
	})
	require.NoError(t, bin2Err)
	return bin2
}

// copyFile copies src to dst with mode, by writing a temp file and renaming it into
// place, as a package manager replaces a binary that is running.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	tmp := dst + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, mode))
	require.NoError(t, os.Chmod(tmp, mode))
	require.NoError(t, os.Rename(tmp, dst))
}

func status(t *testing.T, c *ipc.Client) ipc.Status {
	t.Helper()
	st, err := c.Status(ctxTimeout(t, 30*time.Second))
	require.NoError(t, err)
	return st
}

func fdCount(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	return len(ents)
}

func environ(t *testing.T, pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	require.NoError(t, err)
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// waitGeneration waits until the daemon reports at least generation g.
func waitGeneration(t *testing.T, c *ipc.Client, g int64) ipc.Status {
	t.Helper()
	var st ipc.Status
	require.Eventually(t, func() bool {
		st = status(t, c)
		return st.Generation >= g
	}, 60*time.Second, 5*time.Millisecond, "generation %d never came", g)
	return st
}

// The upgrade storm: clients keep incrementing their own counters with read-then-CAS
// writes carrying request_ids while SIGUSR1s arrive at random, in bursts too, and the
// binary is replaced half-way. No request may be lost or applied twice.
func TestUpgradeStorm(t *testing.T) {
	v2 := secondBuild(t)
	dir := newDir(t)
	exe := filepath.Join(dir, "sessiond")
	copyFile(t, bin, exe, 0o755)
	d := launchWith(t, dir, exe, nil)
	d.waitReady()
	admin := d.client()
	st0 := status(t, admin)
	require.Equal(t, "itest", st0.Version)
	// waitReady's probe may still be closing on the daemon's side: count without it.
	require.Eventually(t, func() bool { return status(t, admin).Connections == 1 }, 10*time.Second, time.Millisecond)
	fds0 := fdCount(t, d.pid())
	env0 := environ(t, d.pid())

	const clients = 16
	type tally struct{ answered, refused, lost int }
	var tallies [clients]tally
	var acked [clients]map[string]bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	for i := range clients {
		acked[i] = map[string]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ipc.NewClient(d.socket, ipc.WithRetryFor(30*time.Second))
			defer c.Close()
			key := fmt.Sprintf("agent:main:counter:%d", i)
			tl := &tallies[i]
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				cur, rev := 0.0, int64(0)
				e, err := c.Get(ctx, key)
				switch {
				case err == nil:
					var v struct{ N float64 }
					if err := json.Unmarshal(e.Value, &v); err != nil {
						errc <- err
						cancel()
						return
					}
					cur, rev = v.N, e.Rev
				case ipc.ReasonOf(err) == "not_found":
				default:
					errc <- fmt.Errorf("client %d get: %w", i, err)
					cancel()
					return
				}
				id := fmt.Sprintf("c%d-%d", i, n)
				_, err = c.Put(ctx, key, map[string]any{"n": cur + 1}, ipc.IfRev(rev), ipc.RequestID(id))
				cancel()
				var werr *ipc.Error
				switch {
				case err == nil:
					tl.answered++
					acked[i][id] = true
				case errors.As(err, &werr) && !werr.Executed:
					tl.refused++
				default:
					tl.lost++
					errc <- fmt.Errorf("client %d put %s: outcome unknown: %w", i, id, err)
				}
			}
		}()
	}

	// 25 SIGUSR1s, 20-200 ms apart, every fifth followed 1 ms later by another; the
	// binary is replaced by a new version half-way.
	signals := 0
	for i := range 25 {
		time.Sleep(time.Duration(20+rand.IntN(180)) * time.Millisecond) // pacing the storm, not synchronising
		d.signal(syscall.SIGUSR1)
		signals++
		if i%5 == 4 {
			time.Sleep(time.Millisecond)
			d.signal(syscall.SIGUSR1)
			signals++
		}
		if i == 12 {
			copyFile(t, v2, exe, 0o755)
		}
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}

	// One more restart after the storm so the new version is surely running.
	accepted := strings.Count(d.stderr.String(), `"msg":"re-executing"`)
	d.signal(syscall.SIGUSR1)
	st := waitGeneration(t, admin, int64(accepted+2))
	accepted = strings.Count(d.stderr.String(), `"msg":"re-executing"`)
	require.Equal(t, int64(1+accepted), st.Generation, "generation moved once per accepted restart")
	require.Equal(t, "itest2", st.Version, "later answers come from the new binary")
	require.Equal(t, d.pid(), st.PID)
	require.Zero(t, st.RestartsFailed, st.RestartError)
	t.Logf("%d signals, %d restarts accepted", signals+1, accepted)

	total := tally{}
	for i := range clients {
		tl := tallies[i]
		total.answered += tl.answered
		total.refused += tl.refused
		total.lost += tl.lost
		e, err := admin.Get(ctxTimeout(t, 30*time.Second), fmt.Sprintf("agent:main:counter:%d", i))
		if len(acked[i]) == 0 {
			require.Equal(t, "not_found", ipc.ReasonOf(err))
			continue
		}
		require.NoError(t, err)
		var v struct{ N int }
		require.NoError(t, json.Unmarshal(e.Value, &v))
		require.Equal(t, len(acked[i]), v.N, "client %d: counter equals its acknowledged request_ids", i)
	}
	t.Logf("answered %d, refused %d, lost %d", total.answered, total.refused, total.lost)
	require.Zero(t, total.lost)
	require.Positive(t, total.answered)

	// Descriptors and environment do not pile up across restarts.
	require.Eventually(t, func() bool { return fdCount(t, d.pid()) == fds0 }, 10*time.Second, 10*time.Millisecond,
		"open descriptors: %d before, %d after", fds0, fdCount(t, d.pid()))
	env := environ(t, d.pid())
	var handovers []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "SESSIOND_HANDOVER=") {
			handovers = append(handovers, kv)
		}
	}
	require.Len(t, handovers, 1)
	require.Equal(t, len(env0)+1, len(env), "only the one handover variable was added")
	d.stop()
}

func restartFails(t *testing.T, d *daemon, c *ipc.Client, want string) {
	t.Helper()
	before := status(t, c)
	d.signal(syscall.SIGUSR1)
	var st ipc.Status
	require.Eventually(t, func() bool {
		st = status(t, c)
		return st.RestartsFailed > before.RestartsFailed
	}, 30*time.Second, 5*time.Millisecond)
	require.Contains(t, st.RestartError, want)
	require.Equal(t, before.Generation, st.Generation, "the old image keeps serving")
	require.Equal(t, before.PID, st.PID)
}

// A restart that cannot go ahead leaves the old image serving with nothing lost.
func TestRestartRefused(t *testing.T) {
	dir := newDir(t)
	exe := filepath.Join(dir, "sessiond")
	copyFile(t, bin, exe, 0o755)
	d := launchWith(t, dir, exe, nil)
	d.waitReady()
	c := d.client()
	ctx := ctxTimeout(t, time.Minute)
	_, err := c.Put(ctx, "a", map[string]any{"v": 1})
	require.NoError(t, err)

	copyFile(t, bin, exe, 0o644)
	restartFails(t, d, c, "permission denied")

	require.NoError(t, os.WriteFile(exe+".tmp", []byte("#!/bin/sh\necho 'cannot load: boom' >&2\nexit 3\n"), 0o755))
	require.NoError(t, os.Rename(exe+".tmp", exe))
	restartFails(t, d, c, "boom")

	_, err = c.Put(ctx, "b", map[string]any{"v": 2})
	require.NoError(t, err)
	out, errOut, err := d.cli("", "restart")
	require.Error(t, err, out)
	require.Contains(t, errOut, "did not go ahead")

	// Fixed binary: the next restart goes through and every write is there.
	copyFile(t, bin, exe, 0o755)
	out, errOut, err = d.cli("", "restart")
	require.NoError(t, err, errOut)
	var res struct {
		OldGeneration, NewGeneration int
		PauseMS                      float64 `json:"pause_ms"`
	}
	require.NoError(t, json.Unmarshal([]byte(strings.ReplaceAll(out, "_generation", "Generation")), &res), out)
	require.Equal(t, res.OldGeneration+1, res.NewGeneration)
	for _, k := range []string{"a", "b"} {
		_, err := c.Get(ctx, k)
		require.NoError(t, err)
	}
	d.stop()
}

// A disk that fails under the store (here: full) is found by the flush before the drain:
// the restart is refused and the old image keeps serving; once the disk recovers the
// restart goes through with nothing lost. (A read-only remount cannot be tested this way:
// the kernel refuses it while the daemon holds its journal open for writing.)
func TestRestartRefusedOnFailingDisk(t *testing.T) {
	for _, mode := range []string{"full"} {
		t.Run(mode, func(t *testing.T) {
			mnt := mountTmpfs(t, "2m")
			d := startDaemon(t, mnt, "--snapshot-interval", "-1s")
			c := d.client(ipc.WithRetryFor(time.Second))
			ctx := ctxTimeout(t, time.Minute)
			for i := range 20 {
				_, err := c.Put(ctx, fmt.Sprintf("k%d", i), map[string]any{"pad": strings.Repeat("x", 1000)})
				require.NoError(t, err)
			}
			filler := filepath.Join(mnt, "filler")
			switch mode {
			case "full":
				// Fill the disk to the last byte.
				f, err := os.Create(filler)
				require.NoError(t, err)
				buf := make([]byte, 4096)
				for {
					if _, err := f.Write(buf); err != nil {
						break
					}
				}
				f.Close()
			}
			restartFails(t, d, c, "flush before restart failed")
			_, err := c.Get(ctx, "k19")
			require.NoError(t, err, "reads carry on")

			switch mode {
			case "full":
				require.NoError(t, os.Remove(filler))
			}
			before := status(t, c)
			d.signal(syscall.SIGUSR1)
			waitGeneration(t, c, before.Generation+1)
			for i := range 20 {
				_, err := c.Get(ctx, fmt.Sprintf("k%d", i))
				require.NoError(t, err)
			}
			d.stop()
		})
	}
}

// Pipelined requests on a raw connection across a restart: every one is either answered
// or refused with executed:false, none silently missing.
func TestGoawayPipelinedRaw(t *testing.T) {
	d := startDaemon(t, newDir(t))
	c, err := net.Dial("unix", d.socket)
	require.NoError(t, err)
	defer c.Close()

	var sent atomic.Int64
	goaway := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 1; ; i++ {
			select {
			case <-goaway:
				return
			default:
			}
			line := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"patch","params":{"key":"k","merge":{"n":%d}}}`+"\n", i, i)
			if _, err := c.Write([]byte(line)); err != nil {
				return // the server closed: this line was not sent
			}
			sent.Store(int64(i))
			if i == 200 {
				d.signal(syscall.SIGUSR1)
			}
		}
	}()
	answered, refused := map[int]bool{}, 0
	dec := json.NewDecoder(c)
	sawGoaway := false
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		var m struct {
			ID     *int
			Method string
			Result json.RawMessage
			Error  *struct {
				Data struct {
					Reason   string
					Executed bool
				}
			}
		}
		if err := dec.Decode(&m); err != nil {
			break // closed by the server after the grace
		}
		switch {
		case m.Method == "goaway":
			sawGoaway = true
			close(goaway)
		case m.Error != nil:
			require.False(t, m.Error.Data.Executed)
			require.Equal(t, "shutting_down", m.Error.Data.Reason)
			answered[*m.ID] = true
			refused++
		default:
			require.NotNil(t, m.ID)
			require.False(t, answered[*m.ID], "answered twice")
			answered[*m.ID] = true
		}
	}
	<-writerDone
	require.True(t, sawGoaway)
	n := int(sent.Load())
	require.GreaterOrEqual(t, n, 200)
	for i := 1; i <= n; i++ {
		require.True(t, answered[i], "request %d of %d was sent but never answered", i, n)
	}
	t.Logf("sent %d, refused %d after goaway", n, refused)
	// What was acknowledged is there after the restart.
	cl := d.client()
	e, err := cl.Get(ctxTimeout(t, 30*time.Second), "k")
	require.NoError(t, err)
	var v struct{ N int }
	require.NoError(t, json.Unmarshal(e.Value, &v))
	require.Equal(t, n-refused, v.N, "the last acknowledged patch is the state")
	d.stop()
}

// With NOTIFY_SOCKET set, the daemon tells systemd READY, RELOADING (with
// MONOTONIC_USEC) and READY again across a restart, and STOPPING on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir := newDir(t)
	sock := filepath.Join(dir, "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer pc.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := pc.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func() string {
		select {
		case m := <-msgs:
			return m
		case <-time.After(30 * time.Second):
			t.Fatal("no notification")
			return ""
		}
	}
	d := launchWith(t, dir, bin, []string{"NOTIFY_SOCKET=" + sock})
	require.True(t, strings.HasPrefix(next(), "READY=1\n"))
	d.waitReady()
	d.signal(syscall.SIGUSR1)
	m := next()
	require.True(t, strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC="), m)
	require.Contains(t, next(), "READY=1\nSTATUS=serving, generation 2")
	d.signal(syscall.SIGTERM)
	require.Equal(t, "STOPPING=1", next())
	require.NoError(t, d.wait())
	require.True(t, bytes.Contains([]byte(d.stderr.String()), []byte("sessiond stopped")))
}

// A preflight that does not finish within --shutdown-timeout is killed and the restart
// refused; a child it left holding its output does not hold the restart up.
func TestRestartRefusedWhenPreflightHangs(t *testing.T) {
	dir := newDir(t)
	exe := filepath.Join(dir, "sessiond")
	copyFile(t, bin, exe, 0o755)
	d := launchWith(t, dir, exe, nil, "--shutdown-timeout", "1s")
	d.waitReady()
	c := d.client()
	require.NoError(t, os.WriteFile(exe+".tmp", []byte("#!/bin/sh\nsleep 60\n"), 0o755))
	require.NoError(t, os.Rename(exe+".tmp", exe))
	restartFails(t, d, c, "killed")     // within its 30 s, not when the child's sleep ends
	require.Eventually(t, func() bool { // and the child went with it
		procs, err := os.ReadDir("/proc")
		require.NoError(t, err)
		for _, p := range procs {
			cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
			if err == nil && string(cmdline) == "sleep\x0060\x00" {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)
	_, err := c.Put(ctxTimeout(t, time.Minute), "a", map[string]any{"v": 1})
	require.NoError(t, err)
	d.stop()
}
