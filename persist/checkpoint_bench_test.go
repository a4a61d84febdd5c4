package persist

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// BenchmarkWriteCheckpoint writes the checkpoint of a compaction whose dedup window holds
// patch outcomes read back from the journal file: 20,000 of 700 B (a 10k store's
// entries), 1,000 of 50 KB (the 50 MB store's), or 1,000 of 700 B with 50 KB of records
// between two (large puts between small patches).
func BenchmarkWriteCheckpoint(b *testing.B) {
	for _, size := range []struct{ n, bytes, gap int }{{20000, 700, 0}, {1000, 50000, 0}, {1000, 700, 50000}} {
		b.Run(fmt.Sprintf("%dx%d+%d", size.n, size.bytes, size.gap), func(b *testing.B) {
			spilled, _, journal := spilledCheckpoint(size.n, size.bytes, size.gap)
			path := filepath.Join(b.TempDir(), "journal")
			if err := os.WriteFile(path, journal, 0o600); err != nil {
				b.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			spilled.Frags = f
			refs := slices.Clone(spilled.Dedup)
			b.SetBytes(int64(len(journal)))
			for b.Loop() {
				copy(spilled.Dedup, refs) // written, they point into the new journal
				if err := WriteCheckpoint(io.Discard, spilled); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
