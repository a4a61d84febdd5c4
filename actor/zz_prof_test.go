package actor

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

func TestZZThroughput(t *testing.T) {
	if os.Getenv("ZZPROF") == "" {
		t.Skip()
	}
	dir := t.TempDir()
	b, _ := os.ReadFile("/tmp/pz/s.json")
	os.WriteFile(dir+"/s.json", b, 0o600)
	a, err := Open(Config{Store: dir + "/s.json"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	start := time.Now()
	var wg sync.WaitGroup
	const n, clients = 200000, 64
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < n; i += clients {
				r := <-a.Submit("patch", fmt.Appendf(nil, `{"key":"agent:main:telegram:group:-100%d:topic:7","merge":{"updatedAt":%d,"inputTokens":%d,"route":{"channel":"telegram"}},"request_id":"r%d"}`, i%10000, i, i, i))
				if r.Err != nil {
					t.Error(r.Err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d patches in %v: %.0f/s", n, time.Since(start), n/time.Since(start).Seconds())
	cancel()
	<-done
	a.Close()
}
