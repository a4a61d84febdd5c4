package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"syscall"
	"time"

	"sessiond/ipc"
)

// runRestart is `sessiond restart`: SIGUSR1 to the daemon behind the socket, then wait
// until its generation moves on (or it reports that the restart did not go ahead).
func runRestart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("restart", flag.ContinueOnError)
	fl.SetOutput(stderr)
	socket := fl.String("socket", "", "daemon socket `path` (default: the store path + \".sock\")")
	store := fl.String("store", "./sessions.json", "store `path`, to find the socket")
	timeout := fl.Duration("timeout", time.Minute, "how long to wait for the new image")
	fl.Usage = func() {
		fmt.Fprint(stderr, `Usage: sessiond restart [flags]

Sends SIGUSR1 to the daemon serving the socket (it must run on this machine, as a user
we may signal) and waits until the re-exec'd image answers. Prints one JSON line:
{"pid", "old_generation", "new_generation", "old_version", "new_version", "pause_ms"}.
Exits non-zero if the restart did not go ahead (the old image keeps serving).

Flags:
`)
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: restart: %v", errUsage, err)
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("%w: restart takes no arguments", errUsage)
	}
	if *socket == "" {
		*socket = *store + ".sock"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := ipc.NewClient(*socket)
	defer c.Close()
	before, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	start := time.Now()
	if err := syscall.Kill(before.PID, syscall.SIGUSR1); err != nil {
		return fmt.Errorf("restart: signal pid %d: %w", before.PID, err)
	}
	for {
		st, err := c.Status(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("restart: waiting for the new image: %w", err)
		case st.PID != before.PID:
			return fmt.Errorf("restart: another process (pid %d) now serves %s", st.PID, *socket)
		case st.Generation > before.Generation:
			fmt.Fprintf(stdout, `{"pid":%d,"old_generation":%d,"new_generation":%d,"old_version":%q,"new_version":%q,"pause_ms":%.1f}`+"\n",
				st.PID, before.Generation, st.Generation, before.Version, st.Version,
				float64(time.Since(start).Microseconds())/1000)
			return nil
		case st.RestartsFailed > before.RestartsFailed:
			return fmt.Errorf("restart: did not go ahead, generation %d still serving: %s", st.Generation, st.RestartError)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restart: generation still %d after %v", st.Generation, *timeout)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
