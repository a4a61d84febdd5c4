package actor

import (
	"bytes"
	"encoding/base64"
	"sort"
	"strconv"
	"strings"
)

// entry is one key of the store. frag is its encoded form as sessions.json holds it
// (persist.EncodeEntry); a write replaces the slice, never its bytes, so a snapshot can
// hold on to old slices while the actor carries on.
type entry struct {
	key     string
	frag    []byte
	rev     int64
	seq     uint64 // order among the non-index keys: insertion order
	num     uint32 // for index keys: the numeric value that orders them
	index   bool   // an array-index key, which JavaScript puts first in numeric order
	deleted bool   // a tombstone left in store.order until compaction
	pos     int    // position in store.order (non-index keys)
}

// store holds the keys in the order JavaScript enumerates them. It is touched only by the
// actor goroutine. Every change pushes an undo record until the batch is committed, so a
// batch whose journal write fails can be taken back exactly, order included.
type store struct {
	m         map[string]*entry
	order     []*entry // non-index keys by seq, with tombstones
	tombs     int
	indexed   []*entry // index keys by num
	nextSeq   uint64
	fragBytes int64
	undo      []undo
}

type undoKind uint8

const (
	undoCreate undoKind = iota
	undoReplace
	undoDelete
	undoDedup
)

type undo struct {
	kind undoKind
	e    *entry
	frag []byte
	rev  int64
}

func newStore() *store { return &store{m: make(map[string]*entry)} }

// arrayIndex reports whether key is a canonical decimal integer below 2^32-1, the keys
// JavaScript orders first.
func arrayIndex(key string) (uint32, bool) {
	if key == "" || len(key) > 10 || (len(key) > 1 && key[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(key, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false
	}
	return uint32(n), true
}

func (s *store) get(key string) *entry { return s.m[key] }

func (s *store) len() int { return len(s.m) }

// fileSize is the size of sessions.json for the current state.
func (s *store) fileSize() int64 {
	if len(s.m) == 0 {
		return 2
	}
	return s.fragBytes + 2*int64(len(s.m)) + 2
}

// set writes key: an existing key keeps its place, a new one goes last (or among the
// index keys in numeric order).
// ownFrags gives every entry bytes of its own. After a load they alias the file
// buffers (the whole store, the whole journal), which would otherwise live as long as
// any one entry loaded from them is unchanged.
func (s *store) ownFrags() {
	for _, e := range s.m {
		e.frag = bytes.Clone(e.frag)
	}
}

func (s *store) set(key string, frag []byte, rev int64) {
	if e := s.m[key]; e != nil {
		s.undo = append(s.undo, undo{kind: undoReplace, e: e, frag: e.frag, rev: e.rev})
		s.fragBytes += int64(len(frag) - len(e.frag))
		e.frag, e.rev = frag, rev
		return
	}
	e := &entry{key: key, frag: frag, rev: rev}
	if n, ok := arrayIndex(key); ok {
		e.index, e.num = true, n
		s.insertIndexed(e)
	} else {
		e.seq = s.nextSeq
		s.nextSeq++
		e.pos = len(s.order)
		s.order = append(s.order, e)
	}
	s.m[key] = e
	s.fragBytes += int64(len(frag))
	s.undo = append(s.undo, undo{kind: undoCreate, e: e})
}

func (s *store) del(key string) bool {
	e := s.m[key]
	if e == nil {
		return false
	}
	delete(s.m, key)
	s.fragBytes -= int64(len(e.frag))
	if e.index {
		s.removeIndexed(e)
	} else {
		e.deleted = true
		s.tombs++
	}
	s.undo = append(s.undo, undo{kind: undoDelete, e: e})
	return true
}

func (s *store) insertIndexed(e *entry) {
	i := sort.Search(len(s.indexed), func(i int) bool { return s.indexed[i].num >= e.num })
	s.indexed = append(s.indexed, nil)
	copy(s.indexed[i+1:], s.indexed[i:])
	s.indexed[i] = e
}

func (s *store) removeIndexed(e *entry) {
	i := sort.Search(len(s.indexed), func(i int) bool { return s.indexed[i].num >= e.num })
	s.indexed = append(s.indexed[:i], s.indexed[i+1:]...)
}

// mark returns a point to roll back to.
func (s *store) mark() int { return len(s.undo) }

// rollback undoes every change after mark, newest first, so each step finds the store
// exactly as the change left it. unDedup undoes the dedup records kept in the same log.
func (s *store) rollback(mark int, unDedup func()) {
	for i := len(s.undo) - 1; i >= mark; i-- {
		u := s.undo[i]
		e := u.e
		switch u.kind {
		case undoReplace:
			s.fragBytes += int64(len(u.frag) - len(e.frag))
			e.frag, e.rev = u.frag, u.rev
		case undoCreate:
			delete(s.m, e.key)
			s.fragBytes -= int64(len(e.frag))
			if e.index {
				s.removeIndexed(e)
			} else {
				// Creations are undone newest first, so this one is last in order.
				s.order = s.order[:len(s.order)-1]
				s.nextSeq--
			}
		case undoDelete:
			s.m[e.key] = e
			s.fragBytes += int64(len(e.frag))
			if e.index {
				s.insertIndexed(e)
			} else {
				e.deleted = false
				s.tombs--
			}
		case undoDedup:
			unDedup()
		}
	}
	s.undo = s.undo[:mark]
}

// commit forgets the undo log and, between batches, drops tombstones once they are half
// of the order. A tombstone's bytes are dropped at once: only a rollback needed them.
func (s *store) commit() {
	for _, u := range s.undo {
		if u.kind == undoDelete {
			u.e.frag = nil
		}
	}
	clear(s.undo)
	s.undo = s.undo[:0]
	if s.tombs > 1024 && s.tombs*2 > len(s.order) {
		live := s.order[:0]
		for _, e := range s.order {
			if !e.deleted {
				e.pos = len(live)
				live = append(live, e)
			}
		}
		clear(s.order[len(live):])
		s.order = live
		s.tombs = 0
	}
}

// each calls f for every entry in file order until f returns false, starting after the
// position described by cursor (see cursorAfter).
func (s *store) each(after cursor, f func(*entry) bool) {
	if !after.seqPhase {
		start := 0
		if after.set {
			start = sort.Search(len(s.indexed), func(i int) bool { return s.indexed[i].num > after.num })
		}
		for _, e := range s.indexed[start:] {
			if !f(e) {
				return
			}
		}
	}
	start := 0
	if after.seqPhase {
		start = sort.Search(len(s.order), func(i int) bool { return s.order[i].seq > after.seq })
	}
	for _, e := range s.order[start:] {
		if !e.deleted && !f(e) {
			return
		}
	}
}

// frags returns every entry's encoded form in file order: the immutable view a snapshot
// is written from.
func (s *store) frags() [][]byte {
	out := make([][]byte, 0, len(s.m))
	s.each(cursor{}, func(e *entry) bool {
		out = append(out, e.frag)
		return true
	})
	return out
}

// cursor is a position in file order, as the opaque list cursor carries it: the entry
// it follows, by its place (index number or insertion sequence) and by key. Places are
// numbered anew at every start, so a cursor also names the numbering it belongs to
// (epoch); one from an earlier process is resolved through its key.
type cursor struct {
	set      bool
	seqPhase bool
	num      uint32
	seq      uint64
	epoch    uint64
	key      string
}

func cursorAfter(e *entry, epoch uint64) cursor {
	c := cursor{set: true, epoch: epoch, key: e.key}
	if e.index {
		c.num = e.num
	} else {
		c.seqPhase, c.seq = true, e.seq
	}
	return c
}

func (c cursor) String() string {
	place := "i" + strconv.FormatUint(uint64(c.num), 10)
	if c.seqPhase {
		place = "s" + strconv.FormatUint(c.seq, 10)
	}
	return strconv.FormatUint(c.epoch, 36) + "." + place + "." + base64.RawURLEncoding.EncodeToString([]byte(c.key))
}

func parseCursor(s string) (cursor, bool) {
	if s == "" {
		return cursor{}, true
	}
	parts := strings.SplitN(s, ".", 3)
	if len(parts) != 3 || len(parts[1]) < 2 {
		return cursor{}, false
	}
	epoch, err1 := strconv.ParseUint(parts[0], 36, 64)
	key, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	n, err3 := strconv.ParseUint(parts[1][1:], 10, 64)
	c := cursor{set: true, epoch: epoch, key: string(key)}
	switch parts[1][0] {
	case 's':
		c.seqPhase, c.seq = true, n
	case 'i':
		if n >= 1<<32-1 {
			return cursor{}, false
		}
		c.num = uint32(n)
	default:
		return cursor{}, false
	}
	return c, err1 == nil && err2 == nil && err3 == nil
}
