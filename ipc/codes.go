package ipc

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"unicode/utf8"

	"sessiond/actor"
)

// Reasons only the server reports; the store's reasons are the actor.Reason constants.
const (
	reasonParseError       = "parse_error"
	reasonInvalidRequest   = "invalid_request"
	reasonPermissionDenied = "permission_denied"
)

// wireError is how one reason appears on the wire (PROTOCOL.md "Errors").
type wireError struct {
	code      int
	retryable bool
}

// wireErrors is the contract's error table. Retryability follows the table rather than the
// actor.Error, so a client's retry decision can never disagree with the documentation.
var wireErrors = map[string]wireError{
	reasonParseError:            {-32700, false},
	reasonInvalidRequest:        {-32600, false},
	actor.ReasonMethodNotFound:  {-32601, false},
	actor.ReasonInvalidParams:   {-32602, false},
	actor.ReasonRequestIDReused: {-32602, false},
	actor.ReasonNotFound:        {-32001, false},
	actor.ReasonConflict:        {-32002, false},
	actor.ReasonBusy:            {-32003, true},
	actor.ReasonShuttingDown:    {-32004, true},
	actor.ReasonTooLarge:        {-32005, false},
	actor.ReasonStorage:         {-32006, true},
	actor.ReasonDeadline:        {-32007, true},
	reasonPermissionDenied:      {-32008, false},
	actor.ReasonInternal:        {-32603, false},
}

// nullID is the id of answers to lines whose id could not be trusted or read.
var nullID = []byte("null")

// appendResult appends one success response (no newline). result must be compact JSON.
func appendResult(b, id, result []byte) []byte {
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"result":`...)
	b = append(b, result...)
	return append(b, '}')
}

// appendError appends one error response (no newline). reason must be a key of wireErrors
// (callers map unknown reasons to internal_error first, and log them). data holds extra
// error.data fields; it cannot override reason, retryable or executed. executed is true
// only for the rare error about a request that did take effect. It reports the first
// data value that cannot be encoded; that field is left out.
func appendError(b, id []byte, reason, message string, data map[string]any, executed bool) ([]byte, error) {
	we := wireErrors[reason]
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"error":{"code":`...)
	b = strconv.AppendInt(b, int64(we.code), 10)
	b = append(b, `,"message":`...)
	b = appendString(b, message)
	b = append(b, `,"data":{"reason":`...)
	b = appendString(b, reason)
	b = append(b, `,"retryable":`...)
	b = strconv.AppendBool(b, we.retryable)
	b = append(b, `,"executed":`...)
	b = strconv.AppendBool(b, executed)
	var firstErr error
	for _, k := range slices.Sorted(maps.Keys(data)) {
		switch k {
		case "reason", "retryable", "executed":
			continue
		}
		v, err := encodeValue(data[k])
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		b = append(b, ',')
		b = appendString(b, k)
		b = append(b, ':')
		b = append(b, v...)
	}
	return append(b, "}}}"...), firstErr
}

// encodeValue encodes v as compact JSON without HTML escaping, as the contract asks.
func encodeValue(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// appendGoaway appends the goaway notification (no newline).
func appendGoaway(b []byte, reason string) []byte {
	b = append(b, `{"jsonrpc":"2.0","method":"goaway","params":{"reason":`...)
	b = appendString(b, reason)
	return append(b, "}}"...)
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, and U+2028/U+2029
// are escaped so that no reader that splits on line terminators can cut a message.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, `\u202`...)
			b = append(b, hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
