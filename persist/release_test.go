package persist

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// writeStore writes a snapshot of n entries of about 100 KB and returns the file's bytes
// and the name the file it replaced was retired under.
func writeStore(t *testing.T, path string, n int) ([]byte, string) {
	t.Helper()
	var frags [][]byte
	for i := range n {
		frags = append(frags, EncodeEntry(string(rune('a'+i)), Value{Kind: String, Str: Quote(string(bytes.Repeat([]byte{'x'}, 100000)))}))
	}
	_, _, retired, err := WriteSnapshot(OS{}, path, int64(n), frags, nil, func(SnapshotID) error { return nil })
	require.NoError(t, err)
	return AppendStore(nil, frags), retired
}

// A replace keeps the file it replaces under a temp name, which the next start's
// RemoveTemps would remove, and ReleaseFile frees it.
func TestReplaceRetiresTheOldFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	first, retired := writeStore(t, path, 3)
	require.Empty(t, retired, "nothing was replaced")
	_, retired = writeStore(t, path, 4)
	require.NotEmpty(t, retired)
	old, err := os.ReadFile(retired)
	require.NoError(t, err)
	require.Equal(t, first, old)

	require.NoError(t, ReleaseFile(OS{}, retired, 0, nil))
	_, err = os.Stat(retired)
	require.ErrorIs(t, err, os.ErrNotExist)

	_, retired = writeStore(t, path, 5)
	removed, err := RemoveTemps(OS{}, path)
	require.NoError(t, err)
	require.Equal(t, []string{retired}, removed, "a crash's leftover")
}

// A reader that has the old version open reads all of it: the file is removed whole,
// not shrunk under the reader.
func TestReleaseLeavesAnOpenFileWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	first, _ := writeStore(t, path, 3)
	reader, err := os.Open(path)
	require.NoError(t, err)
	defer reader.Close()
	_, retired := writeStore(t, path, 4)

	require.NoError(t, ReleaseFile(OS{}, retired, 0, nil))
	got, err := io.ReadAll(reader)
	require.NoError(t, err)
	require.Equal(t, first, got)
}

// A sessions.json that was a symlink, or had a second name, is replaced like any other,
// but the file it named is never shrunk: only sessiond's own name for it goes.
func TestReleaseLeavesOtherNamesAlone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sessions.json")
	target := filepath.Join(t.TempDir(), "real.json")
	want := bytes.Repeat([]byte{'x'}, 3<<20)
	require.NoError(t, os.WriteFile(target, want, 0o600))
	require.NoError(t, os.Symlink(target, path))
	_, retired := writeStore(t, path, 1)
	require.NoError(t, ReleaseFile(OS{}, retired, 0, nil))
	got, err := os.ReadFile(target)
	require.NoError(t, err)
	require.Equal(t, want, got, "the symlink's target")

	backup := filepath.Join(dir, "backup.json")
	require.NoError(t, os.Link(path, backup))
	old, err := os.ReadFile(path)
	require.NoError(t, err)
	_, retired = writeStore(t, path, 2)
	require.NoError(t, ReleaseFile(OS{}, retired, 0, nil))
	got, err = os.ReadFile(backup)
	require.NoError(t, err)
	require.Equal(t, old, got, "a hard link's file")
}

// Shrink frees the file a step at a time, and stops when the file is opened (its lease
// is broken) or when stop is closed.
func TestShrink(t *testing.T) {
	dir := t.TempDir()
	create := func(name string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, bytes.Repeat([]byte{'x'}, 10<<10), 0o600))
		return p
	}
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		return fi.Size()
	}

	p := create("whole")
	require.NoError(t, OS{}.Shrink(p, 1<<10, 0, nil))
	require.Zero(t, size(p))

	p = create("stopped")
	stop := make(chan struct{})
	close(stop)
	require.NoError(t, OS{}.Shrink(p, 1<<10, 0, stop))
	require.Equal(t, int64(10<<10), size(p), "stopped before the first step")

	p = create("opened")
	done := make(chan error, 1)
	go func() { done <- OS{}.Shrink(p, 1<<10, 20*time.Millisecond, nil) }()
	require.Eventually(t, func() bool { return size(p) < 10<<10 }, 5*time.Second, time.Millisecond, "the first step")
	// An open of a leased file starts breaking the lease; a non-blocking one fails
	// meanwhile instead of waiting.
	_, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	require.ErrorIs(t, err, unix.EWOULDBLOCK)
	require.NoError(t, <-done)
	require.Positive(t, size(p), "it stopped when the file was opened")
	f, err := os.Open(p) // the lease is gone
	require.NoError(t, err)
	require.NoError(t, f.Close())
}
