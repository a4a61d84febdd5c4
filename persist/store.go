package persist

import (
	"bytes"
	"slices"
)

// Entry is one top-level member of sessions.json as the file holds it. Frag is shared,
// never modified in place: a write replaces the slice, so snapshots can hold on to it.
type Entry struct {
	Key  string // decoded name (valid UTF-8)
	Frag []byte // the member's bytes in the file: EncodeEntry(Key, value)
}

// EncodeEntry returns one top-level member of sessions.json as JSON.stringify(store,
// null, 2) writes it: "  " + Quote(key) + ": " + the value indented one level, without
// the separating comma or newline. It is safe for concurrent use.
func EncodeEntry(key string, v Value) []byte {
	dst := make([]byte, 0, 2+len(key)+4+64)
	dst = append(dst, ' ', ' ')
	dst = appendQuote(dst, key)
	dst = append(dst, ':', ' ')
	return AppendIndent(dst, v, 1)
}

// EntryValue returns the value bytes of a Frag (after the key literal and ": "), a
// sub-slice of frag. frag is not validated; it must come from EncodeEntry or ParseStore.
// It does not block and is safe for concurrent use.
func EntryValue(frag []byte) []byte {
	for i := 3; i < len(frag); i++ {
		switch frag[i] {
		case '\\':
			i++
		case '"':
			if i+3 > len(frag) {
				return nil
			}
			return frag[i+3:]
		}
	}
	return nil
}

// AppendStore appends the whole sessions.json for the given entry fragments (each as
// EncodeEntry returns it), in order: JSON.stringify(store, null, 2) with no trailing
// newline. It does not block and is safe for concurrent use.
func AppendStore(dst []byte, frags [][]byte) []byte {
	if len(frags) == 0 {
		return append(dst, '{', '}')
	}
	n := 4 + 2*len(frags)
	for _, f := range frags {
		n += len(f)
	}
	dst = slices.Grow(dst, n)
	dst = append(dst, '{', '\n')
	for i, f := range frags {
		if i > 0 {
			dst = append(dst, ',', '\n')
		}
		dst = append(dst, f...)
	}
	return append(dst, '\n', '}')
}

// ParseStore decodes a whole sessions.json. The top level must be an object; its
// members come back in JavaScript order (index keys first, ascending; a repeated key
// takes its last value at its first position), and every Frag equals
// EncodeEntry(Key, value). A member that already has that form (as every member of a
// file Node or AppendStore wrote does) is returned as a sub-slice of data without
// copying; others are re-encoded. A key that decodes to a lone surrogate is refused,
// because keys are valid UTF-8. maxDepth counts the store object itself as depth 1
// (so an entry's value object is depth 2); <= 0 means no limit. Errors are as for Parse.
// ParseStore does not block; the entries alias data, which the caller must not modify.
func ParseStore(data []byte, maxDepth int) ([]Entry, error) {
	p := newParser(data, maxDepth)
	defer p.release()
	p.skipSpace()
	if p.pos >= len(data) || data[p.pos] != '{' {
		top := p.pos
		if _, err := Parse(data, maxDepth); err != nil {
			return nil, err
		}
		return nil, p.errAt(top, "top level is not an object")
	}
	p.pos++
	var entries []Entry
	var byKey map[string]int
	indexKeys := 0
	p.skipSpace()
	if p.pos < len(data) && data[p.pos] == '}' {
		p.pos++
	} else {
		byKey = make(map[string]int)
		for {
			p.skipSpace()
			if p.pos >= len(data) || data[p.pos] != '"' {
				return nil, p.errChar("looking for beginning of object key string")
			}
			keyStart := p.pos
			keyEnd, canonical, err := p.scanString()
			if err != nil {
				return nil, err
			}
			lit := data[keyStart:keyEnd]
			if !canonical {
				lit = appendCanonical(nil, data[keyStart+1:keyEnd-1])
			}
			key, ok := unquote(string(lit))
			if !ok {
				return nil, p.errAt(keyStart, "key holds a lone surrogate, which is not valid UTF-8")
			}
			p.skipSpace()
			if p.pos >= len(data) || data[p.pos] != ':' {
				return nil, p.errChar("after object key")
			}
			colon := p.pos
			p.pos++
			valStart := p.pos
			var frag []byte
			if canonical && colon == keyEnd && keyStart >= 2 && data[keyStart-2] == ' ' && data[keyStart-1] == ' ' &&
				valStart < len(data) && data[valStart] == ' ' {
				p.pos = valStart + 1
				if p.canonValue(1) {
					frag = data[keyStart-2 : p.pos]
				}
				p.keys = p.keys[:0]
			}
			if frag == nil {
				p.pos = valStart
				v, err := p.value(1)
				if err != nil {
					return nil, err
				}
				frag = make([]byte, 0, 2+len(lit)+2+len(data[valStart:p.pos]))
				frag = append(frag, ' ', ' ')
				frag = append(frag, lit...)
				frag = append(frag, ':', ' ')
				frag = AppendIndent(frag, v, 1)
			}
			if i, dup := byKey[key]; dup {
				entries[i].Frag = frag
			} else {
				byKey[key] = len(entries)
				entries = append(entries, Entry{Key: key, Frag: frag})
				if _, ok := indexNumber(key); ok {
					indexKeys++
				}
			}
			p.skipSpace()
			if p.pos >= len(data) {
				return nil, p.errChar("")
			}
			if data[p.pos] == ',' {
				p.pos++
				continue
			}
			if data[p.pos] != '}' {
				return nil, p.errChar("after object key:value pair")
			}
			p.pos++
			break
		}
	}
	p.skipSpace()
	if p.pos < len(data) {
		return nil, p.errChar("after top-level value")
	}
	if indexKeys > 0 {
		slices.SortStableFunc(entries, func(a, b Entry) int {
			x, aIndex := indexNumber(a.Key)
			y, bIndex := indexNumber(b.Key)
			return compareIndex(x, aIndex, y, bIndex)
		})
	}
	return entries, nil
}

// span is a byte range of parser.data.
type span struct{ start, end int }

// canonValue reports whether the value at p.pos is valid JSON written exactly as
// AppendIndent(v, level) writes it, and if so moves past it. On false, p.pos is
// undefined and the caller parses the value again to re-encode it or report the error.
// It allocates nothing for canonical input, which is what makes loading a Node-written
// store cheap.
func (p *parser) canonValue(level int) bool {
	if p.pos >= len(p.data) {
		return false
	}
	switch c := p.data[p.pos]; c {
	case '{':
		return p.canonObject(level)
	case '[':
		return p.canonArray(level)
	case '"':
		_, canonical, err := p.scanString()
		return err == nil && canonical
	case 't':
		return p.literal("true") == nil
	case 'f':
		return p.literal("false") == nil
	case 'n':
		return p.literal("null") == nil
	default:
		if c != '-' && !isDigit(c) {
			return false
		}
		start := p.pos
		f, canonical, err := p.number()
		if err != nil {
			return false
		}
		if canonical {
			return true
		}
		p.num = appendNumber(p.num[:0], f)
		return bytes.Equal(p.num, p.data[start:p.pos])
	}
}

// canonNewline checks for a newline and the indentation of level at p.pos.
func (p *parser) canonNewline(level int) bool {
	n := 2 * level
	if p.pos+1+n > len(p.data) || p.data[p.pos] != '\n' {
		return false
	}
	for _, c := range p.data[p.pos+1 : p.pos+1+n] {
		if c != ' ' {
			return false
		}
	}
	p.pos += 1 + n
	return true
}

func (p *parser) canonObject(level int) bool {
	if p.maxDepth > 0 && level+1 > p.maxDepth {
		return false
	}
	data := p.data
	p.pos++ // '{'
	if p.pos < len(data) && data[p.pos] == '}' {
		p.pos++
		return true
	}
	// Names must be unique, index names first and ascending: anything else is not how
	// JSON.stringify would have written the object.
	base := len(p.keys)
	var seen map[string]struct{}
	var last uint32
	indexSeen, otherSeen := false, false
	for {
		if !p.canonNewline(level+1) || p.pos >= len(data) || data[p.pos] != '"' {
			return false
		}
		start := p.pos
		end, canonical, err := p.scanString()
		if err != nil || !canonical {
			return false
		}
		name := data[start:end]
		idx, isIndex := uint32(0), false
		if len(name) <= 12 && isDigit(name[1]) {
			idx, isIndex = indexNumber(string(name[1 : len(name)-1]))
		}
		if isIndex {
			if otherSeen || indexSeen && idx <= last {
				return false
			}
			last, indexSeen = idx, true
		} else {
			otherSeen = true
			if seen != nil {
				if _, dup := seen[string(name)]; dup {
					return false
				}
				seen[string(name)] = struct{}{}
			} else {
				for _, k := range p.keys[base:] {
					if bytes.Equal(data[k.start:k.end], name) {
						return false
					}
				}
				p.keys = append(p.keys, span{start, end})
				if len(p.keys)-base > linearLimit {
					seen = make(map[string]struct{}, 2*linearLimit)
					for _, k := range p.keys[base:] {
						seen[string(data[k.start:k.end])] = struct{}{}
					}
				}
			}
		}
		if p.pos+2 > len(data) || data[p.pos] != ':' || data[p.pos+1] != ' ' {
			return false
		}
		p.pos += 2
		if !p.canonValue(level + 1) {
			return false
		}
		if p.pos < len(data) && data[p.pos] == ',' {
			p.pos++
			continue
		}
		if !p.canonNewline(level) || p.pos >= len(data) || data[p.pos] != '}' {
			return false
		}
		p.pos++
		p.keys = p.keys[:base]
		return true
	}
}

func (p *parser) canonArray(level int) bool {
	if p.maxDepth > 0 && level+1 > p.maxDepth {
		return false
	}
	data := p.data
	p.pos++ // '['
	if p.pos < len(data) && data[p.pos] == ']' {
		p.pos++
		return true
	}
	for {
		if !p.canonNewline(level+1) || !p.canonValue(level+1) {
			return false
		}
		if p.pos < len(data) && data[p.pos] == ',' {
			p.pos++
			continue
		}
		if !p.canonNewline(level) || p.pos >= len(data) || data[p.pos] != ']' {
			return false
		}
		p.pos++
		return true
	}
}
