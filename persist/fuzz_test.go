package persist

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// The fuzz targets report with t.Fatalf rather than require so that a failure prints
// the offending encodings compactly. Seed corpora live in testdata/fuzz/<Name>/.

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5e-7,"\u0041\ud800"],"1":{}}`, `"\uD83D\uDE00"`, `1E400`, `[{"a":1,"a":2}]`, "\"\xff\"", `-0`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Parse(data, 0)
		checkSplitObject(t, data, v, err)
		// Acceptance matches encoding/json's RFC 8259 grammar, except that Parse also
		// insists on valid UTF-8 as JSON.parse of a decoded request line does.
		if want := json.Valid(data) && utf8.Valid(data); (err == nil) != want {
			t.Fatalf("Parse error %v, but json.Valid && utf8.Valid = %v", err, want)
		}
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Offset < 0 || se.Offset > int64(len(data)) {
				t.Fatalf("bad error %v", err)
			}
			return
		}
		enc := AppendIndent(nil, v, 0)
		again, err := Parse(enc, 0)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", enc, err)
		}
		if enc2 := AppendIndent(nil, again, 0); string(enc2) != string(enc) {
			t.Fatalf("not stable:\n%s\n%s", enc, enc2)
		}
		flat := AppendCompact(nil, v)
		if c := Compact(nil, enc); string(c) != string(flat) {
			t.Fatalf("Compact(indent) = %s, AppendCompact = %s", c, flat)
		}
		if again, err := Parse(flat, 0); err != nil || string(AppendIndent(nil, again, 0)) != string(enc) {
			t.Fatalf("compact form %s does not round-trip: %v", flat, err)
		}
		// Scalars decode as encoding/json decodes them (where it can represent them).
		switch v.Kind {
		case String:
			var s string
			if err := json.Unmarshal(data, &s); err != nil {
				t.Fatal(err)
			}
			if text, ok := v.Text(); ok && text != s {
				t.Fatalf("Text() = %q, encoding/json %q", text, s)
			}
		case Number:
			var n float64
			if json.Unmarshal(data, &n) == nil && n != v.Num {
				t.Fatalf("Num = %v, encoding/json %v", v.Num, n)
			}
		}
		// A depth limit either changes nothing or refuses the input as too deep.
		if lim, err := Parse(data, 3); err != nil && !errors.Is(err, ErrTooDeep) || err == nil && string(AppendIndent(nil, lim, 0)) != string(enc) {
			t.Fatalf("with maxDepth 3: %v", err)
		}
	})
}

func FuzzParseStore(f *testing.F) {
	for _, s := range []string{"{\n  \"a\": {\n    \"b\": [\n      1\n    ]\n  }\n}", `{"b":{},"1":{"x":1.0},"b":[]}`, `{}`, `[]`, `{"\ud800":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParseStore(data, 0)
		// Whatever Parse accepts as an object with valid UTF-8 names, ParseStore accepts
		// and writes as JSON.stringify(store, null, 2) does.
		v, perr := Parse(data, 0)
		validNames := perr == nil && v.Kind == Object
		if validNames {
			for _, m := range v.Obj {
				if _, ok := unquote(m.Name); !ok {
					validNames = false
				}
			}
		}
		if (err == nil) != validNames {
			t.Fatalf("ParseStore error %v, Parse error %v, object with valid names %v", err, perr, validNames)
		}
		if err != nil {
			return
		}
		frags := make([][]byte, len(entries))
		for i, e := range entries {
			frags[i] = e.Frag
			val, err := Parse(EntryValue(e.Frag), 0)
			if err != nil {
				t.Fatalf("entry %q value: %v", e.Key, err)
			}
			if want := EncodeEntry(e.Key, val); string(want) != string(e.Frag) {
				t.Fatalf("entry %q not canonical:\n%s\nwant\n%s", e.Key, e.Frag, want)
			}
		}
		out := AppendStore(nil, frags)
		if want := AppendIndent(nil, v, 0); string(out) != string(want) {
			t.Fatalf("store:\n%s\nParse+AppendIndent:\n%s", out, want)
		}
		// The written store loads again without re-encoding anything.
		again, err := ParseStore(out, 0)
		if err != nil {
			t.Fatalf("reload %q: %v", out, err)
		}
		if len(again) != len(entries) {
			t.Fatalf("reload has %d entries, want %d", len(again), len(entries))
		}
		for i, e := range again {
			if e.Key != entries[i].Key || string(e.Frag) != string(entries[i].Frag) || !aliases(e.Frag, out) {
				t.Fatalf("reload entry %d: %q %q (aliases %v), want %q %q", i, e.Key, e.Frag, aliases(e.Frag, out), entries[i].Key, entries[i].Frag)
			}
		}
	})
}

func FuzzMerge(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":{"c":2},"5":0}`), []byte(`{"b":{"c":null,"d":[null]},"a":null,"e":{"f":null},"3":1}`))
	f.Add([]byte(`[1]`), []byte(`{"x":{"y":{}}}`))
	f.Add([]byte(`{"a":"b"}`), []byte(`"c"`))
	f.Fuzz(func(t *testing.T, target, patch []byte) {
		tv, err := Parse(target, 0)
		if err != nil {
			return
		}
		pv, err := Parse(patch, 0)
		if err != nil {
			return
		}
		tBefore, pBefore := string(AppendCompact(nil, tv)), string(AppendCompact(nil, pv))
		got := string(AppendCompact(nil, Merge(tv, pv)))
		want := string(AppendCompact(nil, fromRef(refMerge(toRef(tv), toRef(pv)))))
		if got != want {
			t.Fatalf("Merge(%s, %s)\n got %s\nwant %s", tBefore, pBefore, got, want)
		}
		if string(AppendCompact(nil, tv)) != tBefore || string(AppendCompact(nil, pv)) != pBefore {
			t.Fatalf("Merge modified its arguments")
		}
		// MergeOwned on a fresh parse of target: the same result, patch untouched.
		own, _ := Parse(target, 0)
		if got := string(AppendCompact(nil, MergeOwned(own, pv))); got != want {
			t.Fatalf("MergeOwned(%s, %s)\n got %s\nwant %s", tBefore, pBefore, got, want)
		}
		if string(AppendCompact(nil, pv)) != pBefore {
			t.Fatalf("MergeOwned modified the patch")
		}
	})
}

// refObj is a JavaScript object modelled the obvious way: a map plus the order in which
// names were added. Property order is computed when it is read, as the spec defines it.
type refObj struct {
	names []string // canonical literals, in insertion order
	m     map[string]any
}

// ref values: nil (null), bool, float64, string (canonical literal), []any, *refObj.

func refIndex(name string) (uint64, bool) {
	s, ok := unquote(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil && strconv.FormatUint(n, 10) == s && n < 1<<32-1
}

// keys is Object.keys: array indices ascending, then the rest in insertion order.
func (o *refObj) keys() []string {
	var index, rest []string
	for _, n := range o.names {
		if _, ok := refIndex(n); ok {
			index = append(index, n)
		} else {
			rest = append(rest, n)
		}
	}
	slices.SortFunc(index, func(a, b string) int {
		x, _ := refIndex(a)
		y, _ := refIndex(b)
		return int(int64(x) - int64(y))
	})
	return append(index, rest...)
}

func (o *refObj) set(name string, v any) {
	if _, ok := o.m[name]; !ok {
		o.names = append(o.names, name)
	}
	o.m[name] = v
}

func (o *refObj) delete(name string) {
	if _, ok := o.m[name]; ok {
		delete(o.m, name)
		o.names = slices.DeleteFunc(o.names, func(n string) bool { return n == name })
	}
}

func refMerge(t, p any) any {
	po, ok := p.(*refObj)
	if !ok {
		return p
	}
	to, ok := t.(*refObj)
	if !ok {
		to = &refObj{m: map[string]any{}}
	}
	for _, k := range po.keys() {
		if po.m[k] == nil {
			to.delete(k)
		} else {
			to.set(k, refMerge(to.m[k], po.m[k]))
		}
	}
	return to
}

// toRef deep-copies v into the reference model, so refMerge cannot disturb v.
func toRef(v Value) any {
	switch v.Kind {
	case Bool:
		return v.Bool
	case Number:
		return v.Num
	case String:
		return v.Str
	case Array:
		a := make([]any, len(v.Arr))
		for i, e := range v.Arr {
			a[i] = toRef(e)
		}
		return a
	case Object:
		o := &refObj{m: map[string]any{}}
		for _, m := range v.Obj {
			o.set(m.Name, toRef(m.Value))
		}
		return o
	}
	return nil
}

func fromRef(r any) Value {
	switch r := r.(type) {
	case bool:
		return Value{Kind: Bool, Bool: r}
	case float64:
		return Value{Kind: Number, Num: r}
	case string:
		return Value{Kind: String, Str: r}
	case []any:
		v := Value{Kind: Array}
		for _, e := range r {
			v.Arr = append(v.Arr, fromRef(e))
		}
		return v
	case *refObj:
		v := Value{Kind: Object}
		for _, k := range r.keys() {
			v.Obj = append(v.Obj, Member{Name: k, Value: fromRef(r.m[k])})
		}
		return v
	}
	return Value{}
}

// checkSplitObject: SplitObject accepts and refuses what Parse does, with the same
// error (at depth 3 too), and each member's bytes parse to the value Parse gave it.
func checkSplitObject(t *testing.T, data []byte, v Value, perr error) {
	t.Helper()
	members, isObject, err := SplitObject(data, 0)
	if fmt.Sprint(err) != fmt.Sprint(perr) {
		t.Fatalf("SplitObject error %v, Parse error %v", err, perr)
	}
	_, _, err3 := SplitObject(data, 3)
	if _, perr3 := Parse(data, 3); fmt.Sprint(err3) != fmt.Sprint(perr3) {
		t.Fatalf("with maxDepth 3: SplitObject error %v, Parse error %v", err3, perr3)
	}
	if perr != nil {
		return
	}
	if isObject != (v.Kind == Object) {
		t.Fatalf("isObject %v for a value of kind %v", isObject, v.Kind)
	}
	last := map[string]Value{}
	for _, m := range members {
		mv, err := Parse(m.Raw, 0)
		if err != nil {
			t.Fatalf("member %q: raw %q does not parse: %v", m.Name, m.Raw, err)
		}
		if m.Raw[0] == ' ' || m.Raw[len(m.Raw)-1] == ' ' {
			t.Fatalf("member %q: raw %q has whitespace around it", m.Name, m.Raw)
		}
		last[m.Name] = mv
	}
	for _, m := range v.Obj {
		name, ok := unquote(m.Name)
		if !ok || strings.ContainsRune(name, utf8.RuneError) {
			continue // a lone surrogate, replaced by SplitObject: it may share a name
		}
		if got, ok := last[name]; !ok || !bytes.Equal(AppendCompact(nil, got), AppendCompact(nil, m.Value)) {
			t.Fatalf("member %q: SplitObject's last value %s, Parse's %s", name, AppendCompact(nil, got), AppendCompact(nil, m.Value))
		}
	}
}

func TestSplitObject(t *testing.T) {
	members, isObject, err := SplitObject([]byte(` { "id" : 12345678901234567890 , "m\u0065thod":"get","params": {"key":"a"} ,"id":"x"} `), 0)
	require.NoError(t, err)
	require.True(t, isObject)
	require.Equal(t, []RawMember{
		{"id", []byte(`12345678901234567890`)},
		{"method", []byte(`"get"`)},
		{"params", []byte(`{"key":"a"}`)},
		{"id", []byte(`"x"`)},
	}, members)
	for _, s := range []string{`[1,{"a":2}]`, `"s"`, `null`, `{}`} {
		members, isObject, err := SplitObject([]byte(s), 0)
		require.NoError(t, err, s)
		require.Equal(t, s == `{}`, isObject, s)
		require.Empty(t, members, s)
	}
	_, _, err = SplitObject([]byte(`{"a":[[[[1]]]]}`), 3)
	require.ErrorIs(t, err, ErrTooDeep)
	for _, in := range []string{``, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{1:2}`, `[1,]`, `[1 2]`,
		`{"a":tru}`, `{"a":01}`, `{"a":"\x"}`, "{\"a\":\"\xff\"}", `{} {}`, `{"a":[}`, `-`, `1.`} {
		_, _, err := SplitObject([]byte(in), 0)
		_, perr := Parse([]byte(in), 0)
		require.Error(t, perr, in)
		require.Equal(t, perr.Error(), fmt.Sprint(err), in)
	}
}
