package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"sessiond/ipc"
)

// scenarioRestart measures SIGUSR1 restarts (issue 3): the pause from the signal to the
// first answer from the new image, and the worst latency a writing client sees.
const scenarioRestart = "restart"

// restartShapes are the stores of issue 3: 1k, 10k and 100k entries of about 500 B, and
// the 50 MB store.
var restartShapes = []shape{
	{Name: "1k", Entries: 1000, EntryBytes: 500},
	{Name: "10k", Entries: 10_000, EntryBytes: 500},
	{Name: "100k", Entries: 100_000, EntryBytes: 500},
	{Name: "1kx50k", Entries: 1000, EntryBytes: 50_000},
}

// RestartResult is one store's restarts.
type RestartResult struct {
	Shape     shape     `json:"shape"`
	Restarts  int       `json:"restarts"`
	PausesMs  []float64 `json:"pauses_ms"` // SIGUSR1 to the first answer of the new image
	WorstMs   float64   `json:"worst_client_ms"`
	P99Ms     float64   `json:"p99_ms"` // of all client writes in the run
	Writes    int       `json:"writes"`
	Errors    int       `json:"errors"`
	StoreSize int64     `json:"store_bytes"`
	// Refused holds why each restart that did not go ahead was refused (the old image
	// kept serving), and JournalBytes the journal's size at the end: under request_id
	// load on large entries the journal outgrows what the preflight reads in time.
	Refused      []string `json:"refused,omitempty"`
	JournalBytes int64    `json:"journal_bytes"`
}

// runRestartScenario runs, for each shape, clients writing durable patches in closed
// loop while the daemon is restarted restarts times, one at a time.
func runRestartScenario(ctx context.Context, e *env, clients, restarts int, out string, stdout io.Writer) error {
	list := restartShapes
	if e.cfg.smoke {
		list = []shape{restartShapes[0].tiny()}
		restarts = 2
	}
	var results []RestartResult
	for _, sh := range list {
		t, err := e.template(sh)
		if err != nil {
			return err
		}
		e.seq++
		dir := filepath.Join(e.workdir, fmt.Sprintf("r%d", e.seq))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		store := filepath.Join(dir, "sessions.json")
		if err := copyFile(t.path, store); err != nil {
			return err
		}
		res, err := restartRun(ctx, e, t, store, clients, restarts)
		if err != nil {
			return fmt.Errorf("restart %s: %w", sh.Name, err)
		}
		res.Shape, res.StoreSize = sh, t.size
		fmt.Fprintf(e.stderr, "restart %s: pauses %v ms, refused %d, worst client %.1f ms, journal %.0f MB\n",
			sh.Name, res.PausesMs, len(res.Refused), res.WorstMs, float64(res.JournalBytes)/1e6)
		results = append(results, res)
	}
	fmt.Fprintf(stdout, "| store | entries | MB | restarts | refused | pause median ms | pause max ms | worst client write ms | client p99 ms | writes | errors | journal MB at the end |\n")
	fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		median, worst := "–", "–"
		if p := slices.Sorted(slices.Values(r.PausesMs)); len(p) > 0 {
			median, worst = fmt.Sprintf("%.1f", p[len(p)/2]), fmt.Sprintf("%.1f", p[len(p)-1])
		}
		fmt.Fprintf(stdout, "| %s | %d | %.1f | %d | %d | %s | %s | %.1f | %.2f | %d | %d | %.0f |\n", r.Shape.Name, r.Shape.Entries,
			float64(r.StoreSize)/1e6, r.Restarts, len(r.Refused), median, worst, r.WorstMs, r.P99Ms, r.Writes, r.Errors,
			float64(r.JournalBytes)/1e6)
	}
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "restart.json"), append(b, '\n'), 0o644)
}

func restartRun(ctx context.Context, e *env, t *storeTemplate, store string, clients, restarts int) (RestartResult, error) {
	var res RestartResult
	d, err := startDaemon(ctx, e.daemonBin, store, "info")
	if err != nil {
		return res, err
	}
	defer d.stop(time.Minute)
	admin := ipc.NewClient(d.socket, ipc.WithRetryFor(time.Minute))
	defer admin.Close()

	stop := make(chan struct{})
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ipc.NewClient(d.socket, ipc.WithRetryFor(time.Minute))
			defer c.Close()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				key := t.ws.keys[(i*7919+n)%len(t.ws.keys)]
				start := time.Now()
				_, err := c.Patch(ctx, key, map[string]any{"updatedAt": start.UnixMilli(), "restartBench": n})
				mu.Lock()
				if err != nil {
					res.Errors++
				} else {
					lat = append(lat, time.Since(start))
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // let the clients reach a steady state
	for range restarts {
		before, err := admin.Status(ctx)
		if err != nil {
			return res, err
		}
		t0 := time.Now()
		if err := syscall.Kill(d.pid(), syscall.SIGUSR1); err != nil {
			return res, err
		}
		refused := false
		for {
			st, err := admin.Status(ctx)
			if err != nil {
				return res, err
			}
			if st.Generation > before.Generation {
				break
			}
			if st.RestartsFailed > before.RestartsFailed {
				res.Refused = append(res.Refused, st.RestartError)
				fmt.Fprintf(e.stderr, "restart refused after %s: %s\n", time.Since(t0).Round(time.Millisecond), st.RestartError)
				refused = true
				break
			}
			time.Sleep(time.Millisecond) // polling for the first answer of the new image
		}
		if !refused {
			res.PausesMs = append(res.PausesMs, float64(time.Since(t0).Microseconds())/1000)
			res.Restarts++
		}
		time.Sleep(300 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if fi, err := os.Stat(store + ".journal"); err == nil {
		res.JournalBytes = fi.Size()
	}
	s := summarize(lat)
	res.Writes, res.P99Ms = s.Count, s.P99ms
	res.WorstMs = float64(slices.Max(lat).Microseconds()) / 1000
	return res, nil
}
