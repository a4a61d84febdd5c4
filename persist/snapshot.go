package persist

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
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
	return stampOf(fi), nil
}

func stampOf(fi os.FileInfo) Stamp {
	s := Stamp{Exists: true, Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.Ino = st.Ino
	}
	return s
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
//
// mine is the identity of the file written (its inode, size and time), taken before the
// rename: after an error the caller can tell from it whether the rename happened anyway.
// retired is the temp name the replaced file has now, if any, for ReleaseFile. A
// throttle, if not nil, bounds how fast the file is written (a background snapshot).
func WriteSnapshot(fsys FS, path string, rev int64, frags [][]byte, throttle *Throttle, commit func(SnapshotID) error) (id SnapshotID, mine Stamp, retired string, err error) {
	id = SnapshotID{Rev: rev}
	retired, err = replaceFile(fsys, path, func(p Pending) error {
		h := &crcWriter{w: paced(p, throttle)}
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
		if fi, err := p.Stat(); err == nil {
			mine = stampOf(fi)
		}
		return commit(id)
	})
	if err != nil {
		return id, mine, "", fmt.Errorf("write snapshot %s: %w", path, err)
	}
	return id, mine, retired, nil
}

type crcWriter struct {
	w   io.Writer
	n   int64
	crc uint32
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, crcTable, p[:n])
	c.n += int64(n)
	return n, err
}

// KeepAside keeps a copy of the file now at path under a distinct name beside it
// (path.external-<UTC time>, with a counter if that is taken) and returns the name. It
// copies rather than renames, so the path never stands empty for a reader, and rather
// than hard-links, so a writer still holding the file open cannot change the copy.
func KeepAside(fsys FS, path string, now time.Time) (string, error) {
	data, err := fsys.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("keep %s aside: %w", path, err)
	}
	base := path + ".external-" + now.UTC().Format("20060102T150405.000Z")
	aside := base
	for i := 1; ; i++ {
		if _, err := fsys.Stat(aside); errors.Is(err, fs.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s.%d", base, i)
	}
	if _, err := replaceFile(fsys, aside, func(p Pending) error { // aside is a new name: it retires nothing
		_, err := p.Write(data)
		return err
	}); err != nil {
		return "", fmt.Errorf("keep %s aside: %w", path, err)
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
