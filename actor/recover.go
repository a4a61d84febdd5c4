package actor

import (
	"bytes"
	"fmt"
	"runtime"
	"time"

	"sessiond/persist"
)

// maxStoreDepth bounds the nesting a sessions.json may have. Requests are limited far
// lower (--max-depth), so only a file written by something else can come near it; the
// bound keeps a hostile file from exhausting the parser's stack.
const maxStoreDepth = 10000

// checkFrag verifies a journal post-image before it is served: the checksum only proves
// the bytes are what was written, not that what was written is an entry.
func checkFrag(op persist.Op) error {
	if op.Frag == nil {
		return nil
	}
	prefix := "  " + persist.Quote(op.Key) + ": "
	if !bytes.HasPrefix(op.Frag, []byte(prefix)) {
		return fmt.Errorf("%w: entry of %q does not start with its key", persist.ErrCorrupt, op.Key)
	}
	if _, err := persist.Parse(persist.EntryValue(op.Frag), maxStoreDepth); err != nil {
		return fmt.Errorf("%w: entry of %q: %v", persist.ErrCorrupt, op.Key, err)
	}
	return nil
}

// recover rebuilds the store at start: sessions.json as the base, the journal's
// checkpoint and records on top, then writes a fresh journal (which also drops a torn
// tail and gives the new process a descriptor no earlier failure has touched).
func (a *Actor) recover() error {
	var err error
	start := time.Now()
	fsys, path := a.cfg.FS, a.cfg.Store
	if !a.dryRun {
		removed, err := persist.RemoveTemps(fsys, path, a.journalPath)
		if err != nil {
			return err
		}
		if len(removed) > 0 {
			a.log.Warn("removed temp files left by a crash", "files", removed)
		}
	}
	entries, fileID, err := persist.ReadStore(fsys, path, maxStoreDepth)
	if err != nil {
		return err
	}
	replay, err := persist.ReadJournal(fsys, a.journalPath)
	if err != nil {
		return err
	}
	if replay.TornAt >= 0 {
		a.log.Warn("journal ends in an incomplete record, left by a crash during a write; it was never acknowledged and is cut off",
			"journal", a.journalPath, "offset", replay.TornAt, "reason", replay.TornReason)
	}

	// Revisions of every key and the dedup records, from the checkpoint and all records.
	revs := make(map[string]int64)
	cp := replay.Checkpoint
	baseRev, matched := int64(0), false
	if cp != nil {
		a.rev = cp.Rev
		for _, kr := range cp.Revs {
			revs[kr.Key] = kr.Rev
		}
		for i := range cp.Dedup {
			a.dedup.add(&cp.Dedup[i])
		}
		// The file on disk is the checkpoint's snapshot or one whose intent followed;
		// the newest match wins.
		cands := append([]persist.SnapshotID{cp.Snapshot}, replay.Intents...)
		for i := len(cands) - 1; i >= 0; i-- {
			if cands[i].Size == fileID.Size && cands[i].CRC == fileID.CRC {
				baseRev, matched = cands[i].Rev, true
				break
			}
		}
	}
	for _, rec := range replay.Records {
		a.rev = max(a.rev, rec.Rev)
		for _, op := range rec.Ops {
			if err := checkFrag(op); err != nil {
				return fmt.Errorf("journal %s: record of rev %d: %w", a.journalPath, rec.Rev, err)
			}
			if op.Frag == nil {
				delete(revs, op.Key)
			} else {
				revs[op.Key] = rec.Rev
			}
		}
		for i := range rec.Dedup {
			a.dedup.add(&rec.Dedup[i])
		}
	}
	external := cp != nil && !matched
	if external {
		// Another writer changed (or removed) sessions.json while sessiond was down.
		// Keep its version, take it as the base, and put every acknowledged write
		// since our last snapshot back on top of it.
		// The newest snapshot known to have reached the disk is what that writer
		// started from at best; every write after it is applied again.
		baseRev = cp.Snapshot.Rev
		for _, id := range replay.Done {
			baseRev = max(baseRev, id.Rev)
		}
		if fileID.Size < 0 {
			// sessiond never leaves the path empty; someone removed the file. Starting
			// from nothing would drop every entry written before the journal's last
			// snapshot, so a person has to decide.
			return fmt.Errorf("store %s is missing, but its journal %s describes a store sessiond wrote (rev %d); restore the file, or remove the journal as well to start empty",
				path, a.journalPath, cp.Rev)
		}
		aside := ""
		if !a.dryRun {
			if aside, err = persist.KeepAside(fsys, path, a.cfg.Now()); err != nil {
				return err
			}
		}
		a.stats.external.Add(1)
		a.log.Error("sessions.json is not what sessiond last wrote: another writer changed it; kept a copy and applied the journal on top",
			"store", path, "copy", aside)
	}

	for _, e := range entries {
		rev := revs[e.Key]
		if external {
			rev = 0 // the other writer may have changed it: it gets a new revision below
		}
		a.st.set(e.Key, e.Frag, rev)
	}
	for _, rec := range replay.Records {
		if rec.Rev <= baseRev {
			continue
		}
		for _, op := range rec.Ops {
			if op.Frag == nil {
				a.st.del(op.Key)
			} else {
				a.st.set(op.Key, op.Frag, rec.Rev)
			}
		}
		for _, op := range rec.Ops {
			a.tail = append(a.tail, tailChange{rec.Rev, op.Key, op.Frag == nil})
		}
	}
	// Entries with no known revision (a store opened for the first time, or one changed
	// by another writer) share one new revision.
	imported := 0
	a.st.each(cursor{}, func(e *entry) bool {
		if e.rev == 0 {
			if imported == 0 {
				a.rev++
			}
			e.rev = a.rev
			imported++
		}
		return true
	})
	a.st.commit()
	a.dedup.evict(a.cfg.Now().UnixMilli(), a.cfg.DedupWindow.Milliseconds(), a.cfg.DedupMax)
	// A journal that matches the file is kept and appended to: rewriting it would put
	// the whole dedup window (which can be hundreds of megabytes) on the path of every
	// start and restart. A new one is written when there is none, or when the state
	// came from elsewhere (an import, another writer's file).
	keepJournal := cp != nil && matched && imported == 0
	hasCheckpoint, journalSize := cp != nil, replay.Size
	replay, cp = nil, nil // their records point into the journal's buffer
	if !a.dryRun {
		if keepJournal {
			a.dedup.dropFrags() // a retry reads its outcome from the file
		}
		a.st.ownFrags()
		// The file buffers are garbage now (the journal's unless dedup records still
		// point into it, until a new journal is written), but the collector's goal was
		// set while they and the copies were both alive. Collecting now lowers what the
		// heap may grow to before the next collection.
		runtime.GC()
	}

	a.base = persist.SnapshotID{Rev: baseRev, Size: fileID.Size, CRC: fileID.CRC}
	if !hasCheckpoint {
		a.base.Rev = a.rev
	}
	if a.dryRun {
		return nil
	}
	if external {
		// sessions.json now has to become our state; write it before the journal that
		// names it as the base.
		id, _, retired, err := persist.WriteSnapshot(fsys, path, a.rev, a.st.frags(), nil, func(persist.SnapshotID) error { return nil })
		if err != nil {
			return err
		}
		if retired != "" {
			fsys.Remove(retired) //nolint:errcheck // at start nothing waits on the disk yet; a leftover goes at the next start
		}
		a.base, a.tail = id, nil
	}
	if a.stamp, err = persist.StatStamp(fsys, path); err != nil {
		return err
	}
	if keepJournal {
		j, err := persist.OpenJournal(fsys, a.journalPath, journalSize)
		if err != nil {
			return err
		}
		a.switchJournal(j)
	} else if err := a.rewriteJournal(); err != nil {
		return err
	}
	a.log.Info("store loaded", "store", path, "entries", a.st.len(), "bytes", a.st.fileSize(), "rev", a.rev,
		"replayed", len(a.tail), "imported", imported, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// Check loads the store as Open would, without writing anything or taking it over: the
// preflight a running daemon asks of a new binary before it re-execs into it. Blocks.
func Check(cfg Config) (Stats, error) {
	cfg.setDefaults()
	a := &Actor{cfg: cfg, log: cfg.Logger.With("component", "actor"), journalPath: cfg.Store + ".journal",
		st: newStore(), dedup: newDedupTable(), dryRun: true}
	if err := a.recover(); err != nil {
		return Stats{}, err
	}
	a.publish()
	return a.Stats(), nil
}
