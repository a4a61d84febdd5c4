package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clientTestServer is a fake daemon on a real Unix socket: it records every request and
// answers it with answer's JSON-RPC fragment (`"result":...` or `"error":...`).
type clientTestServer struct {
	path   string
	answer func(method string, params json.RawMessage) string
	reqs   chan clientTestReq
}

type clientTestReq struct {
	Method string
	Params json.RawMessage
}

// clientTestDir returns a short temp dir (sun_path is 108 bytes).
func clientTestDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func newClientTestServer(t *testing.T, path string, answer func(method string, params json.RawMessage) string) *clientTestServer {
	t.Helper()
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	s := &clientTestServer{path: path, answer: answer, reqs: make(chan clientTestReq, 100)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() { s.serve(nc) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, nc := range conns {
			_ = nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *clientTestServer) serve(nc net.Conn) {
	sc := bufio.NewScanner(nc)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			req.Method = "UNDECODABLE: " + sc.Text()
		}
		s.reqs <- clientTestReq{req.Method, req.Params}
		line := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,%s}`+"\n", req.ID, s.answer(req.Method, req.Params))
		if _, err := nc.Write([]byte(line)); err != nil {
			return
		}
	}
}

// requests returns the requests received so far.
func (s *clientTestServer) requests() []clientTestReq {
	var out []clientTestReq
	for {
		select {
		case r := <-s.reqs:
			out = append(out, r)
		default:
			return out
		}
	}
}

// clientTestRun runs runClient with a deadline, so a bug fails instead of hanging.
func clientTestRun(t *testing.T, name string, args []string, stdin string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	err = runClient(ctx, name, args, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

// clientTestStripRequestID checks the automatic request_id (16 random bytes, hex) and
// returns params without it.
func clientTestStripRequestID(t *testing.T, params json.RawMessage) string {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(params, &m))
	var id string
	require.NoError(t, json.Unmarshal(m["request_id"], &id), "request_id in %s", params)
	b, err := hex.DecodeString(id)
	require.NoError(t, err)
	require.Len(t, b, 16)
	delete(m, "request_id")
	out, err := json.Marshal(m)
	require.NoError(t, err)
	return string(out)
}

func TestClientSubcommands(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		args    []string // after --socket
		stdin   string
		result  string // the result the fake answers with
		method  string
		params  string // "" for none; without request_id when autoID
		autoID  bool   // a random request_id is expected
		inWire  string // substring of the raw params (field order of values)
		wantOut string
	}{{
		name: "get", cmd: "get", args: []string{"k"},
		result: `{"key":"k","rev":3,"value":{"z":1,"a":2}}`,
		method: "get", params: `{"key":"k"}`,
		wantOut: `{"key":"k","rev":3,"value":{"z":1,"a":2}}` + "\n",
	}, {
		name: "put with argument and write flags", cmd: "put",
		args:   []string{"--if-rev", "0", "--durable=false", "--request-id", "r-1", "k", `{"z": 1, "a": [2]}`},
		result: `{"key":"k","rev":4}`,
		method: "put", params: `{"key":"k","value":{"z":1,"a":[2]},"if_rev":0,"durable":false,"request_id":"r-1"}`,
		inWire:  `{"z":1,"a":[2]}`,
		wantOut: `{"key":"k","rev":4}` + "\n",
	}, {
		name: "put from stdin", cmd: "put", args: []string{"k"}, stdin: "{\"x\":\n [1, 2]}\n",
		result: `{"key":"k","rev":5}`,
		method: "put", params: `{"key":"k","value":{"x":[1,2]}}`, autoID: true,
		wantOut: `{"key":"k","rev":5}` + "\n",
	}, {
		name: "put from stdin with dash, flags after the key", cmd: "put", args: []string{"k", "-", "--if-rev", "7"},
		stdin:  `{"y":true}`,
		result: `{"key":"k","rev":8}`,
		method: "put", params: `{"key":"k","value":{"y":true},"if_rev":7}`, autoID: true,
		wantOut: `{"key":"k","rev":8}` + "\n",
	}, {
		name: "key after --", cmd: "get", args: []string{"--", "-odd"},
		result: `{"key":"-odd","rev":1,"value":{}}`,
		method: "get", params: `{"key":"-odd"}`,
		wantOut: `{"key":"-odd","rev":1,"value":{}}` + "\n",
	}, {
		name: "patch", cmd: "patch", args: []string{"k", `{"gone":null,"n":2}`, "--if-rev=3"},
		result: `{"key":"k","rev":9,"value":{"n":2}}`,
		method: "patch", params: `{"key":"k","merge":{"gone":null,"n":2},"if_rev":3}`, autoID: true,
		wantOut: `{"key":"k","rev":9,"value":{"n":2}}` + "\n",
	}, {
		name: "delete", cmd: "delete", args: []string{"k"},
		result: `{"key":"k","rev":10,"deleted":true}`,
		method: "delete", params: `{"key":"k"}`, autoID: true,
		wantOut: `{"key":"k","rev":10,"deleted":true}` + "\n",
	}, {
		name: "list with flags", cmd: "list", args: []string{"--prefix", "p/", "--limit", "2", "--cursor", "c1", "--values"},
		result: `{"items":[{"key":"p/a","rev":1,"value":{}}],"next":null,"rev":10}`,
		method: "list", params: `{"prefix":"p/","limit":2,"cursor":"c1","values":true}`,
		wantOut: `{"items":[{"key":"p/a","rev":1,"value":{}}],"next":null,"rev":10}` + "\n",
	}, {
		name: "txn from argument", cmd: "txn", args: []string{`[{"op":"delete","key":"a"}]`, "--durable=false"},
		result: `{"rev":11,"results":[{"key":"a","rev":11,"deleted":true}]}`,
		method: "txn", params: `{"ops":[{"op":"delete","key":"a"}],"durable":false}`, autoID: true,
		wantOut: `{"rev":11,"results":[{"key":"a","rev":11,"deleted":true}]}` + "\n",
	}, {
		name: "txn from stdin", cmd: "txn", stdin: `[{"op":"put","key":"a","value":{"b":1,"a":0},"if_rev":0}]`,
		result: `{"rev":12,"results":[{"key":"a","rev":12}]}`,
		method: "txn", params: `{"ops":[{"op":"put","key":"a","value":{"b":1,"a":0},"if_rev":0}]}`, autoID: true,
		inWire:  `{"b":1,"a":0}`,
		wantOut: `{"rev":12,"results":[{"key":"a","rev":12}]}` + "\n",
	}, {
		name: "flush", cmd: "flush",
		result: `{"rev":12,"snapshot_rev":12}`, method: "flush",
		wantOut: `{"rev":12,"snapshot_rev":12}` + "\n",
	}, {
		name: "status", cmd: "status",
		result: `{"protocol":1, "phase":"serving", "future":[1, 2]}`, method: "status",
		wantOut: `{"protocol":1,"phase":"serving","future":[1,2]}` + "\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newClientTestServer(t, filepath.Join(clientTestDir(t), "s.sock"),
				func(string, json.RawMessage) string { return `"result":` + tt.result })
			args := append([]string{"--socket", srv.path}, tt.args...)
			out, _, err := clientTestRun(t, tt.cmd, args, tt.stdin)
			require.NoError(t, err)
			require.Equal(t, tt.wantOut, out)
			reqs := srv.requests()
			require.Len(t, reqs, 1)
			require.Equal(t, tt.method, reqs[0].Method)
			switch {
			case tt.params == "":
				require.Nil(t, reqs[0].Params)
			case tt.autoID:
				require.JSONEq(t, tt.params, clientTestStripRequestID(t, reqs[0].Params))
			default:
				require.JSONEq(t, tt.params, string(reqs[0].Params))
			}
			require.Contains(t, string(reqs[0].Params), tt.inWire)
		})
	}
}

func TestClientListAllFollowsPages(t *testing.T) {
	srv := newClientTestServer(t, filepath.Join(clientTestDir(t), "s.sock"), func(_ string, params json.RawMessage) string {
		var p struct{ Cursor string }
		_ = json.Unmarshal(params, &p)
		switch p.Cursor {
		case "":
			return `"result":{"items":[{"key":"a","rev":1},{"key":"b","rev":2}],"next":"c2","rev":5}`
		case "c2":
			return `"result":{"items":[{"key":"c","rev":5}],"next":null,"rev":5}`
		}
		return `"error":{"code":-32602,"message":"bad cursor","data":{"reason":"invalid_params","retryable":false,"executed":false}}`
	})
	out, _, err := clientTestRun(t, "list", []string{"--all", "--prefix", "", "--limit", "2", "--socket", srv.path}, "")
	require.NoError(t, err)
	require.Equal(t, `{"key":"a","rev":1}`+"\n"+`{"key":"b","rev":2}`+"\n"+`{"key":"c","rev":5}`+"\n", out)
	reqs := srv.requests()
	require.Len(t, reqs, 2)
	require.JSONEq(t, `{"limit":2}`, string(reqs[0].Params))
	require.JSONEq(t, `{"limit":2,"cursor":"c2"}`, string(reqs[1].Params))
}

func TestClientSocketDefaultsToStorePlusSock(t *testing.T) {
	dir := clientTestDir(t)
	srv := newClientTestServer(t, filepath.Join(dir, "x.json.sock"),
		func(string, json.RawMessage) string { return `"result":{"protocol":1}` })
	out, _, err := clientTestRun(t, "status", []string{"--store", filepath.Join(dir, "x.json")}, "")
	require.NoError(t, err)
	require.Equal(t, `{"protocol":1}`+"\n", out)
	require.Len(t, srv.requests(), 1)
}

func TestClientErrorCarriesReason(t *testing.T) {
	srv := newClientTestServer(t, filepath.Join(clientTestDir(t), "s.sock"), func(string, json.RawMessage) string {
		return `"error":{"code":-32001,"message":"key \"x\" not found","data":{"reason":"not_found","retryable":false,"executed":false}}`
	})
	out, _, err := clientTestRun(t, "get", []string{"x", "--socket", srv.path}, "")
	require.ErrorContains(t, err, `not_found: key "x" not found`)
	require.NotErrorIs(t, err, errUsage)
	require.Empty(t, out)
}

func TestClientNoDaemonTimesOut(t *testing.T) {
	path := filepath.Join(clientTestDir(t), "none.sock")
	start := time.Now()
	out, _, err := clientTestRun(t, "status", []string{"--socket", path, "--timeout", "100ms"}, "")
	require.Error(t, err)
	require.NotErrorIs(t, err, errUsage)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Contains(t, err.Error(), path)
	require.Empty(t, out)
}

func TestClientUsageErrors(t *testing.T) {
	tests := []struct {
		name  string
		cmd   string
		args  []string
		stdin string
		want  string // in the error
	}{
		{"get without key", "get", nil, "", "get takes KEY"},
		{"get with two keys", "get", []string{"a", "b"}, "", "get takes KEY"},
		{"status with argument", "status", []string{"x"}, "", "status takes no arguments"},
		{"put invalid JSON", "put", []string{"k", `{"a":`}, "", "value is not valid JSON"},
		{"put empty stdin", "put", []string{"k"}, "", "no value given"},
		{"patch invalid stdin", "patch", []string{"k", "-"}, "nope", "merge is not valid JSON"},
		{"unknown flag", "get", []string{"--bogus", "k"}, "", "flag provided but not defined"},
		{"if-rev is per op in txn", "txn", []string{"--if-rev", "1", "[]"}, "", "flag provided but not defined"},
		{"negative if-rev", "delete", []string{"--if-rev", "-1", "k"}, "", "want a revision"},
		{"bad timeout", "flush", []string{"--timeout", "soon"}, "", "invalid value"},
		{"unknown command", "frobnicate", nil, "", "unknown client command"},
	}
	srv := newClientTestServer(t, filepath.Join(clientTestDir(t), "s.sock"),
		func(string, json.RawMessage) string { return `"result":{}` })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := clientTestRun(t, tt.cmd, append(tt.args, "--socket", srv.path), tt.stdin)
			require.ErrorIs(t, err, errUsage)
			require.ErrorContains(t, err, tt.want)
			require.Empty(t, out)
		})
	}
	require.Empty(t, srv.requests(), "a bad command line sends nothing")
}

func TestClientHelp(t *testing.T) {
	for name, cmd := range clientCommands {
		t.Run(name, func(t *testing.T) {
			out, errOut, err := clientTestRun(t, name, []string{"-h"}, "")
			require.NoError(t, err)
			require.Empty(t, out)
			require.Contains(t, errOut, "usage: sessiond "+name)
			require.Contains(t, errOut, cmd.help)
			require.Contains(t, errOut, "-socket")
			if cmd.write {
				require.Contains(t, errOut, "-request-id")
			}
			if cmd.list {
				require.Contains(t, errOut, "-all")
			}
		})
	}
}

// clientTestFailingReader fails like a broken stdin.
type clientTestFailingReader struct{}

func (clientTestFailingReader) Read([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestClientStdinReadError(t *testing.T) {
	var out bytes.Buffer
	err := runClient(t.Context(), "put", []string{"k", "--socket", "/nonexistent"}, clientTestFailingReader{}, &out, io.Discard)
	require.ErrorContains(t, err, "read value from stdin: broken pipe")
	require.NotErrorIs(t, err, errUsage)
}
