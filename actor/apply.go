package actor

import (
	"strconv"
	"strings"

	"sessiond/persist"
)

// apply executes one request against the store on the actor goroutine. It returns the
// reply and, when the request changed the store or its outcome must be remembered for
// its request_id, the journal record that makes that durable.
func (a *Actor) apply(r *request, now int64) (Reply, *persist.Record) {
	switch r.kind {
	case kindGet:
		return a.get(r), nil
	case kindList:
		return a.list(r), nil
	}
	if r.requestID != "" {
		if d := a.dedup.get(r.requestID); d != nil {
			if d.Fingerprint != r.fingerprint {
				return Reply{Err: errorf(ReasonRequestIDReused, false,
					"request_id %q was used before for a different request", r.requestID)}, nil
			}
			return a.outcome(d), nil
		}
	}
	if r.deadline > 0 && now > r.deadline {
		return Reply{Err: errorf(ReasonDeadline, true, "deadline_ms passed %d ms before the write could start", now-r.deadline)}, nil
	}
	rec := &persist.Record{}
	rep := a.write(r, rec)
	if r.requestID != "" && (rep.Err == nil || !rep.Err.Retryable) {
		d := &persist.Dedup{ID: r.requestID, Fingerprint: r.fingerprint, Time: now}
		if rep.Err == nil && r.kind == kindPatch && len(rec.Ops) == 1 {
			// A patch's result ends in the merged value: keep the entry's bytes (shared
			// with the store, and the record's own post-image in the journal) instead
			// of a second copy.
			d.Body, d.Frag = resultHead(r.key, rec.Rev), rec.Ops[0].Frag
		} else {
			d.Body, d.Err = encodeOutcome(rep)
		}
		a.dedup.add(d)
		a.st.undo = append(a.st.undo, undo{kind: undoDedup})
		rec.Dedup = []persist.Dedup{*d}
	}
	if rec.Rev == 0 && len(rec.Dedup) == 0 {
		return rep, nil
	}
	return rep, rec
}

// opResult is what one write op did.
type opResult struct {
	rev     int64
	frag    []byte // patch: the merged entry
	deleted bool
}

// write executes a put, patch, delete or txn: all of it under one new revision, or
// nothing.
func (a *Actor) write(r *request, rec *persist.Record) Reply {
	rev := a.rev + 1
	if r.kind != kindTxn {
		res, err := a.writeOne(r, rev, rec)
		if err != nil {
			return Reply{Err: err}
		}
		if len(rec.Ops) > 0 {
			a.rev, rec.Rev = rev, rev
		}
		b := resultHead(r.key, res.rev)
		switch r.kind {
		case kindPatch:
			b = append(b, `,"value":`...)
			b = persist.Compact(b, persist.EntryValue(res.frag))
		case kindDelete:
			b = append(b, `,"deleted":`...)
			b = strconv.AppendBool(b, res.deleted)
		}
		return Reply{Result: append(b, '}')}
	}
	mark := a.st.mark()
	results := make([]opResult, len(r.ops))
	for i := range r.ops {
		res, err := a.writeOne(&r.ops[i], rev, rec)
		if err != nil {
			a.st.rollback(mark, nil)
			rec.Ops = nil
			if err.Reason == ReasonConflict || err.Reason == ReasonTooLarge {
				err.Data["index"] = i
			}
			err.Message = "ops[" + itoa(int64(i)) + "]: " + err.Message
			return Reply{Err: err}
		}
		results[i] = res
	}
	txnRev := a.rev
	if len(rec.Ops) > 0 {
		a.rev, rec.Rev, txnRev = rev, rev, rev
	}
	b := append([]byte(`{"rev":`), itoa(txnRev)...)
	b = append(b, `,"results":[`...)
	for i, res := range results {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"key":`...)
		b = append(b, persist.Quote(r.ops[i].key)...)
		b = append(b, `,"rev":`...)
		b = strconv.AppendInt(b, res.rev, 10)
		if r.ops[i].kind == kindDelete {
			b = append(b, `,"deleted":`...)
			b = strconv.AppendBool(b, res.deleted)
		}
		b = append(b, '}')
	}
	return Reply{Result: append(b, "]}"...)}
}

// writeOne applies one op at revision rev, adding its post-image to rec. On error
// nothing was changed.
func (a *Actor) writeOne(op *request, rev int64, rec *persist.Record) (opResult, *Error) {
	e := a.st.get(op.key)
	var cur int64
	if e != nil {
		cur = e.rev
	}
	if op.ifRev >= 0 && op.ifRev != cur {
		err := errorf(ReasonConflict, false, "if_rev %d does not match the current rev %d of %q", op.ifRev, cur, op.key)
		err.Data = map[string]any{"current_rev": cur}
		return opResult{}, err
	}
	switch op.kind {
	case kindCheck:
		return opResult{rev: cur}, nil
	case kindPut:
		a.st.set(op.key, op.frag, rev)
		rec.Ops = append(rec.Ops, persist.Op{Key: op.key, Frag: op.frag})
		return opResult{rev: rev}, nil
	case kindPatch:
		target := persist.Value{Kind: persist.Object}
		if e != nil {
			v, err := persist.Parse(persist.EntryValue(e.frag), 0)
			if err != nil {
				return opResult{}, errorf(ReasonInternal, false, "stored value of %q does not parse: %v", op.key, err)
			}
			target = v
		}
		frag := persist.EncodeEntry(op.key, persist.MergeOwned(target, op.merge)) // target was just parsed
		if len(frag) > a.cfg.MaxValueBytes {
			return opResult{}, tooLarge("merged value", a.cfg.MaxValueBytes)
		}
		a.st.set(op.key, frag, rev)
		rec.Ops = append(rec.Ops, persist.Op{Key: op.key, Frag: frag})
		return opResult{rev: rev, frag: frag}, nil
	case kindDelete:
		if !a.st.del(op.key) {
			return opResult{rev: a.rev}, nil
		}
		rec.Ops = append(rec.Ops, persist.Op{Key: op.key})
		return opResult{rev: rev, deleted: true}, nil
	}
	panic("writeOne: not a write op")
}

func (a *Actor) get(r *request) Reply {
	e := a.st.get(r.key)
	if e == nil {
		return Reply{Err: errorf(ReasonNotFound, false, "key %q not found", r.key)}
	}
	return Reply{Result: appendItem(nil, e, true)}
}

func appendItem(b []byte, e *entry, value bool) []byte {
	b = append(b, `{"key":`...)
	b = append(b, persist.Quote(e.key)...)
	b = append(b, `,"rev":`...)
	b = strconv.AppendInt(b, e.rev, 10)
	if value {
		b = append(b, `,"value":`...)
		b = persist.Compact(b, persist.EntryValue(e.frag))
	}
	return append(b, '}')
}

func (a *Actor) list(r *request) Reply {
	after := r.after
	if after.set && after.epoch != a.epoch {
		// A cursor from before a restart: its place numbers are stale, its key is not.
		e := a.st.get(after.key)
		if e == nil {
			return Reply{Err: invalidParams("cursor is from before a restart and its key is gone; start the listing again")}
		}
		after = cursorAfter(e, a.epoch)
	}
	b := []byte(`{"items":[`)
	n := 0
	var last *entry
	more := false
	a.st.each(after, func(e *entry) bool {
		if !strings.HasPrefix(e.key, r.prefix) {
			return true
		}
		if n == r.limit {
			more = true
			return false
		}
		if n > 0 {
			b = append(b, ',')
		}
		b = appendItem(b, e, r.values)
		n++
		last = e
		return true
	})
	b = append(b, `],"next":`...)
	if more {
		b = strconv.AppendQuote(b, cursorAfter(last, a.epoch).String())
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"rev":`...)
	b = strconv.AppendInt(b, a.rev, 10)
	return Reply{Result: append(b, '}')}
}

// resultHead is the opening every single-key write result shares: {"key":K,"rev":N
func resultHead(key string, rev int64) []byte {
	b := append([]byte(`{"key":`), persist.Quote(key)...)
	b = append(b, `,"rev":`...)
	return strconv.AppendInt(b, rev, 10)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
