// Package actor owns the session store in memory: one goroutine (Run) applies every
// request in the order it was queued, makes each batch durable with one journal append
// and one fsync (group commit), answers the batch, and has sessions.json rewritten in
// the background from an immutable view.
//
// Concurrency: Submit, SubmitOrRun and Stats are safe from any goroutine. Everything else
// is done by whoever holds the actor's lock (own): the goroutine that calls Run, for each
// thing it does, or a lone client's SubmitOrRun that finds the actor idle with nothing
// queued and runs its request itself, as Run would have. Either way one goroutine at a
// time owns the store. Results are copies: no caller ever holds a pointer into the store.
//
// What it does not do: sockets and JSON-RPC framing (package ipc), file formats (package
// persist), signals and process lifetime (cmd/sessiond).
package actor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"sessiond/persist"
)

// Config is what an Actor needs; zero fields take the defaults noted.
type Config struct {
	Store            string        // path of sessions.json (required)
	FS               persist.FS    // default persist.OS{}
	Logger           *slog.Logger  // default: discard
	QueueSize        int           // mailbox capacity; a full mailbox answers busy (default 4096)
	MaxBatch         int           // requests per group commit at most (default 1024)
	MaxValueBytes    int           // largest encoded entry (default 16 MiB)
	MaxDepth         int           // deepest JSON nesting of params (default 64)
	SnapshotInterval time.Duration // snapshot at most this long after a change (default 1s; <0: only on flush and stop)
	// SnapshotRate bounds how fast a background snapshot or a new journal (compaction)
	// is written, in bytes a second (persist.Throttle); one that a flush or a stop waits
	// for goes at full speed, and a snapshot too old for them is abandoned
	// (hurrySnapshot). Default 100 MB/s; <0: no limit.
	SnapshotRate  float64
	SyncInterval  time.Duration // durable:false writes reach the disk within this (default 1s)
	DedupWindow   time.Duration // request_id records kept at least this long (default 5m)
	DedupMax      int           // ...unless there are more than this many (default 1,000,000)
	CompactBytes  int64         // rewrite the journal after a snapshot once it is larger (default 64 MiB)
	RetryInterval time.Duration // retry a failed disk step after this (default 500ms)
	// ReleaseDelay is how long a replaced sessions.json or journal is kept whole before
	// its blocks are freed a stretch at a time (persist.ReleaseFile): a reader whose open
	// raced the rename has the file open by then, and one that has it open keeps it
	// whole. Default 1s.
	ReleaseDelay time.Duration
	Now          func() time.Time
}

func (c *Config) setDefaults() {
	if c.FS == nil {
		c.FS = persist.OS{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.QueueSize, 4096)
	def(&c.MaxBatch, 1024)
	def(&c.MaxValueBytes, 16<<20)
	def(&c.MaxDepth, 64)
	def(&c.DedupMax, 1_000_000)
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defDur(&c.SnapshotInterval, time.Second)
	defDur(&c.SyncInterval, time.Second)
	defDur(&c.DedupWindow, 5*time.Minute)
	defDur(&c.RetryInterval, 500*time.Millisecond)
	defDur(&c.ReleaseDelay, time.Second)
	if c.CompactBytes <= 0 {
		c.CompactBytes = 64 << 20
	}
	if c.SnapshotRate == 0 {
		c.SnapshotRate = DefaultSnapshotRate
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// DefaultSnapshotRate is Config.SnapshotRate's default: a 50 MB store's snapshot takes
// half a second.
const DefaultSnapshotRate = 100e6

// Actor is the single owner of a store. Create it with Open, run it with Run.
type Actor struct {
	cfg         Config
	log         *slog.Logger
	journalPath string
	dryRun      bool   // Check: load without writing anything
	epoch       uint64 // names this process's numbering of places, for list cursors

	// mu orders Submit's send against the stop in Run: once stopping is set under the
	// write lock no request can enter the mailbox, so the final drain misses none.
	mu       sync.RWMutex
	stopping bool
	mailbox  chan *request // requests from Submit, in arrival order

	intents  chan intentReq  // from the snapshot goroutine: make an intent durable
	snapDone chan snapResult // from the snapshot goroutine: it finished
	// quit is closed when the actor stops (finishReleases): replaced files still
	// waiting to be freed a stretch at a time are removed at once.
	quit      chan struct{}
	releasing sync.WaitGroup // goroutines freeing replaced files (persist.ReleaseFile)

	// own is held by whoever runs the actor: Run's goroutine except while it waits for
	// something to do, or a SubmitOrRun that found the actor idle (see there). Open
	// returns with it held; Run starts and returns holding it. It guards the fields below.
	own sync.Mutex
	// queued counts requests sent to the mailbox and not yet answered (runBatch): a
	// request runs on its caller's goroutine only while it is 0, so never ahead of an
	// earlier one of the same connection.
	queued atomic.Int64
	// alone is set when the last batch was of one request: a lone client's rhythm. Only
	// then does SubmitOrRun run a request itself; under load it would take the place of
	// a larger group commit.
	alone atomic.Bool

	st          *store
	dedup       *dedupTable
	rev         int64 // highest revision issued
	durableRev  int64 // highest revision fsync'd
	appendedRev int64 // highest revision written to the journal
	journal     *persist.Journal
	base        persist.SnapshotID   // what sessions.json holds
	intentsOut  []persist.SnapshotID // intents made durable since base: one may be on disk
	stamp       persist.Stamp        // sessions.json as we last left it
	tail        []tailChange         // keys written after base, to rebuild a journal from
	held        []heldReply          // error answers waiting until a failed journal is replaced
	waiters     []flushWaiter
	snapRunning bool
	snapRev     int64             // the revision the running snapshot holds
	snapLimit   *persist.Throttle // the running snapshot's; Hurry when somebody waits for it
	snapAgain   bool
	snapAlarm   alarm // the next background snapshot
	syncAlarm   alarm // the fsync of durable:false writes
	retryAlarm  alarm // the retry of a failed disk step
	journalErr  error
	snapErr     error

	compacting   bool               // a new journal is being written in the background
	compactLimit *persist.Throttle  // the running compaction's; Hurry when a stop waits for it
	compactGen   uint64             // bumped whenever the journal is switched
	compactBase  int64              // size of the journal when it was last switched
	frameBuf     []byte             // a batch's frames, reused: nothing keeps them after the append
	compactDone  chan compactResult // from the compaction goroutine; buffered
	// unsynced are the dedup records whose frames are appended but not fsync'd. They
	// keep their bytes until then: after a failed fsync a new journal is written from
	// memory, not from a file whose pages the kernel may have dropped.
	unsynced []uint64

	stats struct {
		rev, durableRev, snapshotRev, bytes, dedupOldest atomic.Int64
		entries, external                                atomic.Int64
		degraded                                         atomic.Pointer[string]
	}
}

// tailChange is a key written (or deleted) after base, at rev. A new journal rebuilds
// the records after base from these and the store (see tailRecords). Keeping keys
// instead of frames keeps the tail to a few words a write; frames kept every version of
// every entry written between two snapshots (gigabytes, with 50 KB entries patched
// quickly).
type tailChange struct {
	rev     int64
	key     string
	deleted bool
}

// maxFrameBuf bounds the frame buffer kept between batches, so that one batch of large
// entries does not pin its memory.
const maxFrameBuf = 1 << 20

// maxBatchFrames is where a batch stops taking more requests (see runBatch): 80 patches
// of 50 KB entries, while a batch of 500 B entries reaches MaxBatch long before it.
const maxBatchFrames = 4 << 20

type heldReply struct {
	reply chan Reply
	rep   Reply
}

type flushWaiter struct {
	rev   int64
	reply chan Reply
}

type intentReq struct {
	id    persist.SnapshotID
	reply chan error
}

type snapResult struct {
	id      persist.SnapshotID
	err     error
	stamp   persist.Stamp
	aside   string
	retired string // the sessions.json it replaced, to release
	took    time.Duration
}

// Open loads the store (sessions.json plus the journal) and makes it ready to Run. It
// blocks for the load; the caller holds the ownership lock already.
func Open(cfg Config) (*Actor, error) {
	cfg.setDefaults()
	a := &Actor{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "actor"),
		journalPath: cfg.Store + ".journal",
		mailbox:     make(chan *request, cfg.QueueSize),
		intents:     make(chan intentReq),
		snapDone:    make(chan snapResult),
		quit:        make(chan struct{}),
		compactDone: make(chan compactResult, 1),
		st:          newStore(),
		dedup:       newDedupTable(),
		epoch:       rand.Uint64(),
		snapAlarm:   newAlarm(),
		syncAlarm:   newAlarm(),
		retryAlarm:  newAlarm(),
	}
	a.own.Lock() // for Run; nobody else may run the actor before it does
	if err := a.recover(); err != nil {
		return nil, err
	}
	a.publish()
	return a, nil
}

// Submit parses and validates a request on the caller's goroutine, queues it and returns
// at once. Exactly one Reply arrives on the returned channel. It never blocks: a full
// mailbox is answered busy, a stopping actor shutting_down. Goroutine-safe.
func (a *Actor) Submit(method string, params []byte) <-chan Reply {
	return a.submit(method, params, false)
}

// SubmitOrRun is Submit for a caller with nothing else to do until the answer (a
// connection with no further request read). When Run is waiting for work, nothing is
// queued and the last batch was of one request (a lone client), the request is run on
// the caller's goroutine as a batch of one, exactly as Run would run it, and SubmitOrRun
// returns once it is answered: that saves handing it to Run's goroutine and the answer
// back, thread wake-ups that cost a lone client a sixth of its latency (BENCHMARKS.md).
// Otherwise it is queued as by Submit. Goroutine-safe.
func (a *Actor) SubmitOrRun(method string, params []byte) <-chan Reply {
	return a.submit(method, params, true)
}

func (a *Actor) submit(method string, params []byte, run bool) <-chan Reply {
	r, perr := a.parse(method, params)
	if perr != nil {
		return answered(Reply{Err: perr})
	}
	ch := make(chan Reply, 1)
	r.reply = ch
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.stopping {
		return answered(Reply{Err: errorf(ReasonShuttingDown, true, "the server is stopping; retry on a new connection")})
	}
	// Run holds own except while it waits in its select, and queued is 0 only once every
	// request sent to the mailbox has been answered: this one cannot overtake one.
	if run && a.alone.Load() && a.queued.Load() == 0 && a.own.TryLock() {
		if a.queued.Load() == 0 {
			a.queued.Add(1)
			a.runBatch(r, false)
			a.own.Unlock()
			return ch
		}
		a.own.Unlock()
	}
	a.queued.Add(1)
	select {
	case a.mailbox <- r:
		return ch
	default:
		a.queued.Add(-1)
		e := errorf(ReasonBusy, true, "the request queue is full (%d)", cap(a.mailbox))
		e.Data = map[string]any{"retry_after_ms": 10}
		return answered(Reply{Err: e})
	}
}

func answered(rep Reply) <-chan Reply {
	ch := make(chan Reply, 1)
	ch <- rep
	return ch
}

// Stats reports the store's numbers as of the last batch. Goroutine-safe, non-blocking.
func (a *Actor) Stats() Stats {
	now := a.cfg.Now().UnixMilli()
	oldest := a.stats.dedupOldest.Load()
	s := Stats{
		Rev:         a.stats.rev.Load(),
		DurableRev:  a.stats.durableRev.Load(),
		SnapshotRev: a.stats.snapshotRev.Load(),
		Entries:     int(a.stats.entries.Load()),
		Bytes:       a.stats.bytes.Load(),
		Queue:       len(a.mailbox),
		DedupWindow: 0, // no record held
		Store:       a.cfg.Store,
		External:    int(a.stats.external.Load()),
	}
	if oldest > 0 {
		s.DedupWindow = max(0, now-oldest)
	}
	if d := a.stats.degraded.Load(); d != nil {
		s.Degraded = *d
	}
	return s
}

// publish copies the numbers Stats reports; called by the Run goroutine after changes.
func (a *Actor) publish() {
	a.stats.rev.Store(a.rev)
	a.stats.durableRev.Store(a.durableRev)
	a.stats.snapshotRev.Store(a.base.Rev)
	a.stats.entries.Store(int64(a.st.len()))
	a.stats.bytes.Store(a.st.fileSize())
	a.stats.dedupOldest.Store(a.dedup.oldest())
	var d string
	switch {
	case a.journalErr != nil && a.snapErr != nil:
		d = a.journalErr.Error() + "; " + a.snapErr.Error()
	case a.journalErr != nil:
		d = a.journalErr.Error()
	case a.snapErr != nil:
		d = a.snapErr.Error()
	}
	a.stats.degraded.Store(&d)
}

// Run applies requests until ctx is done, then stops taking new ones, answers every
// request already queued, writes the final snapshot and returns. The error is non-nil
// when the final snapshot could not be written (the journal still holds every
// acknowledged write). Blocks. After it returned, Resume and Run again carry on (a
// restart that could not go ahead); Close ends the actor for good.
func (a *Actor) Run(ctx context.Context) error {
	a.log.Info("serving", "rev", a.rev, "entries", a.st.len())
	a.armSnapshot()
	if a.snapErr != nil || a.journalErr != nil {
		a.armRetry()
	}
	for {
		// Idle: a SubmitOrRun may run a request meanwhile (own is free), so each case
		// takes own before it looks at anything, and an alarm it finds fired may have
		// been stopped or re-armed since.
		a.own.Unlock()
		select {
		case r := <-a.mailbox:
			a.own.Lock()
			a.runBatch(r, true)
		case req := <-a.intents:
			a.own.Lock()
			req.reply <- a.makeIntentDurable(req.id)
		case res := <-a.snapDone:
			a.own.Lock()
			a.finishSnapshot(res)
		case res := <-a.compactDone:
			a.own.Lock()
			a.finishCompaction(res)
		case <-a.snapAlarm.C():
			a.own.Lock()
			if a.snapAlarm.fired() {
				a.startSnapshot()
			}
		case <-a.syncAlarm.C():
			a.own.Lock()
			if a.syncAlarm.fired() {
				a.syncJournal()
			}
		case <-a.retryAlarm.C():
			a.own.Lock()
			if a.retryAlarm.fired() {
				a.retry()
			}
		case <-ctx.Done():
			a.own.Lock()
			return a.stop()
		}
		a.publish()
	}
}

// alarm is a timer whose channel never changes, so that Run's select, waiting on it, sees
// it armed by a batch that ran on another goroutine (SubmitOrRun).
type alarm struct {
	t     *time.Timer
	armed bool
}

func newAlarm() alarm {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return alarm{t: t}
}

// C fires once after arm, unless stop came first.
func (al *alarm) C() <-chan time.Time { return al.t.C }

// arm sets the alarm to fire after d, unless it is armed already.
func (al *alarm) arm(d time.Duration) {
	if !al.armed {
		al.t.Reset(d)
		al.armed = true
	}
}

func (al *alarm) stop() {
	al.t.Stop()
	al.armed = false
}

// fired disarms the alarm after its channel fired, and reports whether it was still
// armed: it may have been stopped between the firing and the taking of own.
func (al *alarm) fired() bool {
	armed := al.armed
	al.armed = false
	return armed
}

// stop is Run's ending: no new requests, the queued ones answered, the running
// snapshot awaited, a final one written, the journal closed.
func (a *Actor) stop() error {
	start := time.Now()
	a.log.Info("stopping: answering queued requests and writing the final snapshot", "queued", len(a.mailbox))
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	for {
		select {
		case r := <-a.mailbox:
			a.runBatch(r, true)
			continue
		default:
		}
		break
	}
	a.hurrySnapshot() // the final snapshot comes next
	a.waitSnapshot()
	a.awaitCompaction()
	if a.journalErr != nil {
		a.retry()
		a.waitSnapshot()
	}
	a.syncJournal() // durable:false writes reach the disk even if the snapshot fails
	var err error
	if a.rev > a.base.Rev || !a.stamp.Exists {
		a.startSnapshot()
		a.waitSnapshot()
		err = a.snapErr
	}
	a.awaitCompaction()
	if len(a.held) > 0 {
		// Their outcome is not known: the failed frames could be neither cut off nor
		// replaced. No answer is the honest one; the connection is closed and a retry
		// with the same request_id settles it after the restart.
		a.log.Error("stopping with answers whose outcome is unknown (the disk refused every repair); their connections are closed unanswered",
			"requests", len(a.held))
		a.held = nil
	}
	a.failWaiters(a.rev, errors.New("the server stopped before the snapshot was written"))
	a.finishReleases() // a re-exec would leave them for the next start to remove
	a.snapAlarm.stop()
	a.syncAlarm.stop()
	a.retryAlarm.stop()
	a.publish()
	if err != nil {
		a.log.Error("stopped without a final snapshot; the journal holds every acknowledged write", "err", err)
		return fmt.Errorf("final snapshot: %w", err)
	}
	a.log.Info("actor stopped", "rev", a.rev, "snapshot_rev", a.base.Rev, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Resume lets Submit queue requests again after Run returned; call it before running
// again. Goroutine-safe.
func (a *Actor) Resume() {
	a.mu.Lock()
	a.stopping = false
	a.mu.Unlock()
}

// Close removes replaced files not yet freed and closes the journal; the actor cannot
// Run again. Call it after Run returned. Idempotent.
func (a *Actor) Close() error {
	a.finishReleases()
	if err := a.journal.Close(); err != nil {
		return fmt.Errorf("close journal %s: %w", a.journalPath, err)
	}
	return nil
}

// waitSnapshot waits for a running snapshot, at full speed, while still serving its
// intent request.
func (a *Actor) waitSnapshot() {
	for a.snapRunning {
		a.snapLimit.Hurry()
		select {
		case req := <-a.intents:
			req.reply <- a.makeIntentDurable(req.id)
		case res := <-a.snapDone:
			a.snapAgain = false
			a.finishSnapshot(res)
			a.snapAlarm.stop()
		}
	}
}

// runBatch is one group commit: first and, with takeQueued, what is queued behind it (up
// to MaxBatch requests and about maxBatchFrames bytes of journal frames) is applied in
// order, the journal frames of the whole batch are written with one append and, if any
// write asked for it, one fsync; then every request is answered. If the append or fsync
// fails, the batch is rolled back in memory and every request from the first write on
// gets storage_error: an error answer never hides a write that later appears.
//
// Only Run takes queued requests: one it has taken from the mailbox and is waiting for
// own to run may be followed there by a later one of the same connection, which a batch
// run by SubmitOrRun would otherwise take first.
func (a *Actor) runBatch(first *request, takeQueued bool) {
	if a.journal.Broken() != nil {
		a.retry()
	}
	now := a.cfg.Now().UnixMilli()
	a.dedup.evict(now, a.cfg.DedupWindow.Milliseconds(), a.cfg.DedupMax)
	mark, startRev, dedupMark := a.st.mark(), a.rev, a.dedup.end()
	batch, replies := []*request{first}, make([]Reply, 1)
	frames := a.frameBuf[:0]
	var tail []tailChange
	var refs []persist.FragRef // of the batch's dedup records, in frames
	firstWrite, needSync := -1, false
	// more takes the next queued request into this group commit while it has room: up
	// to MaxBatch requests and maxBatchFrames bytes of frames. After a disk stall
	// hundreds of 50 KB patches are queued, and in one batch their frames, new entries
	// and answers would all be in memory at once.
	more := func() bool {
		if !takeQueued || len(batch) >= a.cfg.MaxBatch || len(frames) >= maxBatchFrames {
			return false
		}
		select {
		case r := <-a.mailbox:
			batch, replies = append(batch, r), append(replies, Reply{})
			now = a.cfg.Now().UnixMilli() // it may have come after its deadline
			return true
		default:
			return false
		}
	}
	for i := 0; i < len(batch) || more(); i++ {
		r := batch[i]
		if r.kind == kindFlush {
			continue
		}
		rep, rec := a.apply(r, now)
		replies[i] = rep
		// A durable write's answer waits for the fsync even when it wrote nothing
		// itself: a retry answered from its request_id record must not report success
		// before the first attempt's write (perhaps durable:false) is on disk.
		needSync = needSync || (r.durable && r.isWrite())
		if rec == nil {
			continue
		}
		if firstWrite < 0 {
			firstWrite = i
		}
		frames = persist.AppendRecord(frames, rec)
		for _, d := range rec.Dedup {
			refs = append(refs, d.Ref)
		}
		if rec.Rev > 0 {
			for _, op := range rec.Ops {
				tail = append(tail, tailChange{rec.Rev, op.Key, op.Frag == nil})
			}
		}
	}
	if len(frames) == 0 && needSync && a.durableRev < a.appendedRev {
		a.syncJournal()
		if a.durableRev < a.appendedRev {
			// Neither the fsync nor a new journal worked: the remembered outcomes
			// cannot be confirmed durable yet.
			a.holdDurableWrites(batch, replies)
		}
	}
	if len(frames) > 0 {
		// Frames written to a journal that was already broken never reached the disk;
		// frames of a failed append or fsync might have.
		reachedDisk := a.journal.Broken() == nil
		pre := a.journal.Size()
		if err := a.writeJournal(frames, needSync); err != nil {
			a.st.rollback(mark, a.dedup.undoLast)
			a.rev = startRev
			a.log.Error("journal write failed; batch rolled back and answered storage_error",
				"err", err, "requests", len(batch)-firstWrite)
			failed := Reply{Err: errorf(ReasonStorage, true, "the write could not be made durable: %v", err)}
			safe := !reachedDisk || a.discardFrames(pre)
			if a.journalErr != nil {
				// Durable writes before the first record were answered from their
				// request_id records; the fsync that had to back them failed.
				a.holdDurableWrites(batch[:firstWrite], replies)
			}
			for i := firstWrite; i < len(batch); i++ {
				if batch[i].kind == kindFlush {
					continue
				}
				if r := batch[i]; r.requestID != "" && r.isWrite() && a.dedup.get(r.requestID) != nil {
					// Answered from an earlier batch's record (this batch's records are
					// undone): the write it reports happened, and that answer stands,
					// once durable as above.
					if a.journalErr != nil {
						a.holdDurableWrites(batch[i:i+1], replies[i:i+1])
					}
					continue
				}
				if safe {
					replies[i] = failed
					continue
				}
				// The failed frames may still be in the journal on disk: the error
				// answer waits until a new journal has replaced it.
				a.held = append(a.held, heldReply{batch[i].reply, failed})
				batch[i].reply = nil
			}
		} else {
			a.appendedRev = a.rev
			if needSync {
				a.durableRev = a.rev
			} else {
				a.syncAlarm.arm(a.cfg.SyncInterval)
			}
			a.tail = append(a.tail, tail...)
			for i, ref := range refs {
				ref.At += pre
				a.dedup.setRef(dedupMark+uint64(i), ref)
				a.unsynced = append(a.unsynced, dedupMark+uint64(i))
			}
			if needSync {
				a.synced()
			}
		}
	}
	if cap(frames) <= maxFrameBuf {
		a.frameBuf = frames
	}
	a.st.commit()
	a.dedup.evict(now, a.cfg.DedupWindow.Milliseconds(), a.cfg.DedupMax)
	a.publish() // status read after an answer reflects it
	for i, r := range batch {
		switch {
		case r.reply == nil:
		case r.kind == kindFlush:
			a.flush(r)
		default:
			r.reply <- replies[i]
		}
	}
	a.queued.Add(-int64(len(batch)))
	a.alone.Store(len(batch) == 1)
	a.armSnapshot()
}

// discardFrames makes sure the frames of a failed batch, written after offset pre, can
// never be replayed: it cuts them off durably, or failing that replaces the journal. It
// reports whether either worked, that is whether the batch may be answered storage_error
// now.
func (a *Actor) discardFrames(pre int64) bool {
	cut := a.journal.Cut(pre)
	if cut != nil {
		a.log.Error("cannot cut the failed batch off the journal", "err", cut)
	}
	a.replaceBrokenJournal()
	return cut == nil || a.journalErr == nil
}

// holdDurableWrites keeps the answers of the durable writes in batch until a new journal
// makes what they report durable.
func (a *Actor) holdDurableWrites(batch []*request, replies []Reply) {
	for i, r := range batch {
		if r.durable && r.isWrite() && r.reply != nil {
			a.held = append(a.held, heldReply{r.reply, replies[i]})
			r.reply = nil
		}
	}
}

// writeJournal appends frames and, if asked, fsyncs them.
func (a *Actor) writeJournal(frames []byte, sync bool) error {
	if err := a.journal.Append(frames); err != nil {
		a.journalErr = err
		return err
	}
	if sync {
		if err := a.syncTimed(); err != nil {
			a.journalErr = err
			return err
		}
	}
	return nil
}

// Journal fsyncs at least this slow are logged: at debug from slowSyncDebug on (the
// benchmark reads them to tell the disk's stalls from sessiond's), as a warning from
// slowSyncWarn on. Every durable answer of the batch waited for it.
const (
	slowSyncDebug = 10 * time.Millisecond
	slowSyncWarn  = 100 * time.Millisecond
)

// syncTimed fsyncs the journal and logs the fsync if it was slow.
func (a *Actor) syncTimed() error {
	start := time.Now()
	err := a.journal.Sync()
	if took := time.Since(start); took >= slowSyncDebug {
		level := slog.LevelDebug
		if took >= slowSyncWarn {
			level = slog.LevelWarn
		}
		a.log.Log(context.Background(), level, "journal fsync was slow; durable writes waited for the disk",
			"took", took.Round(100*time.Microsecond), "journal_bytes", a.journal.Size())
	}
	return err
}

// syncJournal fsyncs durable:false writes within the sync interval.
func (a *Actor) syncJournal() {
	if a.durableRev >= a.appendedRev || a.journal.Broken() != nil {
		return
	}
	if err := a.syncTimed(); err != nil {
		a.journalErr = err
		a.log.Error("journal fsync failed; writing a new journal from memory", "err", err)
		a.replaceBrokenJournal()
		return
	}
	a.durableRev = a.appendedRev
	a.synced()
}

// synced drops the bytes of dedup records whose frames were just fsync'd: retries read
// them from the journal.
func (a *Actor) synced() {
	for _, seq := range a.unsynced {
		a.dedup.dropFrag(seq)
	}
	a.unsynced = a.unsynced[:0]
}

// replaceBrokenJournal writes a new journal from memory after a failure. The old file is
// never fsync'd again: after a failed fsync the kernel may have dropped the dirty pages
// and a second fsync can report success for data that is gone.
func (a *Actor) replaceBrokenJournal() {
	if err := a.rewriteJournal(); err != nil {
		a.journalErr = err
		a.log.Error("cannot write a new journal; writes fail until the disk recovers", "err", err, "retry_in", a.cfg.RetryInterval)
		a.armRetry()
		return
	}
	a.log.Info("journal replaced; writes are accepted again")
}

// journalPlan is what a new journal starts with: a checkpoint of the current state (the
// revisions of every key and the dedup records), the intents since the last snapshot,
// and the records after it. write encodes them a frame at a time and only reads values
// that are never modified in place, and outcomes from the old journal's file, so it may
// run on another goroutine.
type journalPlan struct {
	cp       *persist.Checkpoint // once written, its dedup records' refs are into the new journal
	dedupSeq uint64              // the seq of cp.Dedup[0]
	intents  []persist.SnapshotID
	tail     []persist.Record
}

// journalContents takes, on the actor goroutine, what a new journal written now must
// hold; its write may then run anywhere.
func (a *Actor) journalContents() *journalPlan {
	p := &journalPlan{dedupSeq: a.dedup.base, intents: slices.Clone(a.intentsOut), tail: a.tailRecords()}
	p.cp = &persist.Checkpoint{Rev: a.rev, Snapshot: a.base, Dedup: a.dedup.all()}
	if a.journal != nil {
		p.cp.Frags = a.journal.Reader()
	}
	p.cp.Revs = make([]persist.KeyRev, 0, a.st.len())
	a.st.each(cursor{}, func(e *entry) bool {
		p.cp.Revs = append(p.cp.Revs, persist.KeyRev{Key: e.key, Rev: e.rev})
		return true
	})
	return p
}

func (p *journalPlan) write(w io.Writer) error {
	if err := persist.WriteCheckpoint(w, p.cp); err != nil {
		return err
	}
	var b []byte
	for _, id := range p.intents {
		b = persist.AppendIntent(b, id)
	}
	for i := range p.tail {
		if _, err := w.Write(b); err != nil {
			return err
		}
		b = persist.AppendRecord(b[:0], &p.tail[i])
	}
	_, err := w.Write(b)
	return err
}

// placeDedup points the dedup records p's checkpoint holds at their bytes in the
// journal p was written to, before the actor switches to it.
func (a *Actor) placeDedup(p *journalPlan) {
	for i := range p.cp.Dedup {
		a.dedup.place(p.dedupSeq+uint64(i), p.cp.Dedup[i].Ref)
	}
}

// tailRecords returns the records a new journal holds after base, a few a key:
//   - its last deletion, if it was deleted;
//   - its current value at the revision of its first write after that deletion and
//     after each revision a replay may start from: where it was created, and so where it
//     sits in the file, whichever of those files the replay starts from;
//   - its current value again at its current revision, if that is later.
//
// A replay starts after base, after an intent since base, or after a snapshot still
// being written now, whose intent and done records will follow this journal's tail
// (over sessiond's own file, or another writer's that kept only what that snapshot had).
// From any of those, these records give every key the value, revision and place in the
// file that replaying every record would. Records of one revision (a txn) keep their
// order. Their values are entries' bytes, which are never modified in place.
func (a *Actor) tailRecords() []persist.Record {
	bounds := []int64{a.base.Rev}
	for _, id := range a.intentsOut {
		bounds = append(bounds, id.Rev)
	}
	if a.snapRunning {
		bounds = append(bounds, a.snapRev)
	}
	type span struct {
		deleted, last int   // positions in a.tail; -1: none
		first         []int // per bound: the first write after it and after deleted
	}
	spans := make(map[string]*span, len(a.tail))
	var keys []string
	for i, c := range a.tail {
		s := spans[c.key]
		if s == nil {
			s = &span{deleted: -1, first: slices.Repeat([]int{-1}, len(bounds))}
			spans[c.key] = s
			keys = append(keys, c.key)
		}
		for j, b := range bounds {
			switch {
			case c.deleted:
				s.first[j] = -1
			case s.first[j] < 0 && c.rev > b:
				s.first[j] = i
			}
		}
		if c.deleted {
			s.deleted = i
		}
		s.last = i
	}
	type posRecord struct {
		pos int
		rec persist.Record
	}
	var out []posRecord
	add := func(pos int, rev int64, key string, frag []byte) {
		out = append(out, posRecord{pos, persist.Record{Rev: rev, Ops: []persist.Op{{Key: key, Frag: frag}}}})
	}
	for _, k := range keys {
		s := spans[k]
		if s.deleted >= 0 {
			add(s.deleted, a.tail[s.deleted].rev, k, nil)
		}
		e := a.st.get(k)
		if e == nil {
			continue // its last change was the deletion
		}
		current := false
		for j, pos := range s.first {
			if pos < 0 || slices.Contains(s.first[:j], pos) {
				continue
			}
			add(pos, a.tail[pos].rev, k, e.frag)
			current = current || a.tail[pos].rev == e.rev
		}
		if !current {
			add(s.last, e.rev, k, e.frag)
		}
	}
	slices.SortFunc(out, func(x, y posRecord) int { return cmp.Or(cmp.Compare(x.rec.Rev, y.rec.Rev), cmp.Compare(x.pos, y.pos)) })
	recs := make([]persist.Record, len(out))
	for i := range out {
		recs[i] = out[i].rec
	}
	return recs
}

// rewriteJournal writes a new journal from memory at once and switches appends to it.
// It supersedes a compaction under way.
func (a *Actor) rewriteJournal() error {
	plan := a.journalContents()
	j, err := persist.CreateJournal(a.cfg.FS, a.journalPath, plan.write)
	if err != nil {
		return err
	}
	a.placeDedup(plan)
	a.switchJournal(j)
	return nil
}

// switchJournal makes j the journal appends go to. It holds everything in memory
// durably, and the dedup records' refs point into it already.
func (a *Actor) switchJournal(j *persist.Journal) {
	if a.journal != nil {
		a.journal.Close()
	}
	a.journal = j
	a.release(j.Retired()) // the file of the journal just closed
	a.compactBase = j.Size()
	a.appendedRev, a.durableRev = a.rev, a.rev
	a.compactGen++ // a compaction started before this is stale
	a.synced()
	// Everything in memory is durable in the new journal and nothing of a failed batch
	// is in it: the answers held for that are true now.
	a.journalErr = nil
	for _, h := range a.held {
		h.reply <- h.rep
	}
	a.held = nil
}

// backgroundNice is the nice value of the threads that write snapshots and new journals.
const backgroundNice = 10

// background lowers the CPU priority of the calling goroutine's thread to
// backgroundNice, for the rest of the goroutine, which must not unlock it: when the
// goroutine ends, its thread ends with it (an unprivileged process could not raise it
// back). A snapshot or a new journal copies tens of megabytes; at the same priority its
// thread takes a core from the actor and the connections for as long. Best effort: it
// leaves the main thread alone, which Go parks for good instead of ending it.
func background() {
	runtime.LockOSThread()
	if tid := unix.Gettid(); tid != unix.Getpid() {
		unix.Setpriority(unix.PRIO_PROCESS, tid, backgroundNice) //nolint:errcheck // best effort
		return
	}
	runtime.UnlockOSThread()
}

// release frees a replaced file's blocks in the background, a stretch at a time: all at
// once, they stall every fsync on the file system, the journal's too.
func (a *Actor) release(name string) {
	if name == "" {
		return
	}
	a.releasing.Add(1)
	quit := a.quit
	go func() {
		defer a.releasing.Done()
		if err := persist.ReleaseFile(a.cfg.FS, name, a.cfg.ReleaseDelay, quit); err != nil {
			a.log.Warn("freeing a replaced file", "file", name, "err", err)
		}
	}()
}

// finishReleases removes the replaced files still waiting to be freed, at once, and
// waits for that.
func (a *Actor) finishReleases() {
	close(a.quit)
	a.releasing.Wait()
	a.quit = make(chan struct{})
}

// retry runs the disk steps that failed earlier: a new journal, a snapshot.
func (a *Actor) retry() {
	if a.journalErr != nil || a.journal.Broken() != nil {
		a.replaceBrokenJournal()
	}
	if a.snapErr != nil && !a.snapRunning {
		a.startSnapshot()
	}
}

func (a *Actor) armRetry() {
	a.retryAlarm.arm(a.cfg.RetryInterval)
}

// compactJournal starts a new journal once the old one is large; otherwise it notes in the
// journal that snapshot id is on disk, so that a start which finds sessions.json changed
// by another writer knows which writes that writer's version already had.
func (a *Actor) compactJournal(id persist.SnapshotID) {
	if a.journalErr != nil || a.journal.Broken() != nil {
		return
	}
	// Compact once the journal is over CompactBytes and twice what the last compaction
	// left (the checkpoint alone can be large: rewriting it after every snapshot would
	// cost more than it saves), and once it is over twice the bytes of the dedup window's
	// outcomes, which the new journal must copy: until they expire (patches of large
	// entries with request_ids, the first minutes after a start) it would free next to
	// nothing.
	if size := a.journal.Size(); size <= a.cfg.CompactBytes || size <= 2*a.compactBase || size <= 2*a.dedup.bytes {
		if err := a.writeJournal(persist.AppendDone(nil, id), false); err != nil {
			a.log.Error("journal write failed; writing a new journal from memory", "err", err)
			a.replaceBrokenJournal()
		}
		return
	}
	if a.compacting {
		return
	}
	// The new journal is written on another goroutine from an immutable copy of what it
	// must hold, so writers do not wait for it, and no faster than a background
	// snapshot (SnapshotRate). Frames appended meanwhile are copied from the old
	// journal's file, most of them by that goroutine too (catchUp), the rest when it is
	// put in place. (Kept in memory, they were tens of megabytes when large entries were
	// patched during a long compaction.)
	a.compacting = true
	a.compactLimit = persist.NewThrottle(a.cfg.SnapshotRate)
	gen, plan, limit := a.compactGen, a.journalContents(), a.compactLimit
	old, oldFile := a.journal, a.journal.Reader() // the file: Close may clear the field meanwhile
	before, dedupEnd := a.journal.Size(), a.dedup.end()
	go func() {
		background()
		start := time.Now()
		next, err := persist.PrepareJournal(a.cfg.FS, a.journalPath, plan.write, limit)
		caughtUp := before
		if err == nil {
			if caughtUp, err = catchUp(next, old.Synced, oldFile, before, limit); err != nil {
				next.Abort()
				next = nil
			}
		}
		a.compactDone <- compactResult{gen: gen, next: next, err: err, before: before, caughtUp: caughtUp,
			start: start, plan: plan, dedupEnd: dedupEnd}
	}()
}

// catchUpSlack is how much of what the old journal took during a compaction may be
// left for the copy on the actor goroutine at its commit: ~0.5 ms of writes held up.
const catchUpSlack = 256 << 10

// catchUp copies to next what the old journal (file, whose fsyncs have covered it up to
// synced) took from offset `from` on, until less than catchUpSlack is left. The
// throttle's limit is lifted after a few rounds: writes faster than it would otherwise
// keep ahead for good. It returns how far it copied.
func catchUp(next *persist.NextJournal, synced func() int64, file io.ReaderAt, from int64, limit *persist.Throttle) (int64, error) {
	for round := 1; round <= 8; round++ {
		to := synced()
		if to-from < catchUpSlack {
			break
		}
		if round == 4 {
			limit.Hurry()
		}
		if err := next.CatchUp(file, from, to); err != nil {
			return from, err
		}
		from = to
	}
	return from, nil
}

type compactResult struct {
	gen      uint64
	next     *persist.NextJournal
	err      error
	before   int64 // the old journal's size when it began: the delta follows
	caughtUp int64 // next holds the delta up to here already
	start    time.Time
	plan     *journalPlan
	dedupEnd uint64 // dedup records from this seq on came later, in the delta
}

// awaitCompaction finishes a running compaction at full speed: a stop waits for it.
func (a *Actor) awaitCompaction() {
	if a.compacting {
		a.compactLimit.Hurry()
		a.finishCompaction(<-a.compactDone)
	}
}

// finishCompaction puts the new journal in place with the frames appended meanwhile.
func (a *Actor) finishCompaction(res compactResult) {
	a.compacting = false
	if res.err == nil && res.gen == a.compactGen {
		// The delta is copied from the old journal's file: its durable:false frames go
		// to the disk first, or a page lost to a write error would be copied as if it
		// were a frame. If that fsync fails, the journal is rewritten from memory and
		// this compaction is stale.
		a.syncJournal()
	}
	switch {
	case res.gen != a.compactGen || a.journal.Broken() != nil:
		// A rewrite after a failure replaced the journal meanwhile (and closed the
		// file the compaction read outcomes from).
		if res.next != nil {
			res.next.Abort()
		}
		return
	case errors.Is(res.err, persist.ErrCheckpointTooLarge):
		// It cannot succeed until outcomes expire: try again once the journal has
		// doubled, not after every snapshot.
		a.compactBase = a.journal.Size()
		a.log.Error("journal compaction is impossible: the dedup window's patch outcomes are over the journal's frame limit; the journal grows until they expire. Lower --dedup-window or --dedup-max, or leave request_id out of patches of large entries",
			"err", res.err, "journal_bytes", a.journal.Size(), "next_try_at_bytes", 2*a.compactBase)
		return
	case res.err != nil:
		a.log.Warn("journal compaction failed; will try after the next snapshot", "err", res.err)
		return
	}
	delta := a.journal.Size() - res.before
	j, err := res.next.Commit(io.NewSectionReader(a.journal.Reader(), res.caughtUp, a.journal.Size()-res.caughtUp))
	if err != nil {
		a.log.Warn("journal compaction failed; will try after the next snapshot", "err", err)
		if errors.Is(err, persist.ErrReplaced) {
			// The path names the new file now: the old one must not take appends. It
			// stays open: the new journal written from memory copies outcomes from it.
			a.journalErr = err
			a.journal.Retire(err)
			a.replaceBrokenJournal()
		}
		return
	}
	a.placeDedup(res.plan)
	a.dedup.shift(res.dedupEnd, j.Size()-delta-res.before)
	a.switchJournal(j)
	a.log.Info("journal compacted", "before", res.before, "after", j.Size(), "delta", delta,
		"delta_at_commit", res.before+delta-res.caughtUp, "took", time.Since(res.start).Round(time.Millisecond))
}

// flush answers once sessions.json holds every write acknowledged before it.
func (a *Actor) flush(r *request) {
	if a.base.Rev >= a.rev && a.stamp.Exists && !a.snapRunning {
		r.reply <- Reply{Result: flushResult(a.rev, a.base.Rev)}
		return
	}
	a.waiters = append(a.waiters, flushWaiter{rev: a.rev, reply: r.reply})
	a.hurrySnapshot()
	a.startSnapshot()
}

// hurrySnapshot is for when somebody waits for a snapshot of every write so far. A
// running one that holds fewer is abandoned, since the next one holds them all and would
// be written after it, unless an earlier flush waits for it: abandoned for every flush
// with a write before it, no snapshot would ever finish. Otherwise it goes at full speed.
func (a *Actor) hurrySnapshot() {
	if !a.snapRunning {
		return
	}
	if a.snapRev < a.rev && !slices.ContainsFunc(a.waiters, func(w flushWaiter) bool { return w.rev <= a.snapRev }) {
		a.snapLimit.Abort()
		return
	}
	a.snapLimit.Hurry()
}

func flushResult(rev, snap int64) []byte {
	return []byte(`{"rev":` + itoa(rev) + `,"snapshot_rev":` + itoa(snap) + `}`)
}

func (a *Actor) failWaiters(upTo int64, err error) {
	keep := a.waiters[:0]
	for _, w := range a.waiters {
		if w.rev <= upTo {
			w.reply <- Reply{Err: errorf(ReasonStorage, true, "flush failed: %v", err)}
		} else {
			keep = append(keep, w)
		}
	}
	a.waiters = keep
}

// armSnapshot schedules a background snapshot SnapshotInterval after a change.
func (a *Actor) armSnapshot() {
	if a.rev > a.base.Rev && !a.snapRunning && a.cfg.SnapshotInterval > 0 && a.snapErr == nil {
		a.snapAlarm.arm(a.cfg.SnapshotInterval)
	}
}

// startSnapshot hands an immutable view of the store (each entry's encoded bytes, which
// no write ever modifies in place) to a goroutine that writes sessions.json, so writers
// never wait for it.
func (a *Actor) startSnapshot() {
	if a.snapRunning {
		a.snapAgain = true
		return
	}
	a.snapRunning, a.snapAgain, a.snapRev = true, false, a.rev
	a.snapAlarm.stop()
	a.snapLimit = persist.NewThrottle(a.cfg.SnapshotRate)
	if len(a.waiters) > 0 {
		a.snapLimit.Hurry()
	}
	rev, frags, expect, limit := a.rev, a.st.frags(), a.stamp, a.snapLimit
	go a.writeSnapshot(rev, frags, expect, limit)
}

// writeSnapshot runs on its own goroutine; it talks to the actor only through the
// intents and snapDone channels.
func (a *Actor) writeSnapshot(rev int64, frags [][]byte, expect persist.Stamp, limit *persist.Throttle) {
	background()
	start := time.Now()
	var res snapResult
	var mine persist.Stamp
	res.id, mine, res.retired, res.err = persist.WriteSnapshot(a.cfg.FS, a.cfg.Store, rev, frags, limit, func(id persist.SnapshotID) error {
		cur, err := persist.StatStamp(a.cfg.FS, a.cfg.Store)
		if err != nil {
			return err
		}
		if cur.Exists && cur != expect {
			// Another process wrote sessions.json: keep its version rather than
			// overwrite it silently.
			if res.aside, err = persist.KeepAside(a.cfg.FS, a.cfg.Store, time.Now()); err != nil {
				return err
			}
		}
		reply := make(chan error, 1)
		a.intents <- intentReq{id: id, reply: reply}
		return <-reply
	})
	cur, err := persist.StatStamp(a.cfg.FS, a.cfg.Store)
	switch {
	case res.err == nil && err != nil:
		res.err = err
	case err == nil && cur.Exists && cur.Ino == mine.Ino:
		// Ours is in place, even if a later step failed: the next snapshot must not
		// take it for another writer's.
		res.stamp = cur
	}
	res.took = time.Since(start)
	a.snapDone <- res
}

// makeIntentDurable records, before the snapshot's rename, that sessions.json may
// become the file id names.
func (a *Actor) makeIntentDurable(id persist.SnapshotID) error {
	a.intentsOut = append(a.intentsOut, id)
	if a.journal.Broken() != nil {
		if err := a.rewriteJournal(); err != nil {
			a.journalErr = err
			return err
		}
		return nil
	}
	if err := a.writeJournal(persist.AppendIntent(nil, id), true); err != nil {
		a.replaceBrokenJournal()
		return err
	}
	a.durableRev = a.appendedRev
	a.synced()
	return nil
}

func (a *Actor) finishSnapshot(res snapResult) {
	a.snapRunning = false
	a.release(res.retired)
	if res.aside != "" {
		a.stats.external.Add(1)
		a.log.Error("sessions.json was changed by another writer; kept that version beside it and wrote ours",
			"kept", res.aside, "store", a.cfg.Store)
	}
	if res.stamp.Exists {
		a.stamp = res.stamp
	}
	if errors.Is(res.err, persist.ErrAborted) {
		a.log.Debug("snapshot abandoned for a newer one", "rev", res.id.Rev)
		a.nextSnapshot()
		return
	}
	if res.err != nil {
		a.snapErr = res.err
		a.publish()
		a.log.Error("snapshot failed; the journal still holds every write", "err", res.err, "retry_in", a.cfg.RetryInterval)
		a.failWaiters(res.id.Rev, res.err)
		a.armRetry()
		return
	}
	if a.snapErr != nil {
		a.log.Info("snapshot written again after a failure")
	}
	a.snapErr = nil
	a.base, a.intentsOut = res.id, nil
	keep := 0
	for keep < len(a.tail) && a.tail[keep].rev <= res.id.Rev {
		keep++
	}
	a.tail = append([]tailChange(nil), a.tail[keep:]...)
	// Every second under steady writes: at info only when slow enough to matter.
	level := slog.LevelDebug
	if res.took > 100*time.Millisecond {
		level = slog.LevelInfo
	}
	a.log.Log(context.Background(), level, "snapshot written", "rev", res.id.Rev, "bytes", res.id.Size, "took", res.took)
	a.compactJournal(res.id)
	a.publish()
	done := a.waiters[:0]
	for _, w := range a.waiters {
		if w.rev <= res.id.Rev {
			w.reply <- Reply{Result: flushResult(w.rev, res.id.Rev)}
		} else {
			done = append(done, w)
		}
	}
	a.waiters = done
	a.nextSnapshot()
}

// nextSnapshot starts the snapshot that was asked for while one ran (or that a flush
// still waits for), or else arms the timer for the next change.
func (a *Actor) nextSnapshot() {
	if a.snapAgain || len(a.waiters) > 0 {
		a.startSnapshot()
		return
	}
	a.armSnapshot()
}
