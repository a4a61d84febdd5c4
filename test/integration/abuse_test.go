package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// peakRSS is the daemon's VmHWM as /proc reports it (race-built binary: several times a
// normal build's).
func peakRSS(t *testing.T, pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.Join(strings.Fields(l)[1:], " ")
		}
	}
	return "?"
}

// Greedy and broken clients at once: a flood of connect/close, clients that never read
// their answers, and half lines that stall. A
// well-behaved client keeps getting answers throughout, and the daemon's descriptors
// come back to where they were.
func TestMisbehavingClients(t *testing.T) {
	d := startDaemon(t, newDir(t), "--write-timeout", "500ms", "--idle-timeout", "500ms", "--max-pending", "16")
	fds0 := fdCount(t, d.pid())
	good := d.client()
	_, err := good.Put(ctxTimeout(t, time.Minute), "big", map[string]any{"pad": strings.Repeat("x", 256<<10)})
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 8)

	// connect/close flood
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 1000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.Dial("unix", d.socket)
			if err != nil {
				continue // busy or backlog full: allowed
			}
			if i%3 == 0 {
				fmt.Fprintln(c, `{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"x"}}`)
			}
			c.Close()
		}
	}()
	// clients that ask for large answers and never read them
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", d.socket)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			get := []byte(`{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"big"}}` + "\n")
			// Keep writing until the server gives up on us; the deadline only bounds
			// the test.
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			for {
				if _, err := c.Write(get); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						errc <- fmt.Errorf("a client that never reads was not disconnected")
					}
					return // closed by the server: what we want
				}
			}
		}()
	}
	// half lines that stall
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", d.socket)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			fmt.Fprint(c, `{"jsonrpc":"2.0","id":1,"meth`)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err = bufio.NewReader(c).ReadByte()
			if err == nil {
				errc <- fmt.Errorf("a stalled half line got an answer")
			}
		}()
	}
	// the well-behaved client carries on meanwhile
	ctx := ctxTimeout(t, time.Minute)
	for i := range 200 {
		_, err := good.Patch(ctx, "good", map[string]any{"n": i})
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
	e, err := good.Get(ctx, "good")
	require.NoError(t, err)
	require.JSONEq(t, `{"n":199}`, string(e.Value))
	require.Eventually(t, func() bool { return fdCount(t, d.pid()) <= fds0+1 }, 30*time.Second, 20*time.Millisecond,
		"descriptors: %d at start, %d now", fds0, fdCount(t, d.pid()))
	t.Logf("daemon peak RSS (race build): %s", peakRSS(t, d.pid()))
	d.stop()
}
