package persist

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stamp identifies the file at a path as the kernel sees it (or its absence), to notice
// a rewrite by another process between two snapshots.
type Stamp struct {
	Exists bool
	Ino    uint64
	Size   int64
	MTime  int64 // ns
}

// StatStamp returns the stamp of the file at path.
func StatStamp(fsys FS, path string) (Stamp, error) {
	fi, err := fsys.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Stamp{}, nil
	}
	if err != nil {
		return Stamp{}, fmt.Errorf("stat %s: %w", path, err)
	}
	s := Stamp{Exists: true, Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.Ino = st.Ino
	}
	return s, nil
}

// ReadStore reads sessions.json. A missing file is an empty store with Size -1. A file
// that is not a JSON object is an error naming the file, the byte offset and the reason;
// the file is left as it is.
func ReadStore(fsys FS, path string, maxDepth int) ([]Entry, SnapshotID, error) {
	data, err := fsys.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, SnapshotID{Size: -1}, nil
	}
	if err != nil {
		return nil, SnapshotID{}, fmt.Errorf("read store %s: %w", path, err)
	}
	id := SnapshotID{Size: int64(len(data)), CRC: crc32.Checksum(data, crcTable)}
	entries, err := ParseStore(data, maxDepth)
	if err != nil {
		return nil, id, fmt.Errorf("store %s is not a valid session index (left as it is; repair it or move it away): %w", path, err)
	}
	return entries, id, nil
}

// WriteSnapshot writes the store made of frags (in order) to a temp file beside path and
// fsyncs it, calls commit with the new file's id, and only if commit succeeds renames it
// over path and fsyncs the directory. commit is where the caller makes the intent durable
// and moves aside a file another writer left; an error from it leaves path untouched.
func WriteSnapshot(fsys FS, path string, rev int64, frags [][]byte, commit func(SnapshotID) error) (SnapshotID, error) {
	id := SnapshotID{Rev: rev}
	err := replaceFile(fsys, path, func(p Pending) error {
		h := &crcWriter{w: p}
		w := bufio.NewWriterSize(h, 1<<20)
		if len(frags) == 0 {
			w.WriteString("{}")
		} else {
			w.WriteString("{\n")
			for i, f := range frags {
				if i > 0 {
					w.WriteString(",\n")
				}
				w.Write(f)
			}
			w.WriteString("\n}")
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if err := p.Sync(); err != nil {
			return err
		}
		id.Size, id.CRC = h.n, h.crc
		return commit(id)
	})
	if err != nil {
		return id, fmt.Errorf("write snapshot %s: %w", path, err)
	}
	return id, nil
}

type crcWriter struct {
	w   Pending
	n   int64
	crc uint32
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, crcTable, p[:n])
	c.n += int64(n)
	return n, err
}

// MoveAside renames the file at path to a distinct name beside it
// (path.external-<UTC time>) and returns that name.
func MoveAside(fsys FS, path string, now time.Time) (string, error) {
	aside := path + ".external-" + now.UTC().Format("20060102T150405.000Z")
	if err := fsys.Rename(path, aside); err != nil {
		return "", fmt.Errorf("move %s aside: %w", path, err)
	}
	return aside, fsys.SyncDir(dirOf(path))
}

// CopyAside writes a copy of data beside path (path.external-<UTC time>) and returns its
// name; used at start, when the file must also stay where it is.
func CopyAside(fsys FS, path string, data []byte, now time.Time) (string, error) {
	aside := path + ".external-" + now.UTC().Format("20060102T150405.000Z")
	if err := replaceFile(fsys, aside, func(p Pending) error {
		_, err := p.Write(data)
		return err
	}); err != nil {
		return "", fmt.Errorf("copy %s aside: %w", path, err)
	}
	return aside, nil
}

// RemoveTemps removes temp files that a crash left behind for any of the given paths:
// renameio names them "." + base name + random digits in the same directory. It returns
// the names removed.
func RemoveTemps(fsys FS, paths ...string) ([]string, error) {
	dir := dirOf(paths[0])
	ents, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var removed []string
	for _, e := range ents {
		for _, p := range paths {
			rest, ok := strings.CutPrefix(e.Name(), "."+filepath.Base(p))
			if !ok || rest == "" {
				continue
			}
			if _, err := strconv.ParseUint(rest, 10, 64); err != nil {
				continue
			}
			name := filepath.Join(dir, e.Name())
			if err := fsys.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return removed, fmt.Errorf("remove leftover %s: %w", name, err)
			}
			removed = append(removed, name)
		}
	}
	return removed, nil
}

func dirOf(path string) string { return filepath.Dir(path) }
