package persist

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func mustParse(t testing.TB, s string) Value {
	t.Helper()
	v, err := Parse([]byte(s), 0)
	require.NoError(t, err, "input %q", s)
	return v
}

func compact(v Value) string { return string(AppendCompact(nil, v)) }

// TestParseCanonical checks that Parse + AppendCompact is JSON.stringify(JSON.parse(in)).
// The expected strings were checked against node v20.
func TestParseCanonical(t *testing.T) {
	tests := []struct{ name, in, want string }{
		// numbers
		{"one point zero", `1.0`, `1`},
		{"exponent upper", `1E21`, `1e+21`},
		{"1e20 stays integer", `1e20`, `100000000000000000000`},
		{"1e-7 exponent", `1e-7`, `1e-7`},
		{"1.5e-7", `1.5e-7`, `1.5e-7`},
		{"1e-6 decimal", `1e-6`, `0.000001`},
		{"big integer digits", `123456789012345680000`, `123456789012345680000`},
		{"0.1", `0.1`, `0.1`},
		{"minus zero", `-0`, `0`},
		{"minus zero float", `-0.0e10`, `0`},
		{"overflow is null", `1e400`, `null`},
		{"negative overflow is null", `-1e400`, `null`},
		{"underflow is zero", `1e-400`, `0`},
		{"smallest denormal", `5e-324`, `5e-324`},
		{"2^53+1 rounds", `9007199254740993`, `9007199254740992`},
		{"max float", `1.7976931348623157e308`, `1.7976931348623157e+308`},
		{"negative exponent", `-12.50E-3`, `-0.0125`},
		{"15 digit int", `999999999999999`, `999999999999999`},
		{"16 digit int", `1234567890123456789`, `1234567890123456800`},
		{"exact tie digits", `0.30000000000000004`, `0.30000000000000004`},
		{"1e21 minus", `999999999999999999999`, `1e+21`},
		{"zero exponent", `0e10`, `0`},
		// strings
		{"short escapes", `"\"\\\/\b\f\n\r\t"`, `"\"\\/\b\f\n\r\t"`},
		{"control chars lowercase", `"\u0000\u001F\u000B\u007F"`, "\"\\u0000\\u001f\\u000b\x7f\""},
		{"unicode escape decoded", `"\u0041\u00e9\u4E2D"`, `"Aé中"`},
		{"html literal", `"<>&\u003c\u0026"`, `"<>&<&"`},
		{"line separators literal", `"\u2028\u2029"`, "\"\u2028\u2029\""},
		{"DEL literal", "\"\x7f\"", "\"\x7f\""},
		{"surrogate pair decoded", `"\uD83D\uDE00"`, `"😀"`},
		{"lone high kept", `"\uD800"`, `"\ud800"`},
		{"lone low kept", `"\uDC00x"`, `"\udc00x"`},
		{"low then high", `"\udc00\ud800"`, `"\udc00\ud800"`},
		{"high high", `"\ud800\ud800\udc00"`, `"\ud800𐀀"`},
		{"high then escaped backslash", `"\ud83d\\ude00"`, `"\ud83d\\ude00"`},
		{"bom and replacement literal", "\"\ufeff\ufffd\"", "\"\ufeff\ufffd\""},
		// objects
		{"index keys first", `{"b":1,"4294967295":2,"4294967294":3,"01":4,"1":5,"0":6,"a":7,"-1":9}`,
			`{"0":6,"1":5,"4294967294":3,"b":1,"4294967295":2,"01":4,"a":7,"-1":9}`},
		{"index keys nested", `{"x":[{"b":1,"2":2,"1":{"z":0,"0":0}}]}`, `{"x":[{"1":{"0":0,"z":0},"2":2,"b":1}]}`},
		{"duplicate keeps first place", `{"a":1,"b":2,"a":3}`, `{"a":3,"b":2}`},
		{"duplicate via escape", `{"a":1,"\u0061":{"x":1}}`, `{"a":{"x":1}}`},
		{"duplicate index", `{"x":0,"3":1,"1":2,"3":3}`, `{"1":2,"3":3,"x":0}`},
		{"proto is a plain key", `{"__proto__":{"a":1}}`, `{"__proto__":{"a":1}}`},
		{"empty containers", ` { "a" : { } , "b" : [ ] } `, `{"a":{},"b":[]}`},
		{"whitespace", "\t\r\n [ 1 ,\n2 ] \n", `[1,2]`},
		{"literals", `[true,false,null]`, `[true,false,null]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mustParse(t, tt.in)
			require.Equal(t, tt.want, compact(v))
			// Canonical output parses to itself.
			require.Equal(t, tt.want, compact(mustParse(t, tt.want)))
		})
	}
}

func TestParseDuplicatesManyMembers(t *testing.T) {
	// Past linearLimit the duplicate check switches to a map; the semantics must not change.
	var b strings.Builder
	b.WriteString("{")
	for i := range 40 {
		b.WriteString(`"k` + itoa(i) + `":1,`)
	}
	b.WriteString(`"k0":2,"kz":3,"k39":4,"5":5}`)
	v := mustParse(t, b.String())
	require.Len(t, v.Obj, 42)
	require.Equal(t, `"5"`, v.Obj[0].Name)
	require.Equal(t, `"k0"`, v.Obj[1].Name)
	require.Equal(t, "2", compact(v.Obj[1].Value))
	require.Equal(t, `"k39"`, v.Obj[40].Name)
	require.Equal(t, "4", compact(v.Obj[40].Value))
	require.Equal(t, `"kz"`, v.Obj[41].Name)
}

func TestAppendIndent(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		depth int
		want  string
	}{
		{"scalar", `1`, 0, `1`},
		{"empty object", `{}`, 0, `{}`},
		{"empty array", `[]`, 3, `[]`},
		{"object", `{"a":1,"b":[1,{}],"c":{"d":null}}`, 0,
			"{\n  \"a\": 1,\n  \"b\": [\n    1,\n    {}\n  ],\n  \"c\": {\n    \"d\": null\n  }\n}"},
		{"nested at depth 1", `{"a":[true]}`, 1, "{\n    \"a\": [\n      true\n    ]\n  }"},
		{"deep indentation", strings.Repeat("[", 40) + "1" + strings.Repeat("]", 40), 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mustParse(t, tt.in)
			got := AppendIndent([]byte("prefix"), v, tt.depth)
			require.Equal(t, "prefix", string(got[:6]))
			got = got[6:]
			if tt.want != "" {
				require.Equal(t, tt.want, string(got))
			}
			// Indentation is all whitespace outside strings, and parsing it back is lossless.
			require.Equal(t, compact(v), string(Compact(nil, got)))
			require.Equal(t, compact(v), compact(mustParse(t, string(got))))
		})
	}
	deep := AppendIndent(nil, mustParse(t, strings.Repeat("[", 40)+strings.Repeat("]", 40)), 0)
	require.Contains(t, string(deep), "\n"+strings.Repeat(" ", 78)+"[]\n")
}

func TestNumberFormat(t *testing.T) {
	tests := []struct {
		f    float64
		want string
	}{
		{0, "0"}, {math.Copysign(0, -1), "0"}, {1, "1"}, {-1, "-1"}, {0.1, "0.1"},
		{1e21, "1e+21"}, {1e20, "100000000000000000000"}, {-1e21, "-1e+21"},
		{1e-7, "1e-7"}, {1.5e-7, "1.5e-7"}, {1e-6, "0.000001"}, {1.25e-6, "0.00000125"},
		{123456789012345680000, "123456789012345680000"}, {5e-324, "5e-324"},
		{math.MaxFloat64, "1.7976931348623157e+308"}, {1 << 53, "9007199254740992"},
		{1e15, "1000000000000000"}, {1.5e15, "1500000000000000"}, {123.456, "123.456"},
		{-2.5e-10, "-2.5e-10"}, {1e100, "1e+100"}, {4.35, "4.35"},
		{math.Inf(1), "null"}, {math.Inf(-1), "null"}, {math.NaN(), "null"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, string(appendNumber(nil, tt.f)), "%v", tt.f)
	}
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `""`},
		{"plain <>&'", `"plain <>&'"`},
		{`"\`, `"\"\\"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"\x7f\u2028\u2029é😀", "\"\x7f\u2028\u2029é😀\""},
		{"bad \xff byte", "\"bad \ufffd byte\""},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, Quote(tt.in), "%q", tt.in)
		// Quote agrees with Parse's canonical form and Text inverts it for valid UTF-8.
		v := mustParse(t, tt.want)
		require.Equal(t, tt.want, v.Str)
		if !strings.Contains(tt.in, "\xff") {
			s, ok := v.Text()
			require.True(t, ok)
			require.Equal(t, tt.in, s)
		}
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{`"abc"`, "abc", true},
		{`"a\"b\\c\/\b\f\n\r\t"`, "a\"b\\c/\b\f\n\r\t", true},
		{`"\u0000\u001f"`, "\x00\x1f", true},
		{`"\ud83d\ude00"`, "😀", true},
		{`"x\ud800"`, "", false},
		{`"\udc00"`, "", false},
		{`1`, "", false},
		{`null`, "", false},
	}
	for _, tt := range tests {
		got, ok := mustParse(t, tt.in).Text()
		require.Equal(t, tt.ok, ok, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestField(t *testing.T) {
	v := mustParse(t, `{"a":1,"\n\"":2,"\u00e9":3,"\ud800":4}`)
	for name, want := range map[string]string{"a": "1", "\n\"": "2", "é": "3"} {
		got, ok := v.Field(name)
		require.True(t, ok, name)
		require.Equal(t, want, compact(got))
	}
	_, ok := v.Field("missing")
	require.False(t, ok)
	_, ok = mustParse(t, `[1]`).Field("0")
	require.False(t, ok)
}

func TestSetDelete(t *testing.T) {
	orig := mustParse(t, `{"2":0,"b":1,"a":2}`)
	v := orig
	v.Set(`"a"`, mustParse(t, `"x"`))
	require.Equal(t, `{"2":0,"b":1,"a":"x"}`, compact(v), "existing member keeps its place")
	v.Set(`"c"`, mustParse(t, `[]`))
	require.Equal(t, `{"2":0,"b":1,"a":"x","c":[]}`, compact(v), "new member appended")
	v.Set(`"10"`, mustParse(t, `1`))
	v.Set(`"0"`, mustParse(t, `1`))
	v.Set(`"4294967295"`, mustParse(t, `1`))
	require.Equal(t, `{"0":1,"2":0,"10":1,"b":1,"a":"x","c":[],"4294967295":1}`, compact(v), "index names in numeric order")
	require.True(t, v.Delete(`"b"`))
	require.False(t, v.Delete(`"b"`))
	require.True(t, v.Delete(`"0"`))
	require.Equal(t, `{"2":0,"10":1,"a":"x","c":[],"4294967295":1}`, compact(v))
	require.Equal(t, `{"2":0,"b":1,"a":2}`, compact(orig), "copy on write")

	var s Value = mustParse(t, `"str"`)
	require.False(t, s.Delete(`"a"`))
	s.Set(`"a"`, Value{})
	require.Equal(t, `{"a":null}`, compact(s))
}

func TestCompact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"{}", "{}"},
		{"{\n  \"a b\": \"x \\\" y\\\\\",\n  \"c\": [\n    1,\n    \" \\\\\"\n  ]\n}", `{"a b":"x \" y\\","c":[1," \\"]}`},
		{`"\\\\"`, `"\\\\"`},
		{"[\n  \"\\\\\\\"\\\\\",\n  2\n]", `["\\\"\\",2]`},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, string(Compact([]byte{}, []byte(tt.in))), tt.in)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		offset int64
		msg    string
	}{
		{"empty", ``, 0, "unexpected end of input"},
		{"only space", "  \n", 3, "unexpected end of input"},
		{"bom", "\ufeff{}", 0, "invalid character 0xef looking for beginning of value"},
		{"comment", `{} // c`, 3, "after top-level value"},
		{"block comment", `/* c */ 1`, 0, "looking for beginning of value"},
		{"trailing comma object", `{"a":1,}`, 7, "looking for beginning of object key string"},
		{"trailing comma array", `[1,]`, 3, "looking for beginning of value"},
		{"NaN", `NaN`, 0, "looking for beginning of value"},
		{"Infinity", `[Infinity]`, 1, "looking for beginning of value"},
		{"leading zero", `01`, 1, "after top-level value"},
		{"leading zero in array", `[00]`, 2, "after array element"},
		{"plus sign", `+1`, 0, "looking for beginning of value"},
		{"minus alone", `-`, 1, "unexpected end of input"},
		{"minus letter", `-a`, 1, "in numeric literal"},
		{"dot without digits", `1.`, 2, "unexpected end of input"},
		{"dot then e", `1.e5`, 2, "after decimal point"},
		{"leading dot", `.5`, 0, "looking for beginning of value"},
		{"exponent without digits", `1e+`, 3, "unexpected end of input"},
		{"exponent letter", `[1ex]`, 3, "in exponent"},
		{"hex number", `0x10`, 1, "after top-level value"},
		{"single quotes", `'a'`, 0, "looking for beginning of value"},
		{"unquoted key", `{a:1}`, 1, "looking for beginning of object key string"},
		{"missing colon", `{"a" 1}`, 5, "after object key"},
		{"missing comma", `{"a":1 "b":2}`, 7, "after object key:value pair"},
		{"unclosed object", `{"a":1`, 6, "unexpected end of input"},
		{"unclosed array", `[1,2`, 4, "unexpected end of input"},
		{"unclosed string", `"abc`, 4, "unexpected end of input in string"},
		{"raw newline in string", "\"a\nb\"", 2, "control character 0x0a in string literal"},
		{"raw tab in string", "[\"\t\"]", 2, "control character 0x09"},
		{"raw nul in string", "\"\x00\"", 1, "control character 0x00"},
		{"bad escape", `"\x"`, 2, "invalid character 'x' in string escape code"},
		{"bad unicode escape", `"\u12g4"`, 5, "in \\u hexadecimal character escape"},
		{"short unicode escape", `"\u12"`, 5, "in \\u hexadecimal character escape"},
		{"escape at end", `"\`, 2, "unexpected end of input in string escape"},
		{"invalid utf8 in string", "\"ab\xffc\"", 3, "invalid UTF-8 in string literal"},
		{"truncated utf8", "\"\xe2\x82\"", 1, "invalid UTF-8"},
		{"overlong utf8", "\"\xc0\xaf\"", 1, "invalid UTF-8"},
		{"encoded surrogate", "\"\xed\xa0\x80\"", 1, "invalid UTF-8"},
		{"invalid utf8 outside string", "[1,\xff]", 3, "invalid character 0xff"},
		{"literal typo", `tru`, 3, "unexpected end of input"},
		{"literal wrong", `[nul1]`, 4, "in literal null"},
		{"capital literal", `True`, 0, "looking for beginning of value"},
		{"two values", `1 2`, 2, "after top-level value"},
		{"form feed space", "\f1", 0, "invalid character 0x0c"},
		{"nbsp space", "\u00a01", 0, "invalid character 0xc2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in), 0)
			var se *SyntaxError
			require.ErrorAs(t, err, &se)
			require.Equal(t, tt.offset, se.Offset, se.Error())
			require.Contains(t, se.Msg, tt.msg)
			require.True(t, strings.HasPrefix(err.Error(), "offset "), err.Error())
		})
	}
}

func TestParseDepth(t *testing.T) {
	tests := []struct {
		in     string
		max    int
		offset int // -1: accepted
	}{
		{`1`, 1, -1},
		{`{}`, 1, -1},
		{`[]`, 1, -1},
		{`{"a":[]}`, 1, 5},
		{`{"a":[]}`, 2, -1},
		{`[[[1]]]`, 3, -1},
		{`[[[1]]]`, 2, 2},
		{`[{},{"a":{}}]`, 2, 9},
		{strings.Repeat("[", 10000) + strings.Repeat("]", 10000), 0, -1},
		{strings.Repeat("[", 10000) + strings.Repeat("]", 10000), -1, -1},
		{strings.Repeat("[", 10000), 100, 100},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.in), tt.max)
		if tt.offset < 0 {
			require.NoError(t, err)
			continue
		}
		require.ErrorIs(t, err, ErrTooDeep)
		require.Contains(t, err.Error(), "offset "+itoa(tt.offset)+":")
		var se *SyntaxError
		require.False(t, errors.As(err, &se), "too deep is not a syntax error")
	}
}

func itoa(n int) string { return string(appendNumber(nil, float64(n))) }

// TestStringifyFixtures compares with Node's JSON.stringify(JSON.parse(in), null, 2)
// (testdata/stringify/gen.js).
func TestStringifyFixtures(t *testing.T) {
	ins, err := filepath.Glob("testdata/stringify/cases/*.in.json")
	require.NoError(t, err)
	require.Greater(t, len(ins), 100)
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.json")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(in)
			require.NoError(t, err)
			want, err := os.ReadFile(strings.TrimSuffix(in, ".in.json") + ".out.json")
			require.NoError(t, err)
			v, err := Parse(src, 0)
			require.NoError(t, err)
			got := AppendIndent(nil, v, 0)
			require.Equal(t, string(want), string(got))
			require.Equal(t, string(AppendCompact(nil, v)), string(Compact(nil, got)))
			again, err := Parse(got, 0)
			require.NoError(t, err)
			require.Equal(t, string(got), string(AppendIndent(nil, again, 0)))
		})
	}
}

func BenchmarkParse(b *testing.B) {
	src := []byte(`{"jsonrpc":"2.0","id":17,"method":"patch","params":{"key":"session:abc","merge":{"title":"hello \u00e9","n":1.5,"tags":["a","b"],"9":null},"if_rev":3}}`)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(src, 64); err != nil {
			b.Fatal(err)
		}
	}
}
