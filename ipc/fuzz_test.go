package ipc

import (
	"bytes"
	"encoding/json"
	"testing"

	"sessiond/actor"
)

// FuzzRequestLine feeds arbitrary lines to the request decoder: it must never panic,
// every answer it makes itself is one line of valid JSON-RPC, and whatever reaches the
// backend is a method name and params that are an object or an array.
func FuzzRequestLine(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"a"}}`,
		`[{"jsonrpc":"2.0","id":"x","method":"put","params":{"key":"a","value":{}}},{"jsonrpc":"2.0","method":"n"}]`,
		`[]`, `[1]`, `{}`, `null`, `{"jsonrpc":"2.0","id":{},"method":"get"}`, `{"jsonrpc":"2.0","id":1,"method":"status"}`,
		`{"jsonrpc":"2.0","id":1e400,"method":"get","params":null}`, "\xff", `{"jsonrpc":"2.0","id":1,"method":"get","params":"x"}`,
		` [ {"jsonrpc":"2.0","id":null,"method":"get","params":[]} ] `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		if len(bytes.TrimLeft(line, " \t\r")) == 0 || bytes.IndexByte(line, '\n') >= 0 {
			return // the reader never hands these over
		}
		backend := &fakeBackend{submit: func(method string, params []byte) <-chan actor.Reply {
			if params != nil {
				if !json.Valid(params) || (params[0] != '{' && params[0] != '[') {
					t.Fatalf("backend got params %q", params)
				}
			}
			return replyNow(actor.Reply{Result: []byte(`{}`)})
		}}
		s := NewServer(ServerConfig{Backend: backend, Logger: testLogger()})
		c := newConn(s, nil, 1, nil)
		it := c.handleLine(line, false)
		for _, p := range it.parts {
			if p.msg == nil {
				if p.reply == nil {
					t.Fatal("a part with neither an answer nor a reply")
				}
				continue
			}
			if bytes.IndexByte(p.msg, '\n') >= 0 || !json.Valid(p.msg) {
				t.Fatalf("answer %q is not one line of JSON", p.msg)
			}
			var m struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(p.msg, &m); err != nil || m.JSONRPC != "2.0" || m.ID == nil {
				t.Fatalf("answer %s lacks jsonrpc or id", p.msg)
			}
		}
	})
}
