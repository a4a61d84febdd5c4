package persist

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMerge(t *testing.T) {
	tests := []struct{ name, target, patch, want string }{
		// RFC 7396 appendix A (with JavaScript's field order).
		{"replace", `{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{"add", `{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{"delete", `{"a":"b"}`, `{"a":null}`, `{}`},
		{"delete one", `{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{"array replaces", `{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{"scalar to array", `{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{"nested", `{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{"array of objects", `{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{"arrays", `["a","b"]`, `["c","d"]`, `["c","d"]`},
		{"object to array", `{"a":"b"}`, `["c"]`, `["c"]`},
		{"null patch", `{"a":"foo"}`, `null`, `null`},
		{"string patch", `{"a":"foo"}`, `"bar"`, `"bar"`},
		{"null member kept", `{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{"array target", `[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{"nulls in new object dropped", `{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
		// Field order.
		{"existing keep place, new appended", `{"a":1,"b":2,"c":3}`, `{"d":4,"b":20,"a":10}`, `{"a":10,"b":20,"c":3,"d":4}`},
		{"deleted removed", `{"a":1,"b":2,"c":3}`, `{"b":null,"e":5}`, `{"a":1,"c":3,"e":5}`},
		{"index keys ordered", `{"b":1,"5":1,"a":2}`, `{"z":0,"7":7,"2":2,"5":55,"4294967295":1}`,
			`{"2":2,"5":55,"7":7,"b":1,"a":2,"z":0,"4294967295":1}`},
		{"index keys nested", `{"x":{"9":0}}`, `{"x":{"y":1,"10":1,"1":1}}`, `{"x":{"1":1,"9":0,"10":1,"y":1}}`},
		{"delete index", `{"1":1,"2":2,"a":0}`, `{"1":null,"3":3}`, `{"2":2,"3":3,"a":0}`},
		// Nested patches and non-object targets.
		{"deep", `{"a":{"b":{"c":{"d":1,"e":2}}}}`, `{"a":{"b":{"c":{"d":null,"f":3},"g":[null]}}}`,
			`{"a":{"b":{"c":{"e":2,"f":3},"g":[null]}}}`},
		{"scalar target member", `{"a":1}`, `{"a":{"b":null,"c":2}}`, `{"a":{"c":2}}`},
		{"array target member", `{"a":[1]}`, `{"a":{"0":"x"}}`, `{"a":{"0":"x"}}`},
		{"string target", `"s"`, `{"a":1}`, `{"a":1}`},
		{"null target", `null`, `{"a":null}`, `{}`},
		{"empty patch", `{"a":1}`, `{}`, `{"a":1}`},
		{"number patch", `{"a":1}`, `2`, `2`},
		{"delete missing", `{"a":1}`, `{"zz":null}`, `{"a":1}`},
		{"proto is plain", `{"__proto__":{"a":1}}`, `{"__proto__":{"b":2}}`, `{"__proto__":{"a":1,"b":2}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, patch := mustParse(t, tt.target), mustParse(t, tt.patch)
			got := Merge(target, patch)
			require.Equal(t, tt.want, compact(got))
			require.Equal(t, compact(mustParse(t, tt.target)), compact(target), "target changed")
			require.Equal(t, compact(mustParse(t, tt.patch)), compact(patch), "patch changed")
		})
	}
}

func TestMergeLarge(t *testing.T) {
	// Past linearLimit Merge indexes names with a map; order and results must not change.
	var tb, pb, wb strings.Builder
	tb.WriteString("{")
	pb.WriteString("{")
	wb.WriteString("{")
	for i := range 50 {
		sep := map[bool]string{true: "", false: ","}[i == 0]
		fmt.Fprintf(&tb, `%s"t%d":%d`, sep, i, i)
	}
	for i := range 50 {
		sep := map[bool]string{true: "", false: ","}[i == 0]
		switch i % 3 {
		case 0:
			fmt.Fprintf(&pb, `%s"t%d":null`, sep, i)
		case 1:
			fmt.Fprintf(&pb, `%s"t%d":"x"`, sep, i)
		default:
			fmt.Fprintf(&pb, `%s"n%d":%d`, sep, i, i)
		}
	}
	first := true
	for i := range 50 {
		if i%3 == 0 {
			continue
		}
		v := fmt.Sprint(i)
		if i%3 == 1 {
			v = `"x"`
		}
		if !first {
			wb.WriteString(",")
		}
		first = false
		fmt.Fprintf(&wb, `"t%d":%s`, i, v)
	}
	for i := range 50 {
		if i%3 == 2 {
			fmt.Fprintf(&wb, `,"n%d":%d`, i, i)
		}
	}
	tb.WriteString("}")
	pb.WriteString("}")
	wb.WriteString("}")
	require.Equal(t, wb.String(), compact(Merge(mustParse(t, tb.String()), mustParse(t, pb.String()))))
	require.Equal(t, wb.String(), compact(MergeOwned(mustParse(t, tb.String()), mustParse(t, pb.String()))))
}

func TestMergeCopyOnWrite(t *testing.T) {
	target := mustParse(t, `{"a":{"b":1,"c":[1,2]},"d":2,"e":{"f":{}}}`)
	patch := mustParse(t, `{"a":{"b":null,"x":{"y":null}},"d":null,"g":{"h":null,"i":1},"1":0}`)
	before, patchBefore := compact(target), compact(patch)
	merged := Merge(target, patch)
	require.Equal(t, `{"1":0,"a":{"c":[1,2],"x":{}},"e":{"f":{}},"g":{"i":1}}`, compact(merged))
	require.Equal(t, before, compact(target))
	require.Equal(t, patchBefore, compact(patch))

	// Patching the result again leaves the first result alone.
	again := Merge(merged, mustParse(t, `{"a":{"c":null},"e":null}`))
	require.Equal(t, `{"1":0,"a":{"x":{}},"g":{"i":1}}`, compact(again))
	require.Equal(t, `{"1":0,"a":{"c":[1,2],"x":{}},"e":{"f":{}},"g":{"i":1}}`, compact(merged))
	require.Equal(t, before, compact(target))
}

// TestMergeFixtures compares with the JavaScript merge run by Node (testdata/stringify/gen.js).
func TestMergeFixtures(t *testing.T) {
	outs, err := filepath.Glob("testdata/stringify/merge/*.out.json")
	require.NoError(t, err)
	require.Greater(t, len(outs), 100)
	for _, out := range outs {
		base := strings.TrimSuffix(out, ".out.json")
		t.Run(filepath.Base(base), func(t *testing.T) {
			read := func(name string) []byte {
				b, err := os.ReadFile(name)
				require.NoError(t, err)
				return b
			}
			target, err := Parse(read(base+".target.json"), 0)
			require.NoError(t, err)
			patch, err := Parse(read(base+".patch.json"), 0)
			require.NoError(t, err)
			before := AppendCompact(nil, target)
			got := AppendIndent(nil, Merge(target, patch), 0)
			require.Equal(t, string(read(out)), string(got))
			require.Equal(t, string(before), string(AppendCompact(nil, target)))
		})
	}
}
