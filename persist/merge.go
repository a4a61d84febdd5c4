package persist

// Merge applies the JSON Merge Patch patch to target (RFC 7396) exactly as this
// JavaScript does, field order included:
//
//	function merge(t, p) {
//	  if (typeof p !== 'object' || p === null || Array.isArray(p)) return p;
//	  if (typeof t !== 'object' || t === null || Array.isArray(t)) t = {};
//	  for (const k of Object.keys(p)) { if (p[k] === null) delete t[k]; else t[k] = merge(t[k], p[k]); }
//	  return t; }
//
// so existing members keep their place, new ones are appended (index names inserted in
// numeric order) and members patched with null disappear. One deliberate difference:
// a "__proto__" name is an ordinary member here, where the JavaScript above would
// invoke the prototype setter. Merge copies on write: the result may share unchanged
// parts with target and patch, but their backing arrays are never modified.
// Merge is safe for concurrent use.
func Merge(target, patch Value) Value { return merge(target, patch, false) }

// MergeOwned is Merge for a target that is the caller's alone (just parsed, say): it
// modifies and reuses target's arrays instead of copying every object it patches.
// patch is never modified; the result may share parts of it.
func MergeOwned(target, patch Value) Value { return merge(target, patch, true) }

func merge(target, patch Value, owned bool) Value {
	if patch.Kind != Object {
		return patch
	}
	var base []Member
	if target.Kind == Object {
		base = target.Obj
	}
	out := base
	if !owned {
		out = make([]Member, len(base), len(base)+len(patch.Obj))
		copy(out, base)
	}
	// Names are looked up by scanning, unless that could be quadratic (a hostile patch,
	// a huge target): then through an index. A usual patch of a usual entry scans.
	var at map[string]int
	if len(patch.Obj) > linearLimit || len(patch.Obj) > 1 && len(out)*len(patch.Obj) > linearLimit*linearLimit {
		at = make(map[string]int, len(out)+len(patch.Obj))
		for i, m := range out {
			at[m.Name] = i
		}
	}
	find := func(name string) int {
		if at != nil {
			if i, ok := at[name]; ok {
				return i
			}
			return -1
		}
		return memberIndex(out, name)
	}
	deleted, newIndex := 0, false
	for _, m := range patch.Obj {
		i := find(m.Name)
		switch {
		case m.Value.Kind == Null:
			if i >= 0 {
				out[i].Name = "" // a tombstone: no canonical literal is empty
				out[i].Value = Value{}
				deleted++
				delete(at, m.Name)
			}
		case i >= 0:
			out[i].Value = merge(out[i].Value, m.Value, owned)
		default:
			out = append(out, Member{Name: m.Name, Value: merge(Value{}, m.Value, owned)})
			if at != nil {
				at[m.Name] = len(out) - 1
			}
			if _, ok := arrayIndex(m.Name); ok {
				newIndex = true
			}
		}
	}
	if deleted > 0 {
		kept := out[:0]
		for _, m := range out {
			if m.Name != "" {
				kept = append(kept, m)
			}
		}
		clear(out[len(kept):])
		out = kept
	}
	if newIndex {
		sortIndexFirst(out)
	}
	if len(out) == 0 {
		out = nil
	}
	return Value{Kind: Object, Obj: out}
}
