package persist

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"sync/atomic"
)

// The journal is a sequence of frames: a little-endian uint32 payload length, the
// CRC-32C of the payload, then the payload. The first frame of a journal is always a
// checkpoint; writes and snapshot intents follow in the order they were made durable.
const (
	frameHeader = 8
	// maxFrame bounds a frame's length so that a garbage length field cannot make the
	// reader allocate gigabytes; a request line is at most 16 MiB by default.
	maxFrame = 1 << 30

	recCheckpoint byte = 1
	recWrite      byte = 2
	recIntent     byte = 3
	recDone       byte = 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Journal errors.
var (
	// ErrCorrupt: a record other than the last one is damaged. The journal may hold
	// acknowledged writes, so sessiond refuses to start rather than guess.
	ErrCorrupt = errors.New("journal is corrupt")
	// ErrBroken: an earlier write or fsync on this journal failed; it must not be used
	// again (a second fsync could report success for data that never reached the disk).
	ErrBroken = errors.New("journal is broken by an earlier failure")
	// ErrReplaced: a new journal was renamed into place but not made durable or opened;
	// the old one must not be appended to (its path names the new file now).
	ErrReplaced = errors.New("journal was replaced but not committed")
	// ErrCheckpointTooLarge: the checkpoint of a new journal would be over the 1 GiB
	// frame limit, almost always because of the dedup window's patch outcomes.
	ErrCheckpointTooLarge = errors.New("checkpoint is over the journal's frame limit of 1 GiB")
)

// SnapshotID names one version of sessions.json: the revision it reflects, and its size
// and CRC-32C so that a file on disk can be matched to it.
type SnapshotID struct {
	Rev  int64
	Size int64 // -1: no file
	CRC  uint32
}

// Op is one key's post-image in a write: Frag nil means the key was deleted.
type Op struct {
	Key  string
	Frag []byte
}

// Dedup is the recorded final outcome of a request carrying a request_id.
type Dedup struct {
	ID          string
	Fingerprint [16]byte // hash of the method and params, to catch a reused request_id
	Time        int64    // Unix ms when it was recorded
	Err         bool     // Body is an encoded error rather than a result
	Body        []byte
	// Frag, when set, is the entry a patch wrote: the result is Body (its opening, up
	// to the revision) followed by the entry's value. It shares the store's bytes, and
	// a write record does not repeat it: it is that record's post-image.
	Frag []byte
	// Ref is where Frag's bytes are in the journal they were decoded from or encoded
	// into (AppendRecord, WriteCheckpoint). A table of outcomes keeps Ref instead of
	// Frag and reads it back with ReadFrag: the window holds every version of every
	// entry patched, too much to keep in memory.
	Ref FragRef
}

// FragRef locates a Dedup's Frag in a journal file, with its checksum. The zero value
// locates nothing.
type FragRef struct {
	At  int64 // offset in the file
	Len int32
	Sum uint32 // CRC-32C of the bytes
}

func refAt(at int, frag []byte) FragRef {
	return FragRef{At: int64(at), Len: int32(len(frag)), Sum: crc32.Checksum(frag, crcTable)}
}

// ReadFrag reads the bytes ref locates from r and checks them against its checksum.
// Safe for concurrent use when r is (an *os.File is).
func ReadFrag(r io.ReaderAt, ref FragRef) ([]byte, error) {
	return readFrag(r, ref, nil)
}

// readFrag is ReadFrag into buf, grown when it is too small.
func readFrag(r io.ReaderAt, ref FragRef, buf []byte) ([]byte, error) {
	if r == nil {
		return nil, errors.New("read outcome: no journal to read it from")
	}
	if cap(buf) < int(ref.Len) {
		buf = make([]byte, ref.Len)
	}
	buf = buf[:ref.Len]
	if _, err := r.ReadAt(buf, ref.At); err != nil {
		return nil, fmt.Errorf("read outcome of %d bytes at offset %d: %w", ref.Len, ref.At, err)
	}
	if crc32.Checksum(buf, crcTable) != ref.Sum {
		return nil, fmt.Errorf("%w: outcome of %d bytes at offset %d: checksum mismatch", ErrCorrupt, ref.Len, ref.At)
	}
	return buf, nil
}

// Dedup body kinds in the journal.
const (
	dedupResult   byte = 0
	dedupError    byte = 1
	dedupFrag     byte = 2 // a patch result with its entry's bytes
	dedupRecordOp byte = 3 // a patch result whose entry is the record's one op
)

// Record is one durable write (one revision), or with Rev 0 only outcomes to remember.
type Record struct {
	Rev   int64
	Ops   []Op
	Dedup []Dedup
}

// KeyRev is the revision of one key, as a checkpoint holds it.
type KeyRev struct {
	Key string
	Rev int64
}

// Checkpoint starts every journal: everything needed, together with sessions.json, to
// rebuild the store's revisions and dedup records without the records before it.
type Checkpoint struct {
	Rev      int64      // highest revision issued
	Snapshot SnapshotID // the sessions.json the journal was started against
	Revs     []KeyRev
	Dedup    []Dedup
	// Frags is where the Frags of Dedup records that hold only a Ref are read from.
	Frags io.ReaderAt
}

// AppendRecord appends r as one frame to buf. It sets the Ref of each of r's dedup
// records that has a Frag to where the Frag is in buf.
func AppendRecord(buf []byte, r *Record) []byte {
	return frame(buf, func(b []byte) []byte {
		b = append(b, recWrite)
		b = binary.AppendUvarint(b, uint64(r.Rev))
		b = binary.AppendUvarint(b, uint64(len(r.Ops)))
		opAt := -1
		for _, op := range r.Ops {
			b = appendString(b, op.Key)
			if op.Frag == nil {
				b = append(b, 0)
				continue
			}
			b = append(b, 1)
			b = binary.AppendUvarint(b, uint64(len(op.Frag)))
			opAt = len(b)
			b = append(b, op.Frag...)
		}
		b = binary.AppendUvarint(b, uint64(len(r.Dedup)))
		for i := range r.Dedup {
			d := &r.Dedup[i]
			var at int
			if b, at = appendDedup(b, d, r.Ops); at < 0 && d.Frag != nil {
				at = opAt // the record's own post-image
			}
			if d.Frag != nil {
				d.Ref = refAt(at, d.Frag)
			}
		}
		return b
	})
}

// AppendIntent appends a snapshot intent: a promise that sessions.json may from now on be
// the file id names, made durable before the rename so that a crash right after it does
// not look like another writer's change at the next start.
func AppendIntent(buf []byte, id SnapshotID) []byte {
	return frame(buf, func(b []byte) []byte {
		return appendSnapshotID(append(b, recIntent), id)
	})
}

// AppendDone appends a note that the snapshot id is on disk (its rename and directory
// fsync succeeded). It needs no fsync of its own: it only narrows what a start must
// assume when sessions.json was changed by another writer.
func AppendDone(buf []byte, id SnapshotID) []byte {
	return frame(buf, func(b []byte) []byte {
		return appendSnapshotID(append(b, recDone), id)
	})
}

// AppendCheckpoint appends c as one frame to buf, the first of a journal: as
// WriteCheckpoint, it sets the Ref of c's dedup records that have a Frag.
func AppendCheckpoint(buf []byte, c *Checkpoint) ([]byte, error) {
	var err error
	buf = frame(buf, func(b []byte) []byte {
		err = c.pieces(true, func(p []byte) []byte {
			b = append(b, p...)
			return p[:0]
		})
		return b
	})
	return buf, err
}

// WriteCheckpoint writes c as one frame to w, as AppendCheckpoint would, without holding
// the frame in memory: a checkpoint holds every dedup record of the window, and with
// large entries patched often that is hundreds of megabytes. The payload is encoded
// twice, once for the frame header's length and checksum and once to write it. Frags
// that c's dedup records hold only a Ref to are read from c.Frags, on each pass. Once
// written, every record that has a Frag has its Ref set to where the Frag is in the
// journal w starts.
func WriteCheckpoint(w io.Writer, c *Checkpoint) error {
	// The outcomes alone may be over the limit: say so before reading them back.
	var outcomes int64
	for i := range c.Dedup {
		if d := &c.Dedup[i]; d.Frag != nil {
			outcomes += int64(len(d.Frag))
		} else {
			outcomes += int64(d.Ref.Len)
		}
	}
	if outcomes > maxFrame {
		return fmt.Errorf("%w: the dedup window's outcomes alone are %d bytes", ErrCheckpointTooLarge, outcomes)
	}
	sum, n := crc32.New(crcTable), 0
	err := c.pieces(false, func(p []byte) []byte {
		sum.Write(p)
		n += len(p)
		return p[:0]
	})
	if err != nil {
		return err
	}
	if n > maxFrame {
		return fmt.Errorf("%w: %d bytes", ErrCheckpointTooLarge, n)
	}
	var head [frameHeader]byte
	binary.LittleEndian.PutUint32(head[:], uint32(n))
	binary.LittleEndian.PutUint32(head[4:], sum.Sum32())
	if _, err := w.Write(head[:]); err != nil {
		return err
	}
	var werr error
	err = c.pieces(true, func(p []byte) []byte {
		if werr == nil {
			_, werr = w.Write(p)
		}
		return p[:0]
	})
	return cmp.Or(err, werr)
}

// pieces passes c's payload to emit a piece at a time, each at most a few KB plus one
// dedup record; emit returns the buffer to fill next. With place, it sets the Refs of
// c's dedup records to their places in a journal that starts with c.
func (c *Checkpoint) pieces(place bool, emit func([]byte) []byte) error {
	const piece = 64 << 10
	b := make([]byte, 0, 2*piece)
	emitted := frameHeader // where b starts in the journal
	next := func() {
		if len(b) >= piece {
			emitted += len(b)
			b = emit(b)
		}
	}
	b = append(b, recCheckpoint)
	b = binary.AppendUvarint(b, uint64(c.Rev))
	b = appendSnapshotID(b, c.Snapshot)
	b = binary.AppendUvarint(b, uint64(len(c.Revs)))
	for _, kr := range c.Revs {
		b = appendString(b, kr.Key)
		b = binary.AppendUvarint(b, uint64(kr.Rev))
		next()
	}
	b = binary.AppendUvarint(b, uint64(len(c.Dedup)))
	var frags io.ReaderAt // nil stays nil: readFrag says there is nothing to read
	if c.Frags != nil {
		frags = &readAhead{r: c.Frags}
	}
	var fragBuf []byte
	for i := range c.Dedup {
		d := c.Dedup[i]
		if d.Frag == nil && d.Ref.Len > 0 {
			frag, err := readFrag(frags, d.Ref, fragBuf)
			if err != nil {
				return fmt.Errorf("checkpoint: request_id %q: %w", d.ID, err)
			}
			d.Frag, fragBuf = frag, frag
		}
		var at int
		b, at = appendDedup(b, &d, nil)
		switch {
		case !place || at < 0:
		case d.Ref.Len > 0: // its checksum is known
			c.Dedup[i].Ref.At = int64(emitted + at)
		default:
			c.Dedup[i].Ref = refAt(emitted+at, d.Frag)
		}
		next()
	}
	emit(b)
	return nil
}

// readAhead reads r a window at a time where the reads are dense. A checkpoint reads
// its outcomes back in journal order, typically a few hundred bytes each a few hundred
// bytes apart: with a pread for each, the syscalls were most of a compaction's CPU.
// A read that starts far from where the one before ended (outcomes between large
// records that none refers to), or of half a window or more, goes straight to r:
// copying a window for it would cost more than the syscall saved.
type readAhead struct {
	r    io.ReaderAt
	win  []byte // r's bytes from at on
	at   int64
	last int64 // where the last read ended
}

const (
	readAheadSize = 64 << 10
	readAheadGap  = 4 << 10 // the most a read may skip and still count as dense
)

func (ra *readAhead) ReadAt(p []byte, off int64) (int, error) {
	if off >= ra.at && off+int64(len(p)) <= ra.at+int64(len(ra.win)) {
		ra.last = off + int64(len(p))
		return copy(p, ra.win[off-ra.at:]), nil
	}
	dense := off >= ra.last && off-ra.last <= readAheadGap
	ra.last = off + int64(len(p))
	if !dense || len(p) >= readAheadSize/2 {
		return ra.r.ReadAt(p, off)
	}
	if ra.win == nil {
		ra.win = make([]byte, readAheadSize)
	}
	// A window that ends early (the end of the file, or an error past p) still serves p.
	n, err := ra.r.ReadAt(ra.win[:cap(ra.win)], off)
	ra.win, ra.at = ra.win[:n], off
	if n >= len(p) {
		err = nil
	}
	return copy(p, ra.win), err
}

func frame(buf []byte, payload func([]byte) []byte) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, frameHeader)...)
	buf = payload(buf)
	p := buf[start+frameHeader:]
	binary.LittleEndian.PutUint32(buf[start:], uint32(len(p)))
	binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(p, crcTable))
	return buf
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func appendSnapshotID(b []byte, id SnapshotID) []byte {
	b = binary.AppendUvarint(b, uint64(id.Rev))
	b = binary.AppendVarint(b, id.Size)
	return binary.LittleEndian.AppendUint32(b, id.CRC)
}

// appendDedup appends one dedup record of a frame whose ops are ops. fragAt is where
// in b it put d.Frag, or -1 when it put none (it is the record's op's, or there is none).
func appendDedup(b []byte, d *Dedup, ops []Op) (_ []byte, fragAt int) {
	b = appendString(b, d.ID)
	b = append(b, d.Fingerprint[:]...)
	b = binary.AppendVarint(b, d.Time)
	fragAt = -1
	switch {
	case d.Err:
		b = append(b, dedupError)
	case d.Frag == nil:
		b = append(b, dedupResult)
	case len(ops) == 1 && len(ops[0].Frag) == len(d.Frag) && &ops[0].Frag[0] == &d.Frag[0]:
		b = append(b, dedupRecordOp)
	default:
		b = append(b, dedupFrag)
		b = binary.AppendUvarint(b, uint64(len(d.Frag)))
		fragAt = len(b)
		b = append(b, d.Frag...)
	}
	return appendBytes(b, d.Body), fragAt
}

// Replay is what a journal file holds.
type Replay struct {
	Checkpoint *Checkpoint  // nil for an empty or missing journal
	Intents    []SnapshotID // in journal order
	Done       []SnapshotID // snapshots known to have reached the disk, in journal order
	Records    []Record     // in journal order
	Size       int64        // bytes of intact frames
	// TornAt is the offset of an incomplete or damaged last frame (a crash mid-append),
	// or -1. Everything from there on is ignored.
	TornAt     int64
	TornReason string
}

// ReadJournal reads and decodes the journal at path; a missing file is an empty journal.
// Frag and Body slices point into the file's bytes.
func ReadJournal(fsys FS, path string) (*Replay, error) {
	data, err := fsys.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Replay{TornAt: -1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal %s: %w", path, err)
	}
	r, err := DecodeJournal(data)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return r, nil
}

// DecodeJournal decodes a journal's bytes. A damaged or incomplete last frame is reported
// in TornAt; a damaged frame with intact frames after it is ErrCorrupt.
func DecodeJournal(data []byte) (*Replay, error) {
	r := &Replay{TornAt: -1}
	off := 0
	for off < len(data) {
		payload, next, why := nextFrame(data, off)
		if why != "" {
			if off == 0 {
				// A journal is put in place whole (temp file, fsync, rename), so its
				// first frame is never a crash leftover.
				return nil, fmt.Errorf("%w: first frame: %s", ErrCorrupt, why)
			}
			if laterFrameIntact(data, off+1) {
				return nil, fmt.Errorf("%w: frame at offset %d: %s, and intact records follow it", ErrCorrupt, off, why)
			}
			r.TornAt, r.TornReason = int64(off), why
			break
		}
		if err := r.decode(payload, off); err != nil {
			return nil, err
		}
		off = next
	}
	r.Size = int64(off)
	if r.TornAt >= 0 {
		r.Size = r.TornAt
	}
	return r, nil
}

// nextFrame returns the payload of the frame at off, or why it is not a whole frame.
func nextFrame(data []byte, off int) (payload []byte, next int, why string) {
	if len(data)-off < frameHeader {
		return nil, 0, "incomplete frame header"
	}
	n := binary.LittleEndian.Uint32(data[off:])
	sum := binary.LittleEndian.Uint32(data[off+4:])
	if n == 0 {
		// A crash can leave a zero-filled tail: the size grew but the data never landed.
		return nil, 0, "empty frame"
	}
	if n > maxFrame || int(n) > len(data)-off-frameHeader {
		return nil, 0, fmt.Sprintf("frame length %d runs past the end of the file", n)
	}
	payload = data[off+frameHeader : off+frameHeader+int(n)]
	if crc32.Checksum(payload, crcTable) != sum {
		return nil, 0, "checksum mismatch"
	}
	return payload, off + frameHeader + int(n), ""
}

// laterFrameIntact reports whether intact frames follow a damaged one, running on to the
// end of the file. A torn append leaves garbage only at the very end; intact frames after
// the damage mean a record in the middle went bad, and dropping everything after it would
// drop acknowledged writes. Requiring the chain to reach the end keeps bytes that merely
// look like a frame (a client's key, say) inside a torn record from counting.
func laterFrameIntact(data []byte, from int) bool {
	for off := from; off+frameHeader < len(data); off++ {
		if chainsToEnd(data, off) {
			return true
		}
	}
	return false
}

func chainsToEnd(data []byte, off int) bool {
	for off < len(data) {
		payload, next, why := nextFrame(data, off)
		if why != "" || payload[0] < recCheckpoint || payload[0] > recDone {
			return false
		}
		off = next
	}
	return true
}

func (r *Replay) decode(p []byte, off int) error {
	d := decoder{b: p, end: off + frameHeader + len(p)}
	kind := d.byte()
	switch {
	case kind == recCheckpoint && off == 0:
		c := &Checkpoint{Rev: d.int()}
		c.Snapshot = d.snapshotID()
		n := d.count()
		c.Revs = make([]KeyRev, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			c.Revs = append(c.Revs, KeyRev{Key: d.string(), Rev: d.int()})
		}
		c.Dedup = d.dedups(nil, 0)
		r.Checkpoint = c
	case kind == recCheckpoint:
		d.fail("checkpoint after the start")
	case off == 0:
		d.fail("journal does not start with a checkpoint")
	case kind == recWrite:
		rec := Record{Rev: d.int()}
		n := d.count()
		rec.Ops = make([]Op, 0, n)
		opAt := 0
		for i := 0; i < n && d.err == nil; i++ {
			op := Op{Key: d.string()}
			if d.byte() == 1 {
				op.Frag, opAt = d.bytesAt()
			}
			rec.Ops = append(rec.Ops, op)
		}
		rec.Dedup = d.dedups(rec.Ops, opAt)
		r.Records = append(r.Records, rec)
	case kind == recIntent:
		r.Intents = append(r.Intents, d.snapshotID())
	case kind == recDone:
		r.Done = append(r.Done, d.snapshotID())
	default:
		d.fail(fmt.Sprintf("unknown record type %d", kind))
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes in record")
	}
	if d.err != nil {
		// The checksum matched, so this is not a torn write: the file was made by
		// something else, or by a bug.
		return fmt.Errorf("%w: record at offset %d: %v", ErrCorrupt, off, d.err)
	}
	return nil
}

type decoder struct {
	b   []byte
	end int // the offset in the file where b ends
	err error
}

func (d *decoder) fail(why string) {
	if d.err == nil {
		d.err = errors.New(why)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("record too short")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int64 {
	v := d.uint()
	if v >= 1<<53 {
		d.fail("revision out of range")
		return 0
	}
	return int64(v)
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a length that must fit in what is left of the record, so a damaged count
// cannot make the decoder allocate without bound.
func (d *decoder) count() int {
	v := d.uint()
	if v > uint64(len(d.b)) {
		d.fail("count larger than the record")
		return 0
	}
	return int(v)
}

func (d *decoder) bytes() []byte {
	p, _ := d.bytesAt()
	return p
}

// bytesAt is bytes, and where they are in the file.
func (d *decoder) bytesAt() ([]byte, int) {
	n := d.count()
	at := d.end - len(d.b)
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p, at
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) snapshotID() SnapshotID {
	id := SnapshotID{Rev: d.int(), Size: d.varint()}
	if len(d.b) < 4 {
		d.fail("record too short")
		return id
	}
	id.CRC = binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return id
}

// dedups decodes dedup records; ops are the post-images of the record they belong to,
// and opAt is where the last of them is in the file.
func (d *decoder) dedups(ops []Op, opAt int) []Dedup {
	n := d.count()
	out := make([]Dedup, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		x := Dedup{ID: d.string()}
		if len(d.b) < 16 {
			d.fail("record too short")
			break
		}
		copy(x.Fingerprint[:], d.b)
		d.b = d.b[16:]
		x.Time = d.varint()
		switch kind := d.byte(); kind {
		case dedupResult:
		case dedupError:
			x.Err = true
		case dedupFrag:
			var at int
			x.Frag, at = d.bytesAt()
			x.Ref = refAt(at, x.Frag)
		case dedupRecordOp:
			if len(ops) != 1 || ops[0].Frag == nil {
				d.fail("dedup record refers to a missing post-image")
				break
			}
			x.Frag = ops[0].Frag
			x.Ref = refAt(opAt, x.Frag)
		default:
			d.fail(fmt.Sprintf("unknown dedup kind %d", kind))
		}
		x.Body = d.bytes()
		out = append(out, x)
	}
	return out
}

// Journal is the open journal file that writes are appended to. Not goroutine-safe: the
// actor owns it. After any failed write or fsync it is broken for good (ErrBroken): the
// caller writes a new journal with Create instead.
type Journal struct {
	fsys    FS
	f       File
	path    string
	size    int64
	synced  atomic.Int64 // what the last successful fsync covered: never cut, never lost
	broken  error
	retired string // the journal this one replaced, under a temp name
}

// Contents writes what a new journal starts with (a checkpoint and the records to keep)
// to w. It returns the first error of w.
type Contents func(w io.Writer) error

// CreateJournal atomically replaces the journal at path with one holding contents,
// durable on return, and opens it for appending.
func CreateJournal(fsys FS, path string, contents Contents) (*Journal, error) {
	next, err := PrepareJournal(fsys, path, contents, nil)
	if err != nil {
		return nil, err
	}
	return next.Commit(nil)
}

// OpenJournal opens the existing journal at path for appending, first cutting it to size
// (dropping a torn tail) when it is longer: what a start does with a journal it can keep.
func OpenJournal(fsys FS, path string, size int64) (*Journal, error) {
	fi, err := fsys.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	if fi.Size() != size {
		if err := fsys.TruncateSync(path, size); err != nil {
			return nil, err
		}
	}
	f, err := fsys.OpenAppend(path)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return &Journal{fsys: fsys, f: f, path: path, size: size}, nil
}

// NextJournal is a journal written beside the current one but not yet in its place: the
// slow part of a compaction, done while the current journal keeps taking appends.
// PrepareJournal may run on any goroutine; Commit and Abort on the journal's owner.
type NextJournal struct {
	fsys FS
	path string
	p    Pending
	w    *countingWriter // into p, paced and throttled
}

// PrepareJournal writes contents to a temp file beside path, no faster than throttle
// (nil: as fast as it goes).
func PrepareJournal(fsys FS, path string, contents Contents, throttle *Throttle) (*NextJournal, error) {
	p, err := fsys.NewPending(path)
	if err != nil {
		return nil, fmt.Errorf("write journal %s: %w", path, err)
	}
	// Through a buffer: contents writes a frame at a time, and the frames of a large
	// journal are not held in memory all at once.
	cw := &countingWriter{w: paced(p, throttle)}
	bw := bufio.NewWriterSize(cw, 1<<20)
	err = contents(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		p.Cleanup()
		return nil, fmt.Errorf("write journal %s: %w", path, err)
	}
	// Synced here, on the caller's goroutine, so that Commit only has the delta to sync.
	if err := p.Sync(); err != nil {
		p.Cleanup()
		return nil, fmt.Errorf("fsync journal %s: %w", path, err)
	}
	return &NextJournal{fsys: fsys, path: path, p: p, w: cw}, nil
}

// CatchUp appends r's bytes from `from` to `to` and fsyncs them, on the caller's
// goroutine: frames the current journal took after the new one was begun, up to what
// its last fsync covered (Journal.Synced), so that they are final. Commit then has only
// the frames after `to` to copy, on the journal owner's goroutine, where every byte
// holds up writes. On error the NextJournal must be aborted.
func (n *NextJournal) CatchUp(r io.ReaderAt, from, to int64) error {
	if _, err := io.Copy(n.w, io.NewSectionReader(r, from, to-from)); err != nil {
		return fmt.Errorf("write journal %s: %w", n.path, err)
	}
	if err := n.p.Sync(); err != nil {
		return fmt.Errorf("fsync journal %s: %w", n.path, err)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Commit appends delta (the frames the current journal took meanwhile, read from its
// file; nil for none), fsyncs, puts the file in place, fsyncs the directory and opens
// it for appending. If the rename happened but a later step failed, the error wraps
// ErrReplaced: the path no longer names the old journal, which must not be appended to
// again.
func (n *NextJournal) Commit(delta io.Reader) (*Journal, error) {
	defer n.p.Cleanup() //nolint:errcheck // a no-op after the rename; otherwise the error is returned
	var copied int64
	if delta != nil {
		var err error
		if copied, err = io.Copy(n.p, delta); err != nil {
			return nil, fmt.Errorf("write journal %s: %w", n.path, err)
		}
	}
	retired, err := replace(n.fsys, n.path, n.p)
	if err != nil {
		return nil, fmt.Errorf("write journal %s: %w", n.path, err)
	}
	if err := n.fsys.SyncDir(dirOf(n.path)); err != nil {
		dropRetired(n.fsys, retired)
		return nil, fmt.Errorf("%w: %s: %w", ErrReplaced, n.path, err)
	}
	f, err := n.fsys.OpenAppend(n.path)
	if err != nil {
		dropRetired(n.fsys, retired)
		return nil, fmt.Errorf("%w: open journal %s: %w", ErrReplaced, n.path, err)
	}
	j := &Journal{fsys: n.fsys, f: f, path: n.path, size: n.w.n + copied, retired: retired}
	j.synced.Store(j.size) // the rename's fsync covered it
	return j, nil
}

// Abort removes the temp file.
func (n *NextJournal) Abort() { n.p.Cleanup() }

// Append writes b (whole frames) at the end of the journal without syncing.
func (j *Journal) Append(b []byte) error {
	if j.broken != nil {
		return j.broken
	}
	n, err := j.f.Write(b)
	j.size += int64(n)
	if err != nil {
		j.broken = fmt.Errorf("%w: append to %s: %w", ErrBroken, j.path, err)
		return fmt.Errorf("append to journal %s: %w", j.path, err)
	}
	return nil
}

// Sync makes everything appended so far durable.
func (j *Journal) Sync() error {
	if j.broken != nil {
		return j.broken
	}
	if err := j.f.Sync(); err != nil {
		j.broken = fmt.Errorf("%w: fsync %s: %w", ErrBroken, j.path, err)
		return fmt.Errorf("fsync journal %s: %w", j.path, err)
	}
	j.synced.Store(j.size)
	return nil
}

// Synced is how much of the journal its last successful fsync covered: those bytes are
// never cut off again (Cut only removes a failed batch, after them). 0 until then for
// a journal opened at start. Goroutine-safe.
func (j *Journal) Synced() int64 { return j.synced.Load() }

// Cut durably removes everything after size (frames of a batch whose append or fsync
// failed), so that they can never be replayed. It leaves the journal broken: nothing is
// appended to it again.
func (j *Journal) Cut(size int64) error {
	if j.broken == nil {
		j.broken = fmt.Errorf("%w: cut", ErrBroken)
	}
	if err := j.fsys.TruncateSync(j.path, size); err != nil {
		return err
	}
	j.size = size
	return nil
}

// Retire breaks the journal with err but keeps the file open, so that it can still be
// read (Reader) until Close.
func (j *Journal) Retire(err error) {
	if j.broken == nil {
		j.broken = fmt.Errorf("%w: %w", ErrBroken, err)
	}
}

// Retired is the temp name of the journal this one replaced, "" if none: its owner
// frees it with ReleaseFile once it has closed that journal.
func (j *Journal) Retired() string { return j.retired }

// Size is the number of bytes in the journal file.
func (j *Journal) Size() int64 { return j.size }

// Reader reads the journal file at an offset (FragRefs, with ReadFrag); safe for
// concurrent use, also after Close, when reads fail.
func (j *Journal) Reader() io.ReaderAt {
	if j.f == nil {
		return nil
	}
	return j.f
}

// Broken reports the failure that broke the journal, or nil.
func (j *Journal) Broken() error { return j.broken }

// Close closes the file; idempotent.
func (j *Journal) Close() error {
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	if j.broken == nil {
		j.broken = fmt.Errorf("%w: closed", ErrBroken)
	}
	return err
}

// replaceFile writes a file through a pending temp file and atomically puts it at path,
// then fsyncs the directory so the rename itself is durable. On success it returns the
// temp name the replaced file has now, if any, for ReleaseFile.
func replaceFile(fsys FS, path string, write func(Pending) error) (retired string, err error) {
	p, err := fsys.NewPending(path)
	if err != nil {
		return "", err
	}
	defer p.Cleanup() //nolint:errcheck // only matters when something failed, and that error is returned
	if err := write(p); err != nil {
		return "", err
	}
	if retired, err = replace(fsys, path, p); err != nil {
		return "", err
	}
	if err := fsys.SyncDir(dirOf(path)); err != nil {
		dropRetired(fsys, retired)
		return "", err
	}
	return retired, nil
}

// dropRetired removes the name a failed replace retired a file under: only a second
// name goes, never the file's contents.
func dropRetired(fsys FS, name string) {
	if name != "" {
		fsys.Remove(name) //nolint:errcheck // a leftover is removed at the next start
	}
}

// replace renames p over path, having retired the file there first.
func replace(fsys FS, path string, p Pending) (retired string, err error) {
	retired = retire(fsys, path)
	if err := p.CloseAtomicallyReplace(); err != nil {
		dropRetired(fsys, retired) // the file is still at path
		return "", err
	}
	return retired, nil
}
