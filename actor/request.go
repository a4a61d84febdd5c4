package actor

import (
	"crypto/sha256"
	"math"
	"slices"
	"strings"

	"sessiond/persist"
)

// Request kinds: what the actor does with a request.
type kind uint8

const (
	kindGet kind = iota
	kindPut
	kindPatch
	kindDelete
	kindList
	kindTxn
	kindFlush
	kindCheck // only inside a txn
)

var methods = map[string]kind{
	"get": kindGet, "put": kindPut, "patch": kindPatch, "delete": kindDelete,
	"list": kindList, "txn": kindTxn, "flush": kindFlush,
}

var txnOps = map[string]kind{"put": kindPut, "patch": kindPatch, "delete": kindDelete, "check": kindCheck}

const (
	maxKeyBytes       = 4096
	maxRequestIDBytes = 128
	maxListLimit      = 10000
	defaultListLimit  = 100
	maxRev            = 1<<53 - 1
)

// request is one parsed and validated request on its way to the actor goroutine.
type request struct {
	kind  kind
	reply chan Reply // buffered; receives exactly one Reply

	// single-key methods and txn ops
	key   string
	frag  []byte        // put: the encoded entry, made before queueing
	merge persist.Value // patch
	ifRev int64         // -1: none

	// writes
	requestID   string
	fingerprint [16]byte
	deadline    int64 // Unix ms; 0: none
	durable     bool

	// list
	prefix string
	limit  int
	after  cursor
	values bool

	ops []request // txn
}

func (r *request) isWrite() bool {
	return r.kind == kindPut || r.kind == kindPatch || r.kind == kindDelete || r.kind == kindTxn
}

// parse turns a method and its raw params into a request. It runs on the caller's
// goroutine (one per connection), so the costly part of a write, decoding and encoding
// its value, happens in parallel before the single actor goroutine sees it.
func (a *Actor) parse(method string, raw []byte) (*request, *Error) {
	k, ok := methods[method]
	if !ok {
		return nil, errorf(ReasonMethodNotFound, false, "method %q not found", method)
	}
	p := persist.Value{Kind: persist.Object}
	if len(raw) > 0 {
		v, err := persist.Parse(raw, a.cfg.MaxDepth)
		if err != nil {
			return nil, invalidParams("params: %v", err)
		}
		if v.Kind != persist.Object {
			return nil, invalidParams("params must be an object (by-name)")
		}
		p = v
	}
	r := &request{kind: k, ifRev: -1, durable: true}
	var err *Error
	switch k {
	case kindGet:
		r.key, err = keyParam(p, "key")
	case kindPut, kindPatch, kindDelete:
		err = a.parseOp(r, p, "")
		if err == nil {
			err = parseCommon(r, p, method)
		}
	case kindList:
		err = parseList(r, p)
	case kindTxn:
		err = a.parseTxn(r, p)
		if err == nil {
			err = parseCommon(r, p, method)
		}
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// parseOp reads key, value/merge and if_rev for a single write or one txn op.
func (a *Actor) parseOp(r *request, p persist.Value, where string) *Error {
	var err *Error
	if r.key, err = keyParam(p, "key"); err != nil {
		return prefixed(where, err)
	}
	if r.ifRev, err = intParam(p, "if_rev", -1, 0, maxRev); err != nil {
		return prefixed(where, err)
	}
	switch r.kind {
	case kindPut:
		v, ok := p.Field("value")
		if !ok || v.Kind != persist.Object {
			return prefixed(where, invalidParams("value must be an object"))
		}
		r.frag = persist.EncodeEntry(r.key, v)
		if len(r.frag) > a.cfg.MaxValueBytes {
			return tooLarge("value", a.cfg.MaxValueBytes)
		}
	case kindPatch:
		v, ok := p.Field("merge")
		if !ok || v.Kind != persist.Object {
			return prefixed(where, invalidParams("merge must be an object (RFC 7396 merge patch)"))
		}
		r.merge = v
	case kindCheck:
		if r.ifRev < 0 {
			return prefixed(where, invalidParams("check needs if_rev"))
		}
	}
	return nil
}

func (a *Actor) parseTxn(r *request, p persist.Value) *Error {
	if _, ok := p.Field("if_rev"); ok {
		// A client expecting a txn-wide compare-and-set must not get an
		// unconditional write.
		return invalidParams("if_rev goes on each op of a txn (use a check op), not on the txn")
	}
	ops, ok := p.Field("ops")
	if !ok || ops.Kind != persist.Array {
		return invalidParams("ops must be an array")
	}
	r.ops = make([]request, len(ops.Arr))
	for i, o := range ops.Arr {
		where := "ops[" + itoa(int64(i)) + "]"
		if o.Kind != persist.Object {
			return invalidParams("%s must be an object", where)
		}
		name, _ := o.Field("op")
		s, _ := name.Text()
		k, ok := txnOps[s]
		if !ok {
			return invalidParams("%s.op must be one of put, patch, delete, check", where)
		}
		r.ops[i] = request{kind: k, ifRev: -1}
		if err := a.parseOp(&r.ops[i], o, where); err != nil {
			if err.Reason == ReasonTooLarge {
				err.Message = where + ": " + err.Message
				err.Data["index"] = i
			}
			return err
		}
	}
	return nil
}

// parseCommon reads the params every write method accepts.
func parseCommon(r *request, p persist.Value, method string) *Error {
	if v, ok := p.Field("request_id"); ok {
		s, ok := v.Text()
		if !ok || len(s) < 1 || len(s) > maxRequestIDBytes {
			return invalidParams("request_id must be a string of 1 to %d bytes", maxRequestIDBytes)
		}
		r.requestID = s
		r.fingerprint = fingerprint(method, p)
	}
	var err *Error
	if r.deadline, err = intParam(p, "deadline_ms", 0, 0, math.MaxInt64); err != nil {
		return err
	}
	if v, ok := p.Field("durable"); ok {
		if v.Kind != persist.Bool {
			return invalidParams("durable must be a boolean")
		}
		r.durable = v.Bool
	}
	return nil
}

// fingerprint identifies what a request asks for, to tell a retry from a reused
// request_id. The params that a client may reasonably change between attempts of the
// same request (its deadline, whether it waits for fsync) are left out.
//
// The top-level params are taken in name order, so a client that encodes the same
// params in another order is not refused; the order inside value and merge stays part of
// the request, since it decides the order of fields in the file.
func fingerprint(method string, p persist.Value) [16]byte {
	q := persist.Value{Kind: persist.Object}
	for _, m := range p.Obj {
		switch m.Name {
		case `"deadline_ms"`, `"durable"`, `"request_id"`:
			continue
		}
		q.Obj = append(q.Obj, m)
	}
	slices.SortFunc(q.Obj, func(x, y persist.Member) int { return strings.Compare(x.Name, y.Name) })
	sum := sha256.Sum256(persist.AppendCompact([]byte(method+"\x00"), q))
	var fp [16]byte
	copy(fp[:], sum[:])
	return fp
}

func parseList(r *request, p persist.Value) *Error {
	if v, ok := p.Field("prefix"); ok {
		s, ok := v.Text()
		if !ok {
			return invalidParams("prefix must be a string")
		}
		r.prefix = s
	}
	n, err := intParam(p, "limit", defaultListLimit, 1, maxListLimit)
	if err != nil {
		return err
	}
	r.limit = int(n)
	if v, ok := p.Field("cursor"); ok && v.Kind != persist.Null {
		s, ok := v.Text()
		if !ok {
			return invalidParams("cursor must be a string from a previous next")
		}
		if r.after, ok = parseCursor(s); !ok {
			return invalidParams("cursor %q is not one this server issued", s)
		}
	}
	if v, ok := p.Field("values"); ok {
		if v.Kind != persist.Bool {
			return invalidParams("values must be a boolean")
		}
		r.values = v.Bool
	}
	return nil
}

func keyParam(p persist.Value, name string) (string, *Error) {
	v, ok := p.Field(name)
	if !ok {
		return "", invalidParams("%s is required", name)
	}
	s, ok := v.Text()
	if !ok {
		return "", invalidParams("%s must be a string of valid UTF-8", name)
	}
	if len(s) < 1 || len(s) > maxKeyBytes {
		return "", invalidParams("%s must be 1 to %d bytes, not %d", name, maxKeyBytes, len(s))
	}
	return s, nil
}

// intParam reads an optional integer param in [lo, hi]; def when absent.
func intParam(p persist.Value, name string, def, lo, hi int64) (int64, *Error) {
	v, ok := p.Field(name)
	if !ok {
		return def, nil
	}
	if v.Kind != persist.Number || v.Num != math.Trunc(v.Num) || v.Num < float64(lo) || v.Num > float64(hi) {
		return 0, invalidParams("%s must be an integer from %d to %d", name, lo, hi)
	}
	return int64(v.Num), nil
}

func prefixed(where string, e *Error) *Error {
	if where != "" {
		e.Message = where + ": " + e.Message
	}
	return e
}

func tooLarge(what string, limit int) *Error {
	e := errorf(ReasonTooLarge, false, "%s is larger than the limit of %d bytes", what, limit)
	e.Data = map[string]any{"limit": limit}
	return e
}
