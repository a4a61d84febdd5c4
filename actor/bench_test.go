package actor

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkDurablePatch is the hot path without the socket: durable merge patches with
// request_ids from 64 goroutines on a store of 10,000 entries of about 500 bytes, each
// goroutine waiting for its answer (closed loop). go test -bench DurablePatch ./actor
func BenchmarkDurablePatch(b *testing.B) {
	a, err := Open(Config{Store: b.TempDir() + "/sessions.json"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		a.Close()
	}()
	pad := fmt.Sprintf("%0300d", 0)
	for i := range 10000 {
		r := <-a.Submit("put", fmt.Appendf(nil, `{"key":"agent:main:telegram:group:-100%d:topic:7","value":{"sessionId":"s-%d","updatedAt":0,"inputTokens":0,"route":{"channel":"telegram","topic":7},"label":%q}}`, i, i, pad))
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
	var next atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				r := <-a.Submit("patch", fmt.Appendf(nil, `{"key":"agent:main:telegram:group:-100%d:topic:7","merge":{"updatedAt":%d,"inputTokens":%d,"route":{"chat":%d}},"request_id":"r%d"}`, i%10000, i, i, i, i))
				if r.Err != nil {
					b.Error(r.Err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
