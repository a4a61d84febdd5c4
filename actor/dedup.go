package actor

import (
	"encoding/json"
	"hash/maphash"

	"sessiond/persist"
)

// dedupTable remembers the final outcome of requests that carried a request_id, oldest
// first, for at least the configured window (time) unless the count cap is reached first.
// Only the actor goroutine touches it.
//
// It holds up to a million records, so it is laid out for the garbage collector: one
// allocation and two pointers a record (the request_id with the body, and a patch's
// entry bytes), and an index keyed by a hash of the request_id, which holds no pointers
// at all. A map of strings to *persist.Dedup cost four objects and about nine pointers a
// record, and marking them took a share of every collection under load.
//
// A patch's outcome is the whole merged entry, and the window holds every version of
// every entry patched in it: gigabytes, with 50 KB entries patched hundreds of times a
// second. So once the record that wrote it is in the journal, a record keeps only where
// the entry's bytes are in the journal (ref), and a retry reads them back. Each new
// journal copies them, and the actor moves the refs to it (place, shift).
type dedupTable struct {
	hash   func(string) uint64
	byHash map[uint64]uint64 // hash of a request_id -> seq+1 of the newest record with it
	recs   []dedupRec        // recs[i] has seq base+i, oldest first
	base   uint64
	bytes  int64 // the request_ids, bodies and patch entries of recs: what a checkpoint copies
}

type dedupRec struct {
	idBody []byte          // the request_id's bytes, then the outcome's Body
	frag   []byte          // persist.Dedup.Frag until the record is in the journal
	ref    persist.FragRef // where the frag is in the current journal
	time   int64
	hash   uint64
	prev   uint64 // seq+1 of the next older record with the same hash; 0: none
	idLen  int32
	err    bool
	fp     [16]byte
}

func newDedupTable() *dedupTable {
	seed := maphash.MakeSeed()
	return &dedupTable{hash: func(s string) uint64 { return maphash.String(seed, s) }, byHash: make(map[uint64]uint64)}
}

// get returns the newest record of id, or nil.
func (t *dedupTable) get(id string) *persist.Dedup {
	ref, ok := t.byHash[t.hash(id)]
	for ok && ref > t.base {
		r := &t.recs[ref-1-t.base]
		if string(r.idBody[:r.idLen]) == id {
			return r.dedup()
		}
		ref, ok = r.prev, r.prev != 0
	}
	return nil
}

func (r *dedupRec) dedup() *persist.Dedup {
	return &persist.Dedup{ID: string(r.idBody[:r.idLen]), Fingerprint: r.fp, Time: r.time, Err: r.err,
		Body: r.idBody[r.idLen:], Frag: r.frag, Ref: r.ref}
}

func (t *dedupTable) len() int { return len(t.recs) }

// size is what r adds to a checkpoint, frame overhead aside. A ref, once set, is to the
// bytes frag held, so the size does not change with it.
func (r *dedupRec) size() int64 {
	if r.frag != nil {
		return int64(len(r.idBody) + len(r.frag))
	}
	return int64(len(r.idBody)) + int64(r.ref.Len)
}

// end is the seq the next record added gets.
func (t *dedupTable) end() uint64 { return t.base + uint64(len(t.recs)) }

// add records d, which is copied; it gets seq end().
func (t *dedupTable) add(d *persist.Dedup) {
	idBody := make([]byte, 0, len(d.ID)+len(d.Body))
	idBody = append(append(idBody, d.ID...), d.Body...)
	h := t.hash(d.ID)
	seq := t.end()
	t.recs = append(t.recs, dedupRec{idBody: idBody, frag: d.Frag, ref: d.Ref, time: d.Time, hash: h, prev: t.byHash[h],
		idLen: int32(len(d.ID)), err: d.Err, fp: d.Fingerprint})
	t.bytes += t.recs[len(t.recs)-1].size()
	t.byHash[h] = seq + 1
}

// setRef notes that the frag of record seq is at ref in the current journal. A ref that
// locates nothing, or a record evicted meanwhile, is skipped.
func (t *dedupTable) setRef(seq uint64, ref persist.FragRef) {
	if ref.Len > 0 && seq >= t.base && seq < t.end() {
		t.recs[seq-t.base].ref = ref
	}
}

// dropFrag drops the bytes of record seq, once its ref is known and the journal holds
// them durably.
func (t *dedupTable) dropFrag(seq uint64) {
	if seq >= t.base && seq < t.end() && t.recs[seq-t.base].ref.Len > 0 {
		t.recs[seq-t.base].frag = nil
	}
}

// place is setRef and dropFrag: the bytes are in a new journal, durably.
func (t *dedupTable) place(seq uint64, ref persist.FragRef) {
	t.setRef(seq, ref)
	t.dropFrag(seq)
}

// dropFrags drops every frag whose ref is known: after a start that keeps the journal
// it read the records from.
func (t *dedupTable) dropFrags() {
	for i := range t.recs {
		if t.recs[i].ref.Len > 0 {
			t.recs[i].frag = nil
		}
	}
}

// shift moves the refs of the records from seq on by n bytes: they came to a new
// journal with the frames they were in.
func (t *dedupTable) shift(from uint64, n int64) {
	for seq := max(from, t.base); seq < t.end(); seq++ {
		if r := &t.recs[seq-t.base]; r.ref.Len > 0 {
			r.ref.At += n
		}
	}
}

// undoLast removes the newest record; the store's undo log calls it when a batch is
// rolled back.
func (t *dedupTable) undoLast() {
	r := t.recs[len(t.recs)-1]
	t.bytes -= r.size()
	t.recs[len(t.recs)-1] = dedupRec{}
	t.recs = t.recs[:len(t.recs)-1]
	if r.prev > t.base {
		t.byHash[r.hash] = r.prev
	} else {
		delete(t.byHash, r.hash)
	}
}

// evict drops records older than window (ms before now) or beyond max, oldest first.
func (t *dedupTable) evict(now, window int64, max int) {
	n := 0
	for n < len(t.recs) && (len(t.recs)-n > max || now-t.recs[n].time > window) {
		r := &t.recs[n]
		if t.byHash[r.hash] == t.base+uint64(n)+1 {
			delete(t.byHash, r.hash) // no newer record has its hash
		}
		t.bytes -= r.size()
		*r = dedupRec{}
		n++
	}
	if n == 0 {
		return
	}
	t.recs, t.base = t.recs[n:], t.base+uint64(n)
	if cap(t.recs) > 1024 && len(t.recs) < cap(t.recs)/4 {
		t.recs = append([]dedupRec(nil), t.recs...) // let the dropped head go
	}
}

// oldest is the time of the oldest record held, or 0 when there is none.
func (t *dedupTable) oldest() int64 {
	if len(t.recs) == 0 {
		return 0
	}
	return t.recs[0].time
}

// all returns every record, oldest first: all()[i] has seq base+i.
func (t *dedupTable) all() []persist.Dedup {
	out := make([]persist.Dedup, 0, len(t.recs))
	for i := range t.recs {
		out = append(out, *t.recs[i].dedup())
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

// outcome is the reply a record stands for. A patch's entry is read back from the
// journal when the record no longer holds it.
func (a *Actor) outcome(d *persist.Dedup) Reply {
	frag := d.Frag
	if frag == nil && d.Ref.Len > 0 {
		var err error
		if frag, err = persist.ReadFrag(a.journal.Reader(), d.Ref); err != nil {
			a.log.Error("cannot read the stored outcome of a request_id", "request_id", d.ID, "err", err)
			e := errorf(ReasonInternal, false, "request_id %q was executed, but its stored result cannot be read: %v", d.ID, err)
			e.Executed = true
			return Reply{Err: e}
		}
	}
	if frag != nil {
		b := append(append([]byte(nil), d.Body...), `,"value":`...)
		b = persist.Compact(b, persist.EntryValue(frag))
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
