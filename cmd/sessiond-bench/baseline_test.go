package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLegacyStoreRoundTrip(t *testing.T) {
	// Fields sorted inside values: the one layout a Go map re-encodes byte for byte.
	in := "{\n  \"b\": {\n    \"n\": 1,\n    \"s\": \"x\\ny\"\n  },\n  \"a\": {}\n}"
	s, err := parseLegacy([]byte(in), parseFull)
	require.NoError(t, err)
	require.Equal(t, []string{"b", "a"}, s.keys, "top-level order is the file's")
	require.Equal(t, in, string(s.encode()))

	s.set("a", map[string]any{"k": true})
	s.set("c", map[string]any{})
	require.Equal(t, []string{"b", "a", "c"}, s.keys, "a rewritten key keeps its place, a new one is appended")
	require.Equal(t, "{}", string((&legacyStore{vals: map[string]any{}}).encode()))

	for _, mode := range []string{parseFull, parseRaw} {
		_, err = parseLegacy([]byte(`[1]`), mode)
		require.Error(t, err)
		_, err = parseLegacy([]byte(`{"a": {}`), mode)
		require.Error(t, err)
		_, err = parseLegacy([]byte(`{"a": {"b": tru}}`), mode)
		require.Error(t, err, "raw mode validates every value too")
	}
}

func TestLegacyStoreRawKeepsBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	keys, _, err := genStore(path, shape{Name: "t", Entries: 30, EntryBytes: 500}, 5)
	require.NoError(t, err)
	in, err := os.ReadFile(path)
	require.NoError(t, err)
	s, err := parseLegacy(in, parseRaw)
	require.NoError(t, err)
	require.Equal(t, string(in), string(s.encode()), "unchanged entries are written back byte for byte")

	v := s.value(keys[3]).(map[string]any)
	require.NotEmpty(t, v["sessionId"])
	s.set(keys[3], mergePatch(v, map[string]any{"updatedAt": 1.0}))
	out := s.encode()
	full, err := parseLegacy(out, parseFull)
	require.NoError(t, err)
	require.Equal(t, keys, full.keys)
	require.Equal(t, 1.0, full.vals[keys[3]].(map[string]any)["updatedAt"])
}

func TestMergePatch(t *testing.T) {
	// RFC 7396, appendix A.
	tests := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.target+"+"+tt.patch, func(t *testing.T) {
			var target, patch any
			require.NoError(t, json.Unmarshal([]byte(tt.target), &target))
			require.NoError(t, json.Unmarshal([]byte(tt.patch), &patch))
			got, err := json.Marshal(mergePatch(target, patch))
			require.NoError(t, err)
			require.JSONEq(t, tt.want, string(got))
		})
	}
}

func TestLegacyLockTimesOut(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "sessions.json")
	require.NoError(t, os.WriteFile(store, []byte(`{}`), 0o600))
	require.NoError(t, os.WriteFile(store+".lock", []byte(`{"pid":1,"createdAt":0}`), 0o644))
	w := newLegacyWriter(store, parseFull, 100*time.Millisecond, 10*time.Millisecond)
	start := time.Now()
	err := w.update(func(*legacyStore) error { return nil })
	require.ErrorIs(t, err, errLockTimeout)
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	lock, err := os.ReadFile(store + ".lock")
	require.NoError(t, err)
	require.Equal(t, `{"pid":1,"createdAt":0}`, string(lock), "a lock held by another is never broken")
}

func TestLegacyWriteTakesAndReleasesLock(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "sessions.json")
	require.NoError(t, os.WriteFile(store, []byte("{\n  \"k\": {\n    \"n\": 1\n  }\n}"), 0o600))
	w := newLegacyWriter(store, parseRaw, time.Second, time.Millisecond)
	require.NoError(t, w.update(func(s *legacyStore) error {
		b, err := os.ReadFile(store + ".lock")
		if err != nil {
			return err
		}
		var payload struct {
			PID       int   `json:"pid"`
			CreatedAt int64 `json:"createdAt"`
		}
		if err := json.Unmarshal(b, &payload); err != nil {
			return err
		}
		if payload.PID != os.Getpid() || payload.CreatedAt == 0 {
			return fmt.Errorf("lock payload %s", b)
		}
		s.set("k", mergePatch(s.vals["k"], map[string]any{"n": 2.0}))
		return nil
	}))
	_, err := os.Stat(store + ".lock")
	require.ErrorIs(t, err, os.ErrNotExist, "the lock is removed after the write")
	b, err := os.ReadFile(store)
	require.NoError(t, err)
	require.Equal(t, "{\n  \"k\": {\n    \"n\": 2\n  }\n}", string(b))
	left, err := filepath.Glob(filepath.Join(dir, "*.tmp"))
	require.NoError(t, err)
	require.Empty(t, left, "no temp file is left behind")
}

// testBaseline prepares a tiny store for writer processes of this test binary.
func testBaseline(t *testing.T) (baselineSpec, []string) {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	store := filepath.Join(dir, "sessions.json")
	keys, _, err := genStore(store, shape{Name: "tiny", Entries: 10, EntryBytes: 500}, 3)
	require.NoError(t, err)
	keysFile := filepath.Join(dir, "keys.txt")
	require.NoError(t, os.WriteFile(keysFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600))
	return baselineSpec{exe: exe, parse: parseFull, store: store, keysFile: keysFile, entryBytes: 500, seed: 1,
		lockTimeout: time.Second, lockPoll: time.Millisecond}, keys
}

func TestBaselineWritersNeverInterleave(t *testing.T) {
	spec, keys := testBaseline(t)
	spec.recordCS = true
	// Open loop at 150 writes/s each, staggered by half an interval: their writes
	// (an fsync each) collide often, and the 1 ms poll gives both writers turns.
	spec.load = loadSpec{workload: workloadIncr, mode: modeOpen, clients: 2, rate: 300, duration: 400 * time.Millisecond}
	out, _, results, err := driveBaseline(context.Background(), spec)
	require.NoError(t, err)
	require.Empty(t, out.rec.errs)

	var cs [][2]int64
	var writes int64
	var waited time.Duration
	for i, r := range results {
		require.NotZero(t, r.Writes, "writer %d never got the lock", i)
		require.Len(t, r.CS, int(r.Writes))
		writes += r.Writes
		waited += r.Phases.Wait
		cs = append(cs, r.CS...)
	}
	require.GreaterOrEqual(t, waited, spec.lockPoll, "the writers never contended: the test proves nothing")
	slices.SortFunc(cs, func(a, b [2]int64) int { return int(a[0] - b[0]) })
	for i := 1; i < len(cs); i++ {
		require.LessOrEqual(t, cs[i-1][1], cs[i][0], "lock held by two writers at once: %v and %v", cs[i-1], cs[i])
	}

	// Every read-modify-write of the counter saw the one before it: no lost update.
	b, err := os.ReadFile(spec.store)
	require.NoError(t, err)
	st, err := parseLegacy(b, parseFull)
	require.NoError(t, err)
	v := st.vals[keys[0]].(map[string]any)
	require.Equal(t, float64(writes), v["benchCounter"])
	require.Equal(t, keys, st.keys, "the store keeps its keys and their order")
}

func TestBaselineStaleLockDropsWrite(t *testing.T) {
	spec, _ := testBaseline(t)
	before, err := os.ReadFile(spec.store)
	require.NoError(t, err)
	// A writer that died holding the lock: nothing ever removes it.
	require.NoError(t, os.WriteFile(spec.store+".lock", []byte(`{"pid":999999,"createdAt":1}`), 0o644))
	spec.lockTimeout, spec.lockPoll = 300*time.Millisecond, 25*time.Millisecond
	spec.load = loadSpec{workload: workloadPatch, mode: modeClosed, clients: 1, duration: 50 * time.Millisecond}
	out, _, _, err := driveBaseline(context.Background(), spec)
	require.NoError(t, err)
	require.Equal(t, map[string]int64{reasonLockTimeout: 1}, out.rec.errs, "the one write gives up: dropped")
	require.Empty(t, out.rec.lat)
	require.GreaterOrEqual(t, out.rec.last.Sub(out.start), 300*time.Millisecond, "it waited the whole timeout")
	after, err := os.ReadFile(spec.store)
	require.NoError(t, err)
	require.Equal(t, before, after, "a dropped write changes nothing")
}

func TestSplitLegacy(t *testing.T) {
	tests := []string{
		`{}`,
		" { } ",
		`{"a":1}`,
		`{"a":-1.5e3,"b":true,"c":null,"d":false}`,
		"{\n  \"a\": \"x\\\"}{][,\",\n  \"b\": [1, {\"c\": \"]\"}, []],\n  \"c\\u0041\": {\"d\": {\"e\": \"\\\\\"}}\n}",
		`{"a":{},"b":[],"a":2}`,
	}
	for _, in := range tests {
		t.Run(in, func(t *testing.T) {
			got, err := splitLegacy([]byte(in))
			require.NoError(t, err)
			// What encoding/json's decoder makes of the same text.
			want := &legacyStore{vals: map[string]any{}}
			dec := json.NewDecoder(strings.NewReader(in))
			_, _ = dec.Token()
			for dec.More() {
				tok, _ := dec.Token()
				var raw json.RawMessage
				require.NoError(t, dec.Decode(&raw))
				want.set(tok.(string), raw)
			}
			require.Equal(t, want.keys, got.keys)
			require.Equal(t, want.vals, got.vals)
		})
	}
	_, err := splitLegacy([]byte(`{"a":[}`))
	require.Error(t, err)
}
