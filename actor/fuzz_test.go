package actor

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"sessiond/persist"
)

// FuzzJournalReplay: whatever bytes the journal holds, starting either fails with a
// clean error or gives a store that serves, and the read-only check agrees with the real
// load.
func FuzzJournalReplay(f *testing.F) {
	cp, err := persist.AppendCheckpoint(nil, &persist.Checkpoint{Rev: 2, Snapshot: persist.SnapshotID{Rev: 1, Size: -1},
		Revs: []persist.KeyRev{{Key: "a", Rev: 1}}})
	require.NoError(f, err)
	rec := persist.AppendRecord(nil, &persist.Record{Rev: 3, Ops: []persist.Op{{Key: "b", Frag: []byte(`  "b": {}`)}, {Key: "a"}}})
	f.Add(cp)
	f.Add(slices.Concat(cp, rec))
	f.Add(slices.Concat(cp, rec, rec[:7]))
	f.Add(slices.Concat(cp, persist.AppendRecord(nil, &persist.Record{Rev: 3, Ops: []persist.Op{{Key: "x", Frag: []byte(`  "x": not json`)}}})))
	f.Add(slices.Concat(cp, persist.AppendRecord(nil, &persist.Record{Rev: 3, Ops: []persist.Op{{Key: "x", Frag: []byte(`  "y": {}`)}}})))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, journal []byte) {
		dir := t.TempDir()
		cfg := Config{Store: filepath.Join(dir, "sessions.json"), SnapshotInterval: -1}
		if err := os.WriteFile(cfg.Store+".journal", journal, 0o600); err != nil {
			t.Fatal(err)
		}
		st, cerr := Check(cfg)
		a, err := Open(cfg)
		if (cerr == nil) != (err == nil) {
			t.Fatalf("check says %v, open says %v", cerr, err)
		}
		if err != nil {
			return
		}
		defer a.Close()
		if got := a.Stats(); got.Entries != st.Entries || got.Rev != st.Rev {
			t.Fatalf("check saw %d entries at rev %d, open %d at %d", st.Entries, st.Rev, got.Entries, got.Rev)
		}
		// Every entry the replay produced must be servable: its bytes parse.
		a.st.each(cursor{}, func(e *entry) bool {
			if _, err := persist.Parse(persist.EntryValue(e.frag), 0); err != nil {
				t.Fatalf("entry %q replayed from the journal does not parse: %v", e.key, err)
			}
			return true
		})
	})
}
