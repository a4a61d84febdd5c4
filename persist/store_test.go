package persist

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// aliases reports whether sub is a sub-slice of data (shares its backing array), which is
// the zero-copy fast path of ParseStore. Sub-slices end at the same last capacity element.
func aliases(sub, data []byte) bool {
	if cap(sub) == 0 || cap(data) == 0 {
		return false
	}
	return &sub[:cap(sub)][cap(sub)-1] == &data[:cap(data)][cap(data)-1]
}

func storeText(t testing.TB, entries []Entry) string {
	t.Helper()
	frags := make([][]byte, len(entries))
	for i, e := range entries {
		frags[i] = e.Frag
	}
	return string(AppendStore(nil, frags))
}

// requireCanonicalEntries checks the Frag invariant: Frag == EncodeEntry(Key, Parse(value)).
func requireCanonicalEntries(t testing.TB, entries []Entry) {
	t.Helper()
	for _, e := range entries {
		v, err := Parse(EntryValue(e.Frag), 0)
		require.NoError(t, err, "entry %q", e.Key)
		require.Equal(t, string(EncodeEntry(e.Key, v)), string(e.Frag), "entry %q", e.Key)
	}
}

// TestStoreFixtures compares with stores Node wrote (testdata/stringify/gen.js): loading
// and writing any store gives Node's bytes, and a Node-written store round-trips
// byte-identical without copying a single entry.
func TestStoreFixtures(t *testing.T) {
	ins, err := filepath.Glob("testdata/stringify/stores/*.in.json")
	require.NoError(t, err)
	require.Greater(t, len(ins), 20)
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.json")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(in)
			require.NoError(t, err)
			want, err := os.ReadFile(strings.TrimSuffix(in, ".in.json") + ".out.json")
			require.NoError(t, err)

			entries, err := ParseStore(src, 0)
			require.NoError(t, err)
			require.Equal(t, string(want), storeText(t, entries))
			requireCanonicalEntries(t, entries)

			entries, err = ParseStore(want, 0)
			require.NoError(t, err)
			require.Equal(t, string(want), storeText(t, entries))
			for _, e := range entries {
				require.True(t, aliases(e.Frag, want), "entry %q was copied", e.Key)
			}
		})
	}
}

func TestParseStore(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // AppendStore of the entries
		keys []string
	}{
		{"empty", `{}`, `{}`, nil},
		{"empty with space", " \n{ \t}\r\n", `{}`, nil},
		{"compact", `{"a":{"x":1.0},"b":[]}`, "{\n  \"a\": {\n    \"x\": 1\n  },\n  \"b\": []\n}", []string{"a", "b"}},
		{"duplicate key", `{"a":{"v":1},"b":{},"a":{"v":2}}`, "{\n  \"a\": {\n    \"v\": 2\n  },\n  \"b\": {}\n}", []string{"a", "b"}},
		{"duplicate via escape", `{"a":1,"\u0061":2}`, "{\n  \"a\": 2\n}", []string{"a"}},
		{"index keys first", `{"x":1,"10":2,"2":3,"02":4,"4294967295":5,"4294967294":6}`,
			"{\n  \"2\": 3,\n  \"10\": 2,\n  \"4294967294\": 6,\n  \"x\": 1,\n  \"02\": 4,\n  \"4294967295\": 5\n}",
			[]string{"2", "10", "4294967294", "x", "02", "4294967295"}},
		{"escaped key", `{"\u00e9\n\"":{}}`, "{\n  \"é\\n\\\"\": {}\n}", []string{"é\n\""}},
		{"lone surrogate in value", `{"a":"\uD800"}`, "{\n  \"a\": \"\\ud800\"\n}", []string{"a"}},
		{"non-canonical nested", "{\n  \"a\": {\n    \"b\": 1,\n    \"0\": 2\n  }\n}", "{\n  \"a\": {\n    \"0\": 2,\n    \"b\": 1\n  }\n}", []string{"a"}},
		{"non-canonical number", "{\n  \"a\": [\n    1E2\n  ]\n}", "{\n  \"a\": [\n    100\n  ]\n}", []string{"a"}},
		{"non-canonical minus zero", "{\n  \"a\": -0\n}", "{\n  \"a\": 0\n}", []string{"a"}},
		{"non-canonical dup nested", "{\n  \"a\": {\n    \"k\": 1,\n    \"k\": 2\n  }\n}", "{\n  \"a\": {\n    \"k\": 2\n  }\n}", []string{"a"}},
		{"non-canonical escape", "{\n  \"a\": \"\\/\"\n}", "{\n  \"a\": \"/\"\n}", []string{"a"}},
		{"non-canonical indent", "{\n  \"a\": {\n   \"b\": 1\n  }\n}", "{\n  \"a\": {\n    \"b\": 1\n  }\n}", []string{"a"}},
		{"infinity", "{\n  \"a\": 1e999\n}", "{\n  \"a\": null\n}", []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, err := ParseStore([]byte(tt.in), 0)
			require.NoError(t, err)
			require.Equal(t, tt.want, storeText(t, entries))
			var keys []string
			for _, e := range entries {
				keys = append(keys, e.Key)
			}
			require.Equal(t, tt.keys, keys)
			requireCanonicalEntries(t, entries)
		})
	}
}

func TestParseStoreFastPath(t *testing.T) {
	// Canonical entries alias the input; the others are re-encoded and so do not.
	src := []byte("{\n  \"ok\": {\n    \"a\": [\n      1,\n      \"x\"\n    ],\n    \"b\": {}\n  },\n  \"re\": {\n    \"a\": 1.0\n  },\n  \"\\u006b\": {}\n}")
	entries, err := ParseStore(src, 0)
	require.NoError(t, err)
	require.Len(t, entries, 3)
	require.True(t, aliases(entries[0].Frag, src))
	require.False(t, aliases(entries[1].Frag, src))
	require.False(t, aliases(entries[2].Frag, src), "an escaped key is re-encoded")
	require.Equal(t, "  \"k\": {}", string(entries[2].Frag))

	// Canonical objects with many members go through the map-based duplicate check.
	var b strings.Builder
	b.WriteString("{\n  \"big\": {")
	for i := range 40 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n    \"k%d\": %d", i, i)
	}
	b.WriteString("\n  }\n}")
	big := []byte(b.String())
	entries, err = ParseStore(big, 0)
	require.NoError(t, err)
	require.True(t, aliases(entries[0].Frag, big))
	dup := []byte(strings.Replace(b.String(), `"k39"`, `"k3"`, 1))
	entries, err = ParseStore(dup, 0)
	require.NoError(t, err)
	require.False(t, aliases(entries[0].Frag, dup))
	require.Contains(t, string(entries[0].Frag), "\"k3\": 39,\n")
}

func TestParseStoreErrors(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		max    int
		offset string
		msg    string
	}{
		{"array", ` []`, 0, "offset 1:", "top level is not an object"},
		{"string", `"x"`, 0, "offset 0:", "top level is not an object"},
		{"broken array", `[1,`, 0, "offset 3:", "unexpected end of input"},
		{"empty", ``, 0, "offset 0:", "unexpected end of input"},
		{"trailing data", `{} {}`, 0, "offset 3:", "after top-level value"},
		{"unclosed", `{"a":{}`, 0, "offset 7:", "unexpected end of input"},
		{"trailing comma", `{"a":{},}`, 0, "offset 8:", "looking for beginning of object key string"},
		{"lone surrogate key", `{"a":{},"\ud800":{}}`, 0, "offset 8:", "lone surrogate"},
		{"lone low surrogate key", "{\n  \"\\udc00x\": {}\n}", 0, "offset 4:", "lone surrogate"},
		{"bad value canonical layout", "{\n  \"a\": {\n    \"b\": tru\n  }\n}", 0, "offset 23:", "in literal true"},
		{"invalid utf8 in value", "{\n  \"a\": \"\xff\"\n}", 0, "offset 10:", "invalid UTF-8"},
		{"too deep canonical", "{\n  \"a\": {\n    \"b\": {}\n  }\n}", 2, "offset 20:", "too deep"},
		{"too deep compact", `{"a":{"b":[]}}`, 2, "offset 10:", "too deep"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStore([]byte(tt.in), tt.max)
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.offset)
			require.Contains(t, err.Error(), tt.msg)
		})
	}
	_, err := ParseStore([]byte(`{"a":{"b":[]}}`), 2)
	require.ErrorIs(t, err, ErrTooDeep)
	_, err = ParseStore([]byte(`{"a":{"b":[]}}`), 3)
	require.NoError(t, err)
}

func TestEncodeEntry(t *testing.T) {
	tests := []struct {
		key, value, want string
	}{
		{"a", `{}`, `  "a": {}`},
		{"k\"\n", `{"x":[1]}`, "  \"k\\\"\\n\": {\n    \"x\": [\n      1\n    ]\n  }"},
		{`\`, `"v"`, `  "\\": "v"`},
		{"", `1`, `  "": 1`},
	}
	for _, tt := range tests {
		frag := EncodeEntry(tt.key, mustParse(t, tt.value))
		require.Equal(t, tt.want, string(frag))
		require.Equal(t, compact(mustParse(t, tt.value)), string(Compact(nil, EntryValue(frag))))
	}
}

func TestAppendStore(t *testing.T) {
	require.Equal(t, "x{}", string(AppendStore([]byte("x"), nil)))
	require.Equal(t, "{\n  \"a\": 1\n}", string(AppendStore(nil, [][]byte{[]byte(`  "a": 1`)})))
	require.Equal(t, "{\n  \"a\": 1,\n  \"b\": {}\n}",
		string(AppendStore(nil, [][]byte{[]byte(`  "a": 1`), []byte(`  "b": {}`)})))
}

// benchStore builds a Node-layout store of n entries whose values are made by value(i).
func benchStore(n int, value func(i int) string) []byte {
	frags := make([][]byte, n)
	for i := range frags {
		v, err := Parse([]byte(value(i)), 0)
		if err != nil {
			panic(err)
		}
		frags[i] = EncodeEntry(fmt.Sprintf("session:%08d", i), v)
	}
	return AppendStore(nil, frags)
}

// BenchmarkParseStore loads 50 MB stores in the two shapes sessiond sees: few entries
// with big prompt strings, and many small entries.
func BenchmarkParseStore(b *testing.B) {
	para := strings.Repeat(`The user asked: \"summarise the report\" <b>now</b> & then\n\tcontinue – café ☕ 😀. `, 600)[:50_000]
	para = para[:strings.LastIndex(para, ". ")+1]
	shapes := []struct {
		name string
		data []byte
	}{
		{"1000x50KB", benchStore(1000, func(i int) string {
			return fmt.Sprintf(`{"rev":%d,"model":"m-%d","prompt":"%s","temperature":0.7,"tags":["a","b"],"meta":{}}`, i+1, i%7, para)
		})},
		{"100000x500B", benchStore(100_000, func(i int) string {
			return fmt.Sprintf(`{"rev":%d,"created_ms":%d,"title":"Session %d \u00e9","user":{"id":"u-%d","name":"Name %d"},"flags":[true,false,null],"score":%g,"text":"%s"}`,
				i+1, 1718000000000+int64(i), i, i%1000, i, float64(i)/3, strings.Repeat("lorem ipsum ", 28))
		})},
	}
	for _, s := range shapes {
		b.Run(s.name, func(b *testing.B) {
			b.SetBytes(int64(len(s.data)))
			b.ReportAllocs()
			for b.Loop() {
				entries, err := ParseStore(s.data, 64)
				if err != nil {
					b.Fatal(err)
				}
				if !aliases(entries[len(entries)-1].Frag, s.data) {
					b.Fatal("slow path taken")
				}
			}
		})
	}
}
