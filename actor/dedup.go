package actor

import (
	"encoding/json"

	"sessiond/persist"
)

// dedupTable remembers the final outcome of requests that carried a request_id, oldest
// first, for at least the configured window (time) unless the count cap is reached first.
// Only the actor goroutine touches it.
type dedupTable struct {
	m    map[string]*persist.Dedup
	fifo []*persist.Dedup // insertion order; fifo[head:] are live
	head int
}

func newDedupTable() *dedupTable { return &dedupTable{m: make(map[string]*persist.Dedup)} }

func (t *dedupTable) get(id string) *persist.Dedup { return t.m[id] }

func (t *dedupTable) len() int { return len(t.fifo) - t.head }

func (t *dedupTable) add(d *persist.Dedup) {
	t.m[d.ID] = d
	t.fifo = append(t.fifo, d)
}

// undoLast removes the newest record; the store's undo log calls it when a batch is
// rolled back.
func (t *dedupTable) undoLast() {
	d := t.fifo[len(t.fifo)-1]
	t.fifo[len(t.fifo)-1] = nil
	t.fifo = t.fifo[:len(t.fifo)-1]
	if t.m[d.ID] == d {
		delete(t.m, d.ID)
	}
}

// evict drops records older than window (ms before now) or beyond max, oldest first.
func (t *dedupTable) evict(now, window int64, max int) {
	for t.len() > 0 {
		d := t.fifo[t.head]
		if t.len() <= max && now-d.Time <= window {
			break
		}
		if t.m[d.ID] == d {
			delete(t.m, d.ID)
		}
		t.fifo[t.head] = nil
		t.head++
	}
	if t.head > 1024 && t.head*2 > len(t.fifo) {
		t.fifo = append([]*persist.Dedup(nil), t.fifo[t.head:]...)
		t.head = 0
	}
}

// oldest is the time of the oldest record held, or 0 when there is none.
func (t *dedupTable) oldest() int64 {
	if t.len() == 0 {
		return 0
	}
	return t.fifo[t.head].Time
}

func (t *dedupTable) all() []persist.Dedup {
	out := make([]persist.Dedup, 0, t.len())
	for _, d := range t.fifo[t.head:] {
		out = append(out, *d)
	}
	return out
}

// storedError is how an error outcome is kept in a dedup record.
type storedError struct {
	Reason  string         `json:"reason"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

func encodeOutcome(rep Reply) (body []byte, isErr bool) {
	if rep.Err == nil {
		return rep.Result, false
	}
	b, err := json.Marshal(storedError{rep.Err.Reason, rep.Err.Message, rep.Err.Data})
	if err != nil {
		panic("encode dedup outcome: " + err.Error()) // only plain values are ever stored
	}
	return b, true
}

func decodeOutcome(d *persist.Dedup) Reply {
	if d.Frag != nil {
		b := append(append([]byte(nil), d.Body...), `,"value":`...)
		b = persist.Compact(b, persist.EntryValue(d.Frag))
		return Reply{Result: append(b, '}')}
	}
	if !d.Err {
		return Reply{Result: d.Body}
	}
	var e storedError
	if err := json.Unmarshal(d.Body, &e); err != nil {
		return Reply{Err: errorf(ReasonInternal, false, "stored outcome of request_id %q is unreadable: %v", d.ID, err)}
	}
	return Reply{Err: &Error{Reason: e.Reason, Message: e.Message, Data: e.Data, Retryable: retryable(e.Reason)}}
}
