package persist

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func sampleJournal(t testing.TB) []byte {
	b := appendCheckpoint(t, nil, &Checkpoint{
		Rev:      7,
		Snapshot: SnapshotID{Rev: 5, Size: 123, CRC: 0xdeadbeef},
		Revs:     []KeyRev{{"a", 5}, {"ключ", 3}},
		Dedup:    []Dedup{{ID: "r1", Fingerprint: [16]byte{1, 2}, Time: 1700000000000, Body: []byte(`{"key":"a","rev":5}`)}},
	})
	b = AppendRecord(b, &Record{Rev: 6, Ops: []Op{{Key: "a", Frag: []byte(`  "a": {}`)}, {Key: "b"}}})
	b = AppendIntent(b, SnapshotID{Rev: 6, Size: 10, CRC: 42})
	b = AppendRecord(b, &Record{Dedup: []Dedup{{ID: "r2", Time: 5, Err: true, Body: []byte(`{"reason":"conflict"}`)}}})
	b = AppendDone(b, SnapshotID{Rev: 6, Size: 10, CRC: 42})
	frag := []byte(`  "c": {"x": 1}`)
	return AppendRecord(b, &Record{Rev: 7, Ops: []Op{{Key: "c", Frag: frag}},
		Dedup: []Dedup{{ID: "p", Time: 9, Body: []byte(`{"key":"c","rev":7`), Frag: frag}}})
}

func appendCheckpoint(tb testing.TB, b []byte, c *Checkpoint) []byte {
	tb.Helper()
	b, err := AppendCheckpoint(b, c)
	require.NoError(tb, err)
	return b
}

func TestJournalRoundTrip(t *testing.T) {
	data := sampleJournal(t)
	r, err := DecodeJournal(data)
	require.NoError(t, err)
	require.Equal(t, int64(-1), r.TornAt)
	require.Equal(t, int64(len(data)), r.Size)
	require.Equal(t, int64(7), r.Checkpoint.Rev)
	require.Equal(t, SnapshotID{Rev: 5, Size: 123, CRC: 0xdeadbeef}, r.Checkpoint.Snapshot)
	require.Equal(t, []KeyRev{{"a", 5}, {"ключ", 3}}, r.Checkpoint.Revs)
	require.Equal(t, "r1", r.Checkpoint.Dedup[0].ID)
	require.Equal(t, [16]byte{1, 2}, r.Checkpoint.Dedup[0].Fingerprint)
	require.Len(t, r.Records, 3)
	require.Equal(t, []Op{{Key: "a", Frag: []byte(`  "a": {}`)}, {Key: "b"}}, r.Records[0].Ops)
	require.True(t, r.Records[1].Dedup[0].Err)
	require.Equal(t, []SnapshotID{{Rev: 6, Size: 10, CRC: 42}}, r.Intents)
	require.Equal(t, []SnapshotID{{Rev: 6, Size: 10, CRC: 42}}, r.Done)
	require.Equal(t, int64(7), r.Records[2].Rev)
	require.Equal(t, []byte(`  "c": {"x": 1}`), r.Records[2].Dedup[0].Frag, "taken from the record's post-image")
	cp := appendCheckpoint(t, nil, &Checkpoint{Snapshot: SnapshotID{Size: -1}, Dedup: r.Records[2].Dedup})
	again, err := DecodeJournal(cp)
	require.NoError(t, err)
	require.Equal(t, r.Records[2].Dedup, again.Checkpoint.Dedup, "a checkpoint carries the bytes itself")
}

// A patch's outcome can be dropped from memory and read back from the journal: every
// encoder and the decoder say where its bytes are, and a checkpoint copies the bytes
// from the old journal into the new one.
func TestFragRefs(t *testing.T) {
	frag := []byte(`  "c": {"x": 1}`)
	locates := func(t *testing.T, file []byte, ref FragRef) {
		t.Helper()
		got, err := ReadFrag(bytes.NewReader(file), ref)
		require.NoError(t, err)
		require.Equal(t, frag, got)
	}
	data := sampleJournal(t)
	r, err := DecodeJournal(data)
	require.NoError(t, err)
	opRef := r.Records[2].Dedup[0].Ref // a dedupRecordOp: the record's own post-image
	locates(t, data, opRef)

	// AppendRecord: the place in the buffer it appends to, after what was there.
	rec := &Record{Rev: 7, Ops: []Op{{Key: "c", Frag: frag}}, Dedup: []Dedup{{ID: "p", Body: []byte(`{}`), Frag: frag}}}
	buf := AppendRecord([]byte("prefix"), rec)
	locates(t, buf, rec.Dedup[0].Ref)
	require.Equal(t, opRef.Sum, rec.Dedup[0].Ref.Sum)

	// A checkpoint of outcomes held only as Refs into data equals one of the bytes.
	inMemory := []Dedup{{ID: "p", Time: 9, Body: []byte(`{"key":"c","rev":7`), Frag: frag}}
	want := appendCheckpoint(t, nil, &Checkpoint{Snapshot: SnapshotID{Size: -1}, Dedup: inMemory})
	spilled := &Checkpoint{Snapshot: SnapshotID{Size: -1}, Frags: bytes.NewReader(data),
		Dedup: []Dedup{{ID: "p", Time: 9, Body: []byte(`{"key":"c","rev":7`), Ref: opRef}}}
	var out bytes.Buffer
	require.NoError(t, WriteCheckpoint(&out, spilled))
	require.Equal(t, want, out.Bytes())
	require.Equal(t, inMemory[0].Ref, spilled.Dedup[0].Ref, "both placed where the checkpoint put the bytes")
	locates(t, out.Bytes(), spilled.Dedup[0].Ref)
	again, err := DecodeJournal(out.Bytes())
	require.NoError(t, err)
	require.Equal(t, spilled.Dedup[0].Ref, again.Checkpoint.Dedup[0].Ref, "the decoder agrees")

	// Bytes that are not what was written, or cannot be read, fail the checkpoint.
	bad := opRef
	bad.Sum++
	_, err = ReadFrag(bytes.NewReader(data), bad)
	require.ErrorIs(t, err, ErrCorrupt)
	spilled.Dedup[0].Ref = bad
	require.ErrorIs(t, WriteCheckpoint(io.Discard, spilled), ErrCorrupt)
	spilled.Dedup[0].Ref, spilled.Frags = opRef, bytes.NewReader(data[:opRef.At+1])
	require.ErrorIs(t, WriteCheckpoint(io.Discard, spilled), io.EOF)
	spilled.Frags = nil
	require.Error(t, WriteCheckpoint(io.Discard, spilled))
}

// countingReaderAt counts the reads of an io.ReaderAt.
type countingReaderAt struct {
	io.ReaderAt
	reads int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads++
	return c.ReaderAt.ReadAt(p, off)
}

// spilledCheckpoint is a checkpoint of n outcomes of size bytes each, held only as Refs
// into the returned journal bytes, and the same checkpoint with the bytes in memory.
// Between two outcomes the journal has gap bytes that none refers to.
func spilledCheckpoint(n, size, gap int) (spilled, inMemory *Checkpoint, journal []byte) {
	spilled = &Checkpoint{Snapshot: SnapshotID{Size: -1}}
	inMemory = &Checkpoint{Snapshot: SnapshotID{Size: -1}}
	for i := range n {
		frag := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		journal = append(journal, make([]byte, gap)...)
		journal = append(journal, "frame header"...)
		ref := refAt(len(journal), frag)
		journal = append(journal, frag...)
		d := Dedup{ID: fmt.Sprint("r", i), Time: int64(i), Body: []byte(`{"key":"k","rev":1`)}
		inMemory.Dedup = append(inMemory.Dedup, d)
		inMemory.Dedup[i].Frag = frag
		d.Ref = ref
		spilled.Dedup = append(spilled.Dedup, d)
	}
	return spilled, inMemory, journal
}

// A checkpoint reads its outcomes back a window at a time, not with a read each; a
// large one is read on its own.
func TestCheckpointReadsAhead(t *testing.T) {
	// 512 bytes an outcome with its frame header: ten windows' worth.
	spilled, inMemory, journal := spilledCheckpoint(10*readAheadSize/512, 500, 0)
	big, bigInMemory, _ := spilledCheckpoint(1, readAheadSize, 0)
	big.Dedup[0].Ref.At += int64(len(journal))
	big.Dedup[0].ID, bigInMemory.Dedup[0].ID = "big", "big"
	journal = append(journal, make([]byte, 12)...)
	journal = append(journal, bytes.Repeat([]byte{'a'}, readAheadSize)...)
	spilled.Dedup = append(spilled.Dedup, big.Dedup[0])
	inMemory.Dedup = append(inMemory.Dedup, bigInMemory.Dedup[0])

	frags := &countingReaderAt{ReaderAt: bytes.NewReader(journal)}
	spilled.Frags = frags
	var out bytes.Buffer
	require.NoError(t, WriteCheckpoint(&out, spilled))
	require.Equal(t, appendCheckpoint(t, nil, inMemory), out.Bytes())
	require.Equal(t, 2*(10+1), frags.reads, "two passes, each ten windows and the large outcome")

	// Outcomes far apart are read one at a time.
	sparse, sparseInMemory, journal := spilledCheckpoint(100, 500, readAheadGap+1)
	frags = &countingReaderAt{ReaderAt: bytes.NewReader(journal)}
	sparse.Frags = frags
	out.Reset()
	require.NoError(t, WriteCheckpoint(&out, sparse))
	require.Equal(t, appendCheckpoint(t, nil, sparseInMemory), out.Bytes())
	require.Equal(t, 2*100, frags.reads)
}

// WriteCheckpoint writes what AppendCheckpoint appends, also when the checkpoint spans
// many pieces (many keys, large dedup records), and reports the writer's error.
func TestWriteCheckpoint(t *testing.T) {
	big := &Checkpoint{Rev: 9, Snapshot: SnapshotID{Rev: 3, Size: 1 << 20, CRC: 7}}
	for i := range 20000 {
		big.Revs = append(big.Revs, KeyRev{Key: fmt.Sprintf("agent:main:k%d", i), Rev: int64(i)})
	}
	for i := range 30 {
		big.Dedup = append(big.Dedup, Dedup{ID: fmt.Sprint("r", i), Time: int64(i), Body: []byte(`{"key":"k","rev":1`),
			Frag: bytes.Repeat([]byte{'x'}, 10000*i)})
	}
	big.Dedup = append(big.Dedup, Dedup{ID: "e", Err: true, Body: []byte(`{"reason":"conflict"}`)})
	for _, c := range []*Checkpoint{{Snapshot: SnapshotID{Size: -1}}, big} {
		var b bytes.Buffer
		require.NoError(t, WriteCheckpoint(&b, c))
		require.Equal(t, appendCheckpoint(t, nil, c), b.Bytes())
	}
	require.ErrorIs(t, WriteCheckpoint(failingWriter{}, big), syscall.ENOSPC)
}

// A checkpoint whose outcomes alone are over the frame limit fails before any of them
// is read back (each failed compaction would otherwise read gigabytes).
func TestCheckpointTooLargeFailsFast(t *testing.T) {
	c := &Checkpoint{Snapshot: SnapshotID{Size: -1}, Frags: unreadable{t}}
	for i := range 3 {
		c.Dedup = append(c.Dedup, Dedup{ID: fmt.Sprint(i), Ref: FragRef{At: 8, Len: 400 << 20}})
	}
	require.ErrorIs(t, WriteCheckpoint(io.Discard, c), ErrCheckpointTooLarge)
}

type unreadable struct{ t *testing.T }

func (u unreadable) ReadAt([]byte, int64) (int, error) {
	u.t.Error("an outcome was read")
	return 0, io.EOF
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

func TestJournalDamage(t *testing.T) {
	good := sampleJournal(t)
	frag := []byte(`  "c": {"x": 1}`)
	last := len(AppendRecord(nil, &Record{Rev: 7, Ops: []Op{{Key: "c", Frag: frag}},
		Dedup: []Dedup{{ID: "p", Time: 9, Body: []byte(`{"key":"c","rev":7`), Frag: frag}}}))
	lastStart := len(good) - last
	flip := func(at int) []byte {
		b := append([]byte(nil), good...)
		b[at] ^= 0x40
		return b
	}
	for _, tc := range []struct {
		name    string
		data    []byte
		tornAt  int64
		corrupt bool
	}{
		{"empty", nil, -1, false},
		{"header cut", good[:lastStart+5], int64(lastStart), false},
		{"payload cut", good[:len(good)-2], int64(lastStart), false},
		{"last payload flipped", flip(len(good) - 3), int64(lastStart), false},
		{"zero-filled tail", append(append([]byte(nil), good...), make([]byte, 4096)...), int64(len(good)), false},
		{"garbage tail", append(append([]byte(nil), good...), "\x00\x00\x10\x00garbage"...), int64(len(good)), false},
		{"middle record flipped", flip(lastStart - 3), 0, true},
		{"no checkpoint first", AppendRecord(nil, &Record{Rev: 1}), 0, true},
		{"first frame damaged", flip(10), 0, true},
		{"first frame cut", good[:5], 0, true},
		{"frame-like bytes inside a torn tail", append(append(append([]byte(nil), good[:lastStart+20]...), AppendIntent(nil, SnapshotID{Rev: 1})...), "torn"...), int64(lastStart), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := DecodeJournal(tc.data)
			if tc.corrupt {
				require.ErrorIs(t, err, ErrCorrupt)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.tornAt, r.TornAt, r.TornReason)
			if tc.tornAt >= 0 {
				require.Equal(t, tc.tornAt, r.Size)
			}
		})
	}
}

func TestJournalBrokenAfterFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "j")
	j, err := CreateJournal(OS{}, path, func(w io.Writer) error {
		_, err := w.Write(sampleJournal(t))
		return err
	})
	require.NoError(t, err)
	require.NoError(t, j.Append(AppendRecord(nil, &Record{Rev: 8})))
	require.NoError(t, j.Sync())
	require.NoError(t, j.Close())
	require.ErrorIs(t, j.Append(nil), ErrBroken)
	require.ErrorIs(t, j.Sync(), ErrBroken, "a closed or failed journal is never synced again")
	r, err := ReadJournal(OS{}, path)
	require.NoError(t, err)
	require.Equal(t, int64(8), r.Records[len(r.Records)-1].Rev)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// A compaction's new journal takes the frames appended to the old one meanwhile in two
// parts: CatchUp, on its own goroutine, as far as the old journal's fsyncs reach
// (Synced), and Commit the rest. The result is the old journal's frames in order.
func TestNextJournalCatchUp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "j")
	checkpoint := func(w io.Writer) error {
		_, err := w.Write(AppendRecord(AppendIntent(nil, SnapshotID{Rev: 1, Size: -1}), &Record{Rev: 1}))
		return err
	}
	// Not a valid journal by itself (no checkpoint first): only the bytes matter here.
	old, err := CreateJournal(OS{}, path, checkpoint)
	require.NoError(t, err)
	require.Equal(t, old.Size(), old.Synced(), "a new journal is durable")
	before := old.Size()

	next, err := PrepareJournal(OS{}, path, checkpoint, nil)
	require.NoError(t, err)
	require.NoError(t, old.Append(AppendRecord(nil, &Record{Rev: 2})))
	require.Equal(t, before, old.Synced(), "not covered by an fsync yet")
	require.NoError(t, old.Sync())
	synced := old.Synced()
	require.Equal(t, old.Size(), synced)
	require.NoError(t, old.Append(AppendRecord(nil, &Record{Rev: 3})))
	require.NoError(t, next.CatchUp(old.Reader(), before, synced))
	j, err := next.Commit(io.NewSectionReader(old.Reader(), synced, old.Size()-synced))
	require.NoError(t, err)
	require.NoError(t, old.Close())
	require.Equal(t, j.Size(), j.Synced())

	got, err := os.ReadFile(path)
	require.NoError(t, err)
	want := AppendRecord(AppendRecord(AppendRecord(AppendIntent(nil, SnapshotID{Rev: 1, Size: -1}), &Record{Rev: 1}),
		&Record{Rev: 2}), &Record{Rev: 3})
	require.Equal(t, want, got)
	require.Equal(t, int64(len(want)), j.Size())
	require.NoError(t, j.Close())
}

func TestOwnerLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.owner")
	o, err := Acquire(path)
	require.NoError(t, err)
	// flock belongs to the open file description: a second open in the same process
	// conflicts just as another process would.
	_, err = Acquire(path)
	require.ErrorIs(t, err, ErrOwned)
	require.ErrorContains(t, err, "pid "+strconv.Itoa(os.Getpid()))
	require.NoError(t, o.Close())
	require.NoError(t, o.Close(), "idempotent")
	o2, err := Acquire(path)
	require.NoError(t, err, "released with the descriptor: nothing to delete")
	require.NoError(t, o2.Close())
}

// The lock dies with its process: a child that takes it and is killed leaves nothing
// behind.
func TestOwnerLockDiesWithProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.owner")
	cmd := exec.Command("flock", "-x", path, "sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // so the kill takes sleep too
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool {
		o, err := Acquire(path)
		if err == nil {
			o.Close()
			return false
		}
		return true
	}, 5e9, 1e6, "the child holds the lock")
	require.NoError(t, syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL))
	_ = cmd.Wait()
	// sleep, not our child, is torn down by the kernel a moment later.
	require.Eventually(t, func() bool {
		o, err := Acquire(path)
		if err != nil {
			return false
		}
		return o.Close() == nil
	}, 5e9, 1e6)
}

// FuzzDecodeJournal: any bytes either decode (and then re-encode to the same intact
// prefix) or give a clean error; never a panic or an allocation the data cannot back.
func FuzzDecodeJournal(f *testing.F) {
	good := sampleJournal(f)
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(append(append([]byte(nil), good...), 0, 0, 0, 0))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeJournal(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		if r.Size > int64(len(data)) || (r.TornAt >= 0) != (r.Size < int64(len(data))) {
			t.Fatalf("size %d, torn at %d, of %d bytes", r.Size, r.TornAt, len(data))
		}
		if r.Size == 0 {
			return
		}
		// Re-encode what was decoded: the intact prefix comes back byte for byte,
		// except for frames whose payload we encode differently (none should exist).
		var b []byte
		b, err = AppendCheckpoint(b, r.Checkpoint)
		if err != nil {
			t.Fatalf("re-encoding a decoded checkpoint: %v", err)
		}
		if _, err := DecodeJournal(b); err != nil {
			t.Fatalf("re-encoded checkpoint does not decode: %v", err)
		}
	})
}

// KeepAside keeps another writer's file under a new name without ever leaving the path
// empty, and never overwrites an earlier copy.
func TestKeepAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"theirs": {}}`), 0o600))
	now := time.Unix(1700000000, 0)
	a1, err := KeepAside(OS{}, path, now)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, []byte(`{"again": {}}`), 0o600))
	a2, err := KeepAside(OS{}, path, now)
	require.NoError(t, err)
	require.NotEqual(t, a1, a2)
	b1, _ := os.ReadFile(a1)
	b2, _ := os.ReadFile(a2)
	cur, _ := os.ReadFile(path)
	require.Equal(t, `{"theirs": {}}`, string(b1))
	require.Equal(t, `{"again": {}}`, string(b2))
	require.Equal(t, `{"again": {}}`, string(cur), "the path still holds the file")
}

// A snapshot of many megabytes goes to the disk paced (on a real file) and comes out
// byte for byte as AppendStore writes it.
func TestWriteSnapshotPaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	p, err := OS{}.NewPending(path)
	require.NoError(t, err)
	_, isPaced := paced(p, nil).(*pacedWriter)
	require.True(t, isPaced, "renameio's pending file is a real file")
	require.NoError(t, p.Cleanup())

	var frags [][]byte
	for i := range 300 {
		frags = append(frags, EncodeEntry(fmt.Sprint("agent:main:k", i), Value{Kind: String, Str: Quote(strings.Repeat("x", 20000+i))}))
	}
	id, _, _, err := WriteSnapshot(OS{}, path, 7, frags, nil, func(SnapshotID) error { return nil })
	require.NoError(t, err)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(got), 3*pace)
	require.Equal(t, AppendStore(nil, frags), got)
	require.Equal(t, int64(len(got)), id.Size)
}

// No rate is no throttle, and a nil one neither waits nor minds being hurried.
func TestNoThrottle(t *testing.T) {
	require.Nil(t, NewThrottle(0))
	var none *Throttle
	none.wait(1 << 30)
	none.Hurry()
	none.Abort()
	require.False(t, none.aborted())
}

// A throttled snapshot keeps to its rate until somebody hurries it.
func TestWriteSnapshotThrottled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	var frags [][]byte
	for i := range 150 { // 3 MB: many stretches
		frags = append(frags, EncodeEntry(fmt.Sprint("k", i), Value{Kind: String, Str: Quote(strings.Repeat("x", 20000))}))
	}
	write := func(th *Throttle) time.Duration {
		start := time.Now()
		_, _, _, err := WriteSnapshot(OS{}, path, 7, frags, th, func(SnapshotID) error { return nil })
		require.NoError(t, err)
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, AppendStore(nil, frags), got)
		return time.Since(start)
	}
	// 20 MB/s: the bucket starts empty, so ~3 MB take ~150 ms.
	require.GreaterOrEqual(t, write(NewThrottle(20e6)), 100*time.Millisecond)

	// 150 KB/s would take 20 s; hurried, it finishes at once.
	th := NewThrottle(150e3)
	time.AfterFunc(50*time.Millisecond, th.Hurry)
	require.Less(t, write(th), 10*time.Second)

	// Aborted, it fails at once and leaves the file as it was, and no temp file.
	before, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	th = NewThrottle(150e3)
	time.AfterFunc(50*time.Millisecond, th.Abort)
	_, _, _, err = WriteSnapshot(OS{}, path, 8, append(frags, frags...), th, func(SnapshotID) error { return nil })
	require.ErrorIs(t, err, ErrAborted)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, AppendStore(nil, frags), got)
	after, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Equal(t, len(before), len(after))
}

// fdConn is a syscall.RawConn over a given descriptor.
type fdConn struct{ fd uintptr }

func (c fdConn) Control(f func(fd uintptr)) error { f(c.fd); return nil }
func (fdConn) Read(func(uintptr) bool) error      { return nil }
func (fdConn) Write(func(uintptr) bool) error     { return nil }

// A write of a buffer's worth reaches the file and the disk a stretch at a time: one
// handed over at once holds up the journal's fsyncs that come meanwhile.
func TestPacedWriterCutsStretches(t *testing.T) {
	p, sizes := pacedFile(t, nil)
	n, err := p.Write(make([]byte, 5*pace+10))
	require.NoError(t, err)
	require.Equal(t, 5*pace+10, n)
	require.Equal(t, []int{pace, pace, pace, pace, pace, 10}, *sizes)
	require.Equal(t, int64(5*pace), p.end, "every full stretch is handed over")

	*sizes = nil
	_, err = p.Write(make([]byte, pace)) // crosses the end of the sixth stretch
	require.NoError(t, err)
	require.Equal(t, []int{pace - 10, 10}, *sizes)
	require.Equal(t, int64(6*pace), p.end)
	require.False(t, p.unpaced)
}

// fileRangeCall is one sync_file_range call: a stretch started (wait false), or the
// disk waited for (wait true).
type fileRangeCall struct {
	off, n int64
	wait   bool
}

// watchSyncFileRange records the calls pacedWriter makes until the test ends; they still
// go to the kernel.
func watchSyncFileRange(t *testing.T) *[]fileRangeCall {
	var calls []fileRangeCall
	real := syncFileRange
	syncFileRange = func(fd int, off, n int64, flags int) error {
		calls = append(calls, fileRangeCall{off, n, flags&unix.SYNC_FILE_RANGE_WAIT_AFTER != 0})
		return real(fd, off, n, flags)
	}
	t.Cleanup(func() { syncFileRange = real })
	return &calls
}

// pacedFile is a pacedWriter over a new real file, with writes to it counted by size.
func pacedFile(t *testing.T, th *Throttle) (*pacedWriter, *[]int) {
	f, err := os.Create(filepath.Join(t.TempDir(), "big"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	var sizes []int
	rec := writerFunc(func(b []byte) (int, error) {
		sizes = append(sizes, len(b))
		return f.Write(b)
	})
	return &pacedWriter{w: rec, rc: fdConn{f.Fd()}, throttle: th}, &sizes
}

// While a Throttle limits a write, one stretch is on its way to the disk beside the one
// just started; once nothing does (no Throttle, or a hurried one), a megabyte is, so that
// a flush is not held to the disk's latency a stretch at a time.
func TestPacedWriterInFlight(t *testing.T) {
	calls := watchSyncFileRange(t)
	started := func(k int64) fileRangeCall { return fileRangeCall{k * pace, pace, false} }
	waited := func(from, to int64) fileRangeCall { return fileRangeCall{from * pace, (to - from) * pace, true} }

	th := NewThrottle(1e12)
	p, _ := pacedFile(t, th)
	_, err := p.Write(make([]byte, 3*pace))
	require.NoError(t, err)
	require.Equal(t, []fileRangeCall{started(0), started(1), waited(0, 1), started(2), waited(1, 2)}, *calls)

	*calls = nil
	th.Hurry()
	_, err = p.Write(make([]byte, 9*pace))
	require.NoError(t, err)
	require.Equal(t, []fileRangeCall{started(3), started(4), started(5), started(6), started(7), started(8), started(9),
		started(10), waited(2, 3), started(11), waited(3, 4)}, *calls, "hurried: it waits only for what is a megabyte back")

	*calls = nil
	p, _ = pacedFile(t, nil)
	_, err = p.Write(make([]byte, 10*pace))
	require.NoError(t, err)
	require.Equal(t, []fileRangeCall{started(0), started(1), started(2), started(3), started(4), started(5), started(6),
		started(7), started(8), waited(0, 1), started(9), waited(1, 2)}, *calls)
}

// A write that fails part-way says how much of it the file took, and the stretches
// handed over are those it completed.
func TestPacedWriterFailsPartWay(t *testing.T) {
	var sink bytes.Buffer
	f, err := os.Create(filepath.Join(t.TempDir(), "big"))
	require.NoError(t, err)
	defer f.Close()
	full := errors.New("no space")
	p := &pacedWriter{rc: fdConn{f.Fd()}, w: writerFunc(func(b []byte) (int, error) {
		if room := 2*pace + 100 - sink.Len(); len(b) > room {
			sink.Write(b[:room])
			return room, full
		}
		return sink.Write(b)
	})}
	n, err := p.Write(make([]byte, 8*pace))
	require.ErrorIs(t, err, full)
	require.Equal(t, 2*pace+100, n)
	require.Equal(t, [3]int64{2*pace + 100, 2 * pace, 2 * pace}, [3]int64{p.off, p.end, p.metered})
}

// The throttle meters, and an abort is seen, a stretch at a time, not a Write at a time:
// a buffer of a megabyte is not handed to the disk at once, and an abandoned snapshot
// stops within a stretch.
func TestPacedWriterThrottlesEachStretch(t *testing.T) {
	th := NewThrottle(20 * pace) // 50 ms a stretch
	var times []time.Time
	p, _ := pacedFile(t, th)
	inner := p.w
	p.w = writerFunc(func(b []byte) (int, error) {
		times = append(times, time.Now())
		return inner.Write(b)
	})
	_, err := p.Write(make([]byte, 4*pace))
	require.NoError(t, err)
	require.Len(t, times, 4)
	require.GreaterOrEqual(t, times[3].Sub(times[0]), 120*time.Millisecond, "three stretches' worth of waiting between them")

	th.Abort()
	n, err := p.Write(make([]byte, 8*pace))
	require.ErrorIs(t, err, ErrAborted)
	require.Equal(t, pace, n, "it stops at the end of the first stretch")
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(b []byte) (int, error) { return w(b) }

// A write error sync_file_range reports comes out of Write: the kernel reports it
// once, and the fsync after it would succeed. Where sync_file_range is not supported
// (a pipe, say), writing carries on unpaced.
func TestPacedWriterErrors(t *testing.T) {
	chunk := make([]byte, pace)
	var sink bytes.Buffer
	bad := &pacedWriter{w: &sink, rc: fdConn{^uintptr(0)}} // no such descriptor: EBADF
	_, err := bad.Write(chunk)
	require.ErrorIs(t, err, syscall.EBADF)
	require.ErrorContains(t, err, "sync_file_range")

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	pipe := &pacedWriter{w: &sink, rc: fdConn{w.Fd()}} // ESPIPE
	for range 3 {
		_, err := pipe.Write(chunk)
		require.NoError(t, err)
	}
	require.True(t, pipe.unpaced, "unpaced from then on")
	require.Equal(t, 4*pace, sink.Len())
}
