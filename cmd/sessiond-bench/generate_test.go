package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// keyFormat is the shape of every session key: agent:AGENT:CHANNEL:KIND:ID[:topic:N].
var keyFormat = regexp.MustCompile(`^agent:[a-z]+:(telegram|discord|slack|whatsapp):(group|dm|channel):-?[a-z0-9]+(:topic:[0-9]+)?$`)

func TestGenStore(t *testing.T) {
	tests := []struct {
		shape shape
		tol   float64 // allowed deviation of the mean entry size
	}{
		{shape{Name: "1k", Entries: 1000, EntryBytes: 500}, 0.05},
		{shape{Name: "10k", Entries: 10_000, EntryBytes: 500}, 0.05},
		// 40 entries of the 50 MB shape: the same entries, a fraction of the bytes.
		{shape{Name: "1kx50k", Entries: 40, EntryBytes: 50_000}, 0.08},
	}
	for _, tt := range tests {
		t.Run(tt.shape.Name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sessions.json")
			keys, size, err := genStore(path, tt.shape, 42)
			require.NoError(t, err)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, int64(len(b)), size)

			// Shape: the number of entries, their mean size.
			require.Len(t, keys, tt.shape.Entries)
			mean := float64(size) / float64(tt.shape.Entries)
			require.InDelta(t, float64(tt.shape.EntryBytes), mean, tt.tol*float64(tt.shape.EntryBytes), "mean entry size")

			// Keys: the format, unique, in file order.
			var obj map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(b, &obj))
			require.Len(t, obj, len(keys), "keys must be unique")
			for _, k := range keys {
				require.Regexp(t, keyFormat, k)
				_, ok := obj[k]
				require.True(t, ok, "key %q missing from the file", k)
			}
			st, err := parseLegacy(b, parseRaw)
			require.NoError(t, err)
			require.Equal(t, keys, st.keys, "keys are returned in file order")

			// Values: the session fields; large shapes carry prompts.
			var e sessionEntry
			require.NoError(t, json.Unmarshal(obj[keys[0]], &e))
			require.NotEmpty(t, e.SessionID)
			require.NotZero(t, e.UpdatedAt)
			require.Equal(t, e.InputTokens+e.OutputTokens, e.TotalTokens)
			require.NotEmpty(t, e.DeliveryContext.Channel)
			if tt.shape.EntryBytes >= 5000 {
				require.Greater(t, len(e.SystemPrompt), tt.shape.EntryBytes/3)
				require.NotEmpty(t, e.SkillsPrompt)
			}

			// Layout: JSON.stringify(store, null, 2), which encoding/json's Indent
			// reproduces for objects and strings; no trailing newline.
			var compact, indented bytes.Buffer
			require.NoError(t, json.Compact(&compact, b))
			require.NoError(t, json.Indent(&indented, compact.Bytes(), "", "  "))
			require.Equal(t, indented.String(), string(b))
		})
	}
}

func TestGenStoreDeterministic(t *testing.T) {
	dir := t.TempDir()
	sh := shape{Name: "1k", Entries: 50, EntryBytes: 500}
	k1, _, err := genStore(filepath.Join(dir, "a"), sh, 7)
	require.NoError(t, err)
	k2, _, err := genStore(filepath.Join(dir, "b"), sh, 7)
	require.NoError(t, err)
	require.Equal(t, k1, k2)
	a, _ := os.ReadFile(filepath.Join(dir, "a"))
	b, _ := os.ReadFile(filepath.Join(dir, "b"))
	require.Equal(t, a, b, "the same seed makes the same store")
}

func TestGenTextEncodedLength(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 3, 17, 500, 50_000} {
		s := genText(r, n)
		enc, err := json.Marshal(s)
		require.NoError(t, err)
		require.Equal(t, n, len(enc)-2, "encoded length of genText(%d)", n)
	}
	require.Contains(t, genText(r, 5000), "\n", "prose has newlines to escape")
}

func TestBenchKeysAndPayloads(t *testing.T) {
	seen := map[string]bool{}
	for c := range 3 {
		for s := range 1000 {
			k := benchKey(c, s)
			require.Regexp(t, keyFormat, k)
			require.False(t, seen[k], "benchKey(%d, %d) repeats", c, s)
			seen[k] = true
		}
	}

	r := rand.New(rand.NewPCG(1, 2))
	merge := patchMerge(nil, r, 1_750_000_000_000)
	var m map[string]any
	require.NoError(t, json.Unmarshal(merge, &m))
	require.Equal(t, 1_750_000_000_000.0, m["updatedAt"])
	require.Contains(t, m, "totalTokens")
	require.IsType(t, map[string]any{}, m["deliveryContext"])
	require.Less(t, len(merge), 300, "the hot path's patch is small")

	vals := putValues(shape{EntryBytes: 500}, 4, 1)
	require.Len(t, vals, 4)
	for _, v := range vals {
		require.True(t, json.Valid(v))
		require.NotContains(t, string(v), "\n", "sent on one line")
	}
}
