package persist

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Sentinel errors of the JSON codec; callers test them with errors.Is.
var (
	// ErrTooDeep is wrapped by Parse and ParseStore when arrays and objects nest deeper
	// than the caller's maxDepth. The request was well-formed so far; it is refused so
	// that a hostile client cannot make the parser (or a later encoder) recurse without bound.
	ErrTooDeep = errors.New("json nesting too deep")
)

// Kind is the JavaScript type of a Value.
type Kind uint8

// The kinds of JSON values. The zero Value is a Null.
const (
	Null Kind = iota
	Bool
	Number
	String
	Array
	Object
)

// Value is a JSON value as JavaScript holds it after JSON.parse: numbers are float64,
// strings are kept as their canonical JSON.stringify literal, and object members are
// in JavaScript property order with unique names.
//
// Values are immutable by convention: Set, Delete and Merge never write into a backing
// array they did not allocate, so copies of a Value may be shared between goroutines
// as long as nobody assigns into Arr or Obj elements directly. Nothing in this codec
// blocks; every function is safe for concurrent use on values nobody is modifying.
type Value struct {
	Kind Kind
	Bool bool     // Kind == Bool
	Num  float64  // Kind == Number; ±Inf (a literal beyond float64 range) encodes as null
	Str  string   // Kind == String: the canonical JSON.stringify literal, quotes included
	Arr  []Value  // Kind == Array
	Obj  []Member // Kind == Object: JS property order (index names first, ascending), names unique
}

// Member is one object property. Name is the canonical quoted literal, so two names
// are the same JavaScript string exactly when they are equal Go strings.
type Member struct {
	Name  string
	Value Value
}

// SyntaxError is input that JSON.parse would reject (or that the persist formats do not
// accept), with the byte offset into the input where the problem was found.
type SyntaxError struct {
	Offset int64 // byte offset into the input
	Msg    string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("offset %d: %s", e.Offset, e.Msg) }

// Parse decodes one JSON text exactly as JSON.parse accepts it (RFC 8259 strict: only
// space, tab, LF and CR around tokens; no BOM, comments, trailing commas, NaN or leading
// zeros; no raw control characters in strings; valid UTF-8 throughout) and returns the
// value JavaScript would hold. Errors are *SyntaxError, or wrap ErrTooDeep when arrays
// and objects nest deeper than maxDepth (`{}` is depth 1; maxDepth <= 0 means no limit,
// which leaves the recursion bounded only by the goroutine stack).
// Parse does not block, keeps no reference to data and is safe for concurrent use.
func Parse(data []byte, maxDepth int) (Value, error) {
	p := newParser(data, maxDepth)
	defer p.release()
	v, err := p.value(0)
	if err != nil {
		return Value{}, err
	}
	p.skipSpace()
	if p.pos < len(p.data) {
		return Value{}, p.errChar("after top-level value")
	}
	return v, nil
}

// RawMember is one member of an object as SplitObject finds it.
type RawMember struct {
	Name string // decoded; a lone surrogate becomes U+FFFD, as encoding/json does
	Raw  []byte // the value's bytes in the input, without the whitespace around them
}

// SplitObject checks that data is one JSON value and, when it is an object, returns
// its members in order, each value as its bytes in data (a repeated name comes back
// each time). isObject is false for any other value. It builds no values, so it costs
// a fraction of Parse: what a request envelope needs, whose params are parsed later.
// maxDepth and errors are as for Parse. It does not block; members alias data.
func SplitObject(data []byte, maxDepth int) (members []RawMember, isObject bool, err error) {
	p := newParser(data, maxDepth)
	defer p.release()
	p.skipSpace()
	if p.pos >= len(data) || data[p.pos] != '{' {
		if err := p.skip(0); err != nil {
			return nil, false, err
		}
	} else {
		isObject = true
		members = make([]RawMember, 0, 8) // a request or response has four or five
		err := p.container(1, func() error {
			start := p.pos
			if _, _, err := p.scanString(); err != nil {
				return err
			}
			name, ok := unquote(string(data[start:p.pos]))
			if !ok {
				_ = json.Unmarshal(data[start:p.pos], &name) // valid: replaces lone surrogates
			}
			if err := p.colon(); err != nil {
				return err
			}
			p.skipSpace()
			from := p.pos
			if err := p.skip(1); err != nil {
				return err
			}
			members = append(members, RawMember{Name: name, Raw: data[from:p.pos]})
			return nil
		})
		if err != nil {
			return nil, false, err
		}
	}
	p.skipSpace()
	if p.pos < len(data) {
		return nil, false, p.errChar("after top-level value")
	}
	return members, isObject, nil
}

// skip validates the value at p.pos (after optional whitespace) and moves past it
// without building it; depth is the number of arrays and objects enclosing it.
func (p *parser) skip(depth int) error {
	p.skipSpace()
	if p.pos >= len(p.data) {
		return p.errChar("")
	}
	switch c := p.data[p.pos]; c {
	case '{':
		return p.container(depth+1, func() error {
			if _, _, err := p.scanString(); err != nil {
				return err
			}
			if err := p.colon(); err != nil {
				return err
			}
			return p.skip(depth + 1)
		})
	case '[':
		return p.container(depth+1, func() error { return p.skip(depth + 1) })
	case '"':
		_, _, err := p.scanString()
		return err
	case 't':
		return p.literal("true")
	case 'f':
		return p.literal("false")
	case 'n':
		return p.literal("null")
	default:
		if c == '-' || isDigit(c) {
			_, _, err := p.number()
			return err
		}
		return p.errChar("looking for beginning of value")
	}
}

// container moves past the object or array at p.pos (its opening bracket), calling
// member for each member (at its name's opening quote) or element.
func (p *parser) container(depth int, member func() error) error {
	if p.maxDepth > 0 && depth > p.maxDepth {
		return p.tooDeep()
	}
	isObject := p.data[p.pos] == '{'
	end := byte(']')
	if isObject {
		end = '}'
	}
	p.pos++
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == end {
		p.pos++
		return nil
	}
	for {
		if isObject {
			p.skipSpace()
			if p.pos >= len(p.data) || p.data[p.pos] != '"' {
				return p.errChar("looking for beginning of object key string")
			}
		}
		if err := member(); err != nil {
			return err
		}
		p.skipSpace()
		switch {
		case p.pos >= len(p.data):
			return p.errChar("")
		case p.data[p.pos] == ',':
			p.pos++
		case p.data[p.pos] == end:
			p.pos++
			return nil
		case isObject:
			return p.errChar("after object key:value pair")
		default:
			return p.errChar("after array element")
		}
	}
}

// colon moves past the ':' after an object key.
func (p *parser) colon() error {
	p.skipSpace()
	if p.pos >= len(p.data) || p.data[p.pos] != ':' {
		return p.errChar("after object key")
	}
	p.pos++
	return nil
}

// parser is the state of one Parse or ParseStore call. The member and element stacks
// are shared by all nesting levels so that building an object or array costs one
// exactly-sized allocation.
type parser struct {
	data     []byte
	pos      int
	maxDepth int
	members  []Member // members of the objects being parsed, innermost last
	elems    []Value  // elements of the arrays being parsed, innermost last
	buf      []byte   // scratch for rewriting a string literal into canonical form
	num      []byte   // scratch for formatting a number (canonical check)
	keys     []span   // names of the objects being checked by canonValue, innermost last
}

// parsers recycles parser stacks between calls: Parse runs once per request, and
// regrowing the stacks each time was most of its cost.
var parsers = sync.Pool{New: func() any { return new(parser) }}

func newParser(data []byte, maxDepth int) *parser {
	p := parsers.Get().(*parser)
	p.data, p.pos, p.maxDepth = data, 0, maxDepth
	return p
}

// release returns p to the pool unless a large input left it with big stacks, which
// the pool should not pin.
func (p *parser) release() {
	const maxKept = 1 << 10
	if cap(p.members) > maxKept || cap(p.elems) > maxKept || cap(p.keys) > maxKept || cap(p.buf) > 64*maxKept {
		return
	}
	clear(p.members) // after an error, members above the base are still referenced
	clear(p.elems)
	*p = parser{members: p.members[:0], elems: p.elems[:0], buf: p.buf[:0], num: p.num[:0], keys: p.keys[:0]}
	parsers.Put(p)
}

func (p *parser) errAt(off int, msg string) error {
	return &SyntaxError{Offset: int64(off), Msg: msg}
}

// errChar reports the byte at p.pos (or the end of input) as unexpected.
func (p *parser) errChar(context string) error {
	if p.pos >= len(p.data) {
		return p.errAt(len(p.data), "unexpected end of input")
	}
	return p.errAt(p.pos, "invalid character "+describeByte(p.data[p.pos])+" "+context)
}

func describeByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("0x%02x", c)
}

func (p *parser) tooDeep() error {
	return fmt.Errorf("offset %d: nesting deeper than %d: %w", p.pos, p.maxDepth, ErrTooDeep)
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// value parses the value at p.pos (after optional whitespace); depth is the number of
// arrays and objects enclosing it.
func (p *parser) value(depth int) (Value, error) {
	p.skipSpace()
	if p.pos >= len(p.data) {
		return Value{}, p.errChar("")
	}
	switch c := p.data[p.pos]; c {
	case '{':
		return p.object(depth + 1)
	case '[':
		return p.array(depth + 1)
	case '"':
		s, err := p.str()
		return Value{Kind: String, Str: s}, err
	case 't':
		return Value{Kind: Bool, Bool: true}, p.literal("true")
	case 'f':
		return Value{Kind: Bool}, p.literal("false")
	case 'n':
		return Value{}, p.literal("null")
	default:
		if c == '-' || isDigit(c) {
			f, _, err := p.number()
			return Value{Kind: Number, Num: f}, err
		}
		return Value{}, p.errChar("looking for beginning of value")
	}
}

func (p *parser) literal(word string) error {
	for i := 0; i < len(word); i++ {
		if p.pos >= len(p.data) || p.data[p.pos] != word[i] {
			return p.errChar("in literal " + word)
		}
		p.pos++
	}
	return nil
}

func (p *parser) object(depth int) (Value, error) {
	if p.maxDepth > 0 && depth > p.maxDepth {
		return Value{}, p.tooDeep()
	}
	p.pos++ // '{'
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return Value{Kind: Object}, nil
	}
	base := len(p.members)
	var byName map[string]int // index into p.members, once the object is too big for a linear scan
	indexNames := 0
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return Value{}, p.errChar("looking for beginning of object key string")
		}
		name, err := p.str()
		if err != nil {
			return Value{}, err
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return Value{}, p.errChar("after object key")
		}
		p.pos++
		v, err := p.value(depth)
		if err != nil {
			return Value{}, err
		}
		// JSON.parse: a repeated name takes the last value but keeps its first position.
		at := -1
		if byName != nil {
			if i, ok := byName[name]; ok {
				at = i
			}
		} else {
			for i := base; i < len(p.members); i++ {
				if p.members[i].Name == name {
					at = i
					break
				}
			}
		}
		if at >= 0 {
			p.members[at].Value = v
		} else {
			p.members = append(p.members, Member{Name: name, Value: v})
			if _, ok := arrayIndex(name); ok {
				indexNames++
			}
			switch {
			case byName != nil:
				byName[name] = len(p.members) - 1
			case len(p.members)-base > linearLimit:
				byName = make(map[string]int, 2*linearLimit)
				for i := base; i < len(p.members); i++ {
					byName[p.members[i].Name] = i
				}
			}
		}
		p.skipSpace()
		if p.pos >= len(p.data) {
			return Value{}, p.errChar("")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
			continue
		case '}':
			p.pos++
		default:
			return Value{}, p.errChar("after object key:value pair")
		}
		break
	}
	obj := make([]Member, len(p.members)-base)
	copy(obj, p.members[base:])
	clear(p.members[base:]) // drop references so the stack does not pin parsed values
	p.members = p.members[:base]
	if indexNames > 0 {
		sortIndexFirst(obj)
	}
	return Value{Kind: Object, Obj: obj}, nil
}

// linearLimit is the object size up to which names are looked up by scanning; bigger
// objects get a map so that hostile input cannot make lookups quadratic.
const linearLimit = 16

func (p *parser) array(depth int) (Value, error) {
	if p.maxDepth > 0 && depth > p.maxDepth {
		return Value{}, p.tooDeep()
	}
	p.pos++ // '['
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return Value{Kind: Array}, nil
	}
	base := len(p.elems)
	for {
		v, err := p.value(depth)
		if err != nil {
			return Value{}, err
		}
		p.elems = append(p.elems, v)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return Value{}, p.errChar("")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
			continue
		case ']':
			p.pos++
		default:
			return Value{}, p.errChar("after array element")
		}
		break
	}
	arr := make([]Value, len(p.elems)-base)
	copy(arr, p.elems[base:])
	clear(p.elems[base:])
	p.elems = p.elems[:base]
	return Value{Kind: Array, Arr: arr}, nil
}

// str parses the string at p.pos and returns its canonical literal.
func (p *parser) str() (string, error) {
	start := p.pos
	end, canonical, err := p.scanString()
	if err != nil {
		return "", err
	}
	if canonical {
		return string(p.data[start:end]), nil
	}
	p.buf = appendCanonical(p.buf[:0], p.data[start+1:end-1])
	return string(p.buf), nil
}

// plain[c] is true for the ASCII bytes that stand for themselves in a canonical literal.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString validates the string literal at p.pos, moves past it and returns the
// offset after its closing quote. canonical reports whether the literal already is
// what JSON.stringify writes for it, so it can be used without rewriting.
func (p *parser) scanString() (end int, canonical bool, err error) {
	data := p.data
	i := p.pos + 1
	canonical = true
	for {
		for i < len(data) && plain[data[i]] {
			i++
		}
		if i >= len(data) {
			return 0, false, p.errAt(len(data), "unexpected end of input in string")
		}
		switch c := data[i]; {
		case c == '"':
			p.pos = i + 1
			return i + 1, canonical, nil
		case c == '\\':
			n, ok, err := p.escape(i)
			if err != nil {
				return 0, false, err
			}
			canonical = canonical && ok
			i += n
		case c < 0x20:
			return 0, false, p.errAt(i, "control character "+describeByte(c)+" in string literal")
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, false, p.errAt(i, "invalid UTF-8 in string literal")
			}
			i += size
		}
	}
}

// escape validates the escape sequence at data[i] == '\\' and returns its length and
// whether JSON.stringify would write it that way.
func (p *parser) escape(i int) (n int, canonical bool, err error) {
	data := p.data
	if i+1 >= len(data) {
		return 0, false, p.errAt(len(data), "unexpected end of input in string escape")
	}
	switch data[i+1] {
	case '"', '\\', 'b', 'f', 'n', 'r', 't':
		return 2, true, nil
	case '/':
		return 2, false, nil
	case 'u':
	default:
		return 0, false, p.errAt(i+1, "invalid character "+describeByte(data[i+1])+" in string escape code")
	}
	cu, lower, bad := hex4(data, i+2)
	if bad >= 0 {
		if bad >= len(data) {
			return 0, false, p.errAt(len(data), "unexpected end of input in string escape")
		}
		return 0, false, p.errAt(bad, "invalid character "+describeByte(data[bad])+" in \\u hexadecimal character escape")
	}
	switch {
	case cu < 0x20:
		return 6, lower && shortEscape[cu] == 0, nil
	case cu >= 0xd800 && cu < 0xdc00:
		// A high surrogate followed by a low one is a pair, which JSON.stringify writes
		// as the literal character; alone it stays escaped.
		if i+12 <= len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
			if lo, _, bad := hex4(data, i+8); bad < 0 && lo >= 0xdc00 && lo < 0xe000 {
				return 6, false, nil
			}
		}
		return 6, lower, nil
	case cu >= 0xdc00 && cu < 0xe000:
		return 6, lower, nil
	default:
		return 6, false, nil
	}
}

// hex4 decodes the four hex digits at data[i:]; bad is the offset of the first byte
// that is not a hex digit (possibly len(data)), or -1.
func hex4(data []byte, i int) (cu rune, lower bool, bad int) {
	lower = true
	for j := i; j < i+4; j++ {
		if j >= len(data) {
			return 0, false, j
		}
		c := data[j]
		switch {
		case c >= '0' && c <= '9':
			cu = cu<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			cu = cu<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			cu = cu<<4 | rune(c-'A'+10)
			lower = false
		default:
			return 0, false, j
		}
	}
	return cu, lower, -1
}

// shortEscape holds the two-character escapes JSON.stringify uses for control characters.
var shortEscape = [0x20]byte{'\b': 'b', '\f': 'f', '\n': 'n', '\r': 'r', '\t': 't'}

const hexDigits = "0123456789abcdef"

// appendCanonical appends the canonical literal of the validated literal body raw.
func appendCanonical(dst, raw []byte) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(raw); {
		if raw[i] != '\\' {
			j := bytes.IndexByte(raw[i:], '\\')
			if j < 0 {
				j = len(raw) - i
			}
			dst = append(dst, raw[i:i+j]...)
			i += j
			continue
		}
		switch e := raw[i+1]; e {
		case 'u':
			cu, _, _ := hex4(raw, i+2)
			i += 6
			if cu >= 0xd800 && cu < 0xdc00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
				if lo, _, _ := hex4(raw, i+2); lo >= 0xdc00 && lo < 0xe000 {
					dst = utf8.AppendRune(dst, 0x10000+(cu-0xd800)<<10+(lo-0xdc00))
					i += 6
					continue
				}
			}
			dst = appendCodeUnit(dst, cu)
		case '/':
			dst = append(dst, '/')
			i += 2
		default:
			dst = append(dst, '\\', e)
			i += 2
		}
	}
	return append(dst, '"')
}

// appendCodeUnit appends one UTF-16 code unit (not part of a surrogate pair) as
// JSON.stringify writes it.
func appendCodeUnit(dst []byte, cu rune) []byte {
	switch {
	case cu < 0x20:
		if s := shortEscape[cu]; s != 0 {
			return append(dst, '\\', s)
		}
		return append(dst, '\\', 'u', '0', '0', hexDigits[cu>>4], hexDigits[cu&0xf])
	case cu == '"' || cu == '\\':
		return append(dst, '\\', byte(cu))
	case cu >= 0xd800 && cu < 0xe000:
		return append(dst, '\\', 'u', hexDigits[cu>>12], hexDigits[cu>>8&0xf], hexDigits[cu>>4&0xf], hexDigits[cu&0xf])
	default:
		return utf8.AppendRune(dst, cu)
	}
}

// number parses the number at p.pos. canonical reports that the literal is a small
// integer that JavaScript prints exactly as written.
func (p *parser) number() (f float64, canonical bool, err error) {
	data := p.data
	start := p.pos
	i := start
	neg := data[i] == '-'
	if neg {
		i++
	}
	digits := i
	switch {
	case i >= len(data):
		p.pos = i
		return 0, false, p.errChar("")
	case data[i] == '0':
		i++
	case data[i] >= '1' && data[i] <= '9':
		for i++; i < len(data) && isDigit(data[i]); i++ {
		}
	default:
		p.pos = i
		return 0, false, p.errChar("in numeric literal")
	}
	integer := i
	if i < len(data) && data[i] == '.' {
		i++
		if i >= len(data) || !isDigit(data[i]) {
			p.pos = i
			return 0, false, p.errChar("after decimal point in numeric literal")
		}
		for i++; i < len(data) && isDigit(data[i]); i++ {
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i >= len(data) || !isDigit(data[i]) {
			p.pos = i
			return 0, false, p.errChar("in exponent of numeric literal")
		}
		for i++; i < len(data) && isDigit(data[i]); i++ {
		}
	}
	p.pos = i
	// Integers of up to 15 digits are exact in float64 and print as written.
	if i == integer && i-digits <= 15 {
		var n int64
		for _, c := range data[digits:i] {
			n = n*10 + int64(c-'0')
		}
		if neg {
			return -float64(n), n != 0, nil
		}
		return float64(n), true, nil
	}
	// The syntax is checked, so the only possible error is ErrRange, and ParseFloat
	// then returns ±Inf or ±0 as JavaScript does.
	f, _ = strconv.ParseFloat(string(data[start:i]), 64)
	return f, false, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// arrayIndex reports whether the canonical literal name is a JavaScript array index
// (a canonical decimal integer 0..2^32-2), which JavaScript orders before other names.
func arrayIndex(name string) (uint32, bool) {
	if len(name) < 3 || name[0] != '"' || name[len(name)-1] != '"' {
		return 0, false
	}
	return indexNumber(name[1 : len(name)-1])
}

// indexNumber reports whether the decoded name s is an array index, and which.
func indexNumber(s string) (uint32, bool) {
	if len(s) == 0 || len(s) > 10 || s[0] == '0' && len(s) > 1 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + uint64(s[i]-'0')
	}
	if n > math.MaxUint32-1 {
		return 0, false
	}
	return uint32(n), true
}

// sortIndexFirst puts the index names of obj first in ascending numeric order and
// keeps the other members in their order.
func sortIndexFirst(obj []Member) {
	slices.SortStableFunc(obj, func(a, b Member) int {
		x, aIndex := arrayIndex(a.Name)
		y, bIndex := arrayIndex(b.Name)
		return compareIndex(x, aIndex, y, bIndex)
	})
}

// compareIndex orders names as JavaScript does, given their array-index status: index
// names first, ascending; all other names compare equal so a stable sort keeps their order.
func compareIndex(x uint32, xIndex bool, y uint32, yIndex bool) int {
	switch {
	case xIndex && yIndex:
		return cmp.Compare(x, y)
	case xIndex:
		return -1
	case yIndex:
		return 1
	}
	return 0
}

// Quote returns the canonical literal of s, as JSON.stringify writes a string. s is
// assumed to be valid UTF-8; an invalid byte is written as U+FFFD so the result is always
// valid JSON. Quote is safe for concurrent use.
func Quote(s string) string {
	return string(appendQuote(make([]byte, 0, len(s)+2), s))
}

func appendQuote(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = appendCodeUnit(dst, rune(c))
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\uFFFD"...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Text returns the string a String value holds. It reports false if v is not a String,
// or if the string holds a lone surrogate, which a Go string cannot represent.
// It does not block and is safe for concurrent use.
func (v Value) Text() (string, bool) {
	if v.Kind != String {
		return "", false
	}
	return unquote(v.Str)
}

// unquote decodes a string literal (canonical or not, assumed valid).
func unquote(lit string) (string, bool) {
	if len(lit) < 2 {
		return "", false
	}
	body := lit[1 : len(lit)-1]
	if strings.IndexByte(body, '\\') < 0 {
		return body, true
	}
	out := make([]byte, 0, len(body))
	for i := 0; i < len(body); {
		c := body[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(body) {
			return "", false
		}
		switch e := body[i+1]; e {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			cu, _, bad := hex4([]byte(body[i:min(i+6, len(body))]), 2)
			if bad >= 0 {
				return "", false
			}
			i += 6
			if cu >= 0xd800 && cu < 0xdc00 && i+6 <= len(body) && body[i] == '\\' && body[i+1] == 'u' {
				if lo, _, bad := hex4([]byte(body[i:i+6]), 2); bad < 0 && lo >= 0xdc00 && lo < 0xe000 {
					out = utf8.AppendRune(out, 0x10000+(cu-0xd800)<<10+(lo-0xdc00))
					i += 6
					continue
				}
			}
			if cu >= 0xd800 && cu < 0xe000 {
				return "", false
			}
			out = utf8.AppendRune(out, cu)
			continue
		default: // '"', '\\', '/'
			out = append(out, e)
		}
		i += 2
	}
	return string(out), true
}

// Field returns the member of an Object whose decoded name is name. It reports false
// for a missing member or if v is not an Object. It does not block and is safe for
// concurrent use.
func (v Value) Field(name string) (Value, bool) {
	if v.Kind != Object {
		return Value{}, false
	}
	for _, m := range v.Obj {
		if nameIs(m.Name, name) {
			return m.Value, true
		}
	}
	return Value{}, false
}

// nameIs reports whether the canonical literal lit decodes to s, without allocating in
// the common case of a name without escapes.
func nameIs(lit, s string) bool {
	if len(lit) < 2 {
		return false
	}
	body := lit[1 : len(lit)-1]
	if strings.IndexByte(body, '\\') < 0 {
		return body == s
	}
	d, ok := unquote(lit)
	return ok && d == s
}

// Set gives v the member name (a canonical literal) with value x, as JavaScript's
// `v[name] = x`: an existing member keeps its place, a new one is appended, or inserted
// among the index names in numeric order. If v is not an Object it becomes {} first.
// Set copies v.Obj rather than writing into it, so other copies of v are unaffected;
// like any write to *v it must not race with other uses of the same variable.
func (v *Value) Set(name string, x Value) {
	if v.Kind != Object {
		*v = Value{Kind: Object}
	}
	if i := memberIndex(v.Obj, name); i >= 0 {
		obj := slices.Clone(v.Obj)
		obj[i].Value = x
		v.Obj = obj
		return
	}
	obj := make([]Member, 0, len(v.Obj)+1)
	obj = append(obj, v.Obj...)
	v.Obj = insertMember(obj, Member{Name: name, Value: x})
}

// Delete removes the member name (a canonical literal) from an Object and reports
// whether it was there. Like Set it copies rather than writes into v.Obj, and it must
// not race with other uses of the same variable.
func (v *Value) Delete(name string) bool {
	if v.Kind != Object {
		return false
	}
	i := memberIndex(v.Obj, name)
	if i < 0 {
		return false
	}
	obj := make([]Member, 0, len(v.Obj)-1)
	obj = append(obj, v.Obj[:i]...)
	v.Obj = append(obj, v.Obj[i+1:]...)
	return true
}

func memberIndex(obj []Member, name string) int {
	for i := range obj {
		if obj[i].Name == name {
			return i
		}
	}
	return -1
}

// insertMember adds m (a new name) to obj, which the caller owns, in JS property order.
func insertMember(obj []Member, m Member) []Member {
	idx, ok := arrayIndex(m.Name)
	if !ok {
		return append(obj, m)
	}
	at := 0
	for ; at < len(obj); at++ {
		other, ok := arrayIndex(obj[at].Name)
		if !ok || other > idx {
			break
		}
	}
	return slices.Insert(obj, at, m)
}

// AppendIndent appends JSON.stringify(v, null, 2) as it appears when v stands nested
// depth levels deep (0 = top level): the members or elements of v are indented
// 2*(depth+1) spaces and its closing bracket 2*depth spaces. It does not block and is
// safe for concurrent use.
func AppendIndent(dst []byte, v Value, depth int) []byte {
	switch v.Kind {
	case Object:
		if len(v.Obj) == 0 {
			return append(dst, '{', '}')
		}
		dst = append(dst, '{')
		for i, m := range v.Obj {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendNewline(dst, depth+1)
			dst = append(dst, m.Name...)
			dst = append(dst, ':', ' ')
			dst = AppendIndent(dst, m.Value, depth+1)
		}
		dst = appendNewline(dst, depth)
		return append(dst, '}')
	case Array:
		if len(v.Arr) == 0 {
			return append(dst, '[', ']')
		}
		dst = append(dst, '[')
		for i, e := range v.Arr {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendNewline(dst, depth+1)
			dst = AppendIndent(dst, e, depth+1)
		}
		dst = appendNewline(dst, depth)
		return append(dst, ']')
	default:
		return appendScalar(dst, v)
	}
}

const spaces = "                                                                "

// appendNewline appends a newline and the indentation of the given depth.
func appendNewline(dst []byte, depth int) []byte {
	dst = append(dst, '\n')
	for n := 2 * depth; n > 0; n -= len(spaces) {
		dst = append(dst, spaces[:min(n, len(spaces))]...)
	}
	return dst
}

// AppendCompact appends JSON.stringify(v): no whitespace at all. It does not block and
// is safe for concurrent use.
func AppendCompact(dst []byte, v Value) []byte {
	switch v.Kind {
	case Object:
		dst = append(dst, '{')
		for i, m := range v.Obj {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, m.Name...)
			dst = append(dst, ':')
			dst = AppendCompact(dst, m.Value)
		}
		return append(dst, '}')
	case Array:
		dst = append(dst, '[')
		for i, e := range v.Arr {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendCompact(dst, e)
		}
		return append(dst, ']')
	default:
		return appendScalar(dst, v)
	}
}

func appendScalar(dst []byte, v Value) []byte {
	switch v.Kind {
	case Bool:
		if v.Bool {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case Number:
		return appendNumber(dst, v.Num)
	case String:
		return append(dst, v.Str...)
	default:
		return append(dst, "null"...)
	}
}

// appendNumber appends f as JavaScript's Number#toString writes it, or null for the
// non-finite values JSON.stringify cannot represent.
func appendNumber(dst []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 0) || math.IsNaN(f):
		return append(dst, "null"...)
	case f == 0:
		return append(dst, '0') // also -0
	case f == math.Trunc(f) && math.Abs(f) < 1e15:
		return strconv.AppendInt(dst, int64(f), 10)
	}
	if f < 0 {
		dst = append(dst, '-')
		f = -f
	}
	// Go's shortest formatting picks the same digits as ECMAScript's Number::toString
	// (fewest digits that round-trip, closest to f); only the layout differs.
	var buf [64]byte
	e := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // d[.ddd]e±xx
	mant, exp, _ := bytes.Cut(e, []byte{'e'})
	x, _ := strconv.Atoi(string(exp))
	digits := mant[:1]
	if len(mant) > 2 {
		digits = append(buf[len(e):len(e)], mant[0])
		digits = append(digits, mant[2:]...)
	}
	k, n := len(digits), x+1 // f = 0.digits × 10^n
	switch {
	case k <= n && n <= 21:
		dst = append(dst, digits...)
		for ; k < n; k++ {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, digits[:n]...)
		dst = append(dst, '.')
		dst = append(dst, digits[n:]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for ; n < 0; n++ {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	default:
		dst = append(dst, digits[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:]...)
		}
		dst = append(dst, 'e')
		if n-1 >= 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, int64(n-1), 10)
	}
	return dst
}

// Compact appends src without its insignificant whitespace. src must be canonical
// output of this package (AppendIndent, EncodeEntry values, AppendStore); Compact does
// not validate it, so that turning stored bytes into a compact wire reply is one pass.
// It does not block and is safe for concurrent use.
func Compact(dst, src []byte) []byte {
	dst = slices.Grow(dst, len(src))
	for i := 0; i < len(src); {
		// Outside strings: copy up to the next quote, dropping whitespace.
		for i < len(src) {
			c := src[i]
			i++
			switch c {
			case ' ', '\n', '\t', '\r':
				continue
			}
			dst = append(dst, c)
			if c == '"' {
				break
			}
		}
		if i >= len(src) {
			break
		}
		// Inside a string: the end is the first quote preceded by an even run of backslashes.
		j := i
		for {
			q := bytes.IndexByte(src[j:], '"')
			if q < 0 {
				return append(dst, src[i:]...)
			}
			j += q
			bs := 0
			for k := j - 1; k >= i && src[k] == '\\'; k-- {
				bs++
			}
			j++
			if bs%2 == 0 {
				break
			}
		}
		dst = append(dst, src[i:j]...)
		i = j
	}
	return dst
}
