package actor

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"sessiond/persist"
)

// faultFS is the real file system with a fault switch: fail decides, for each step (op)
// on a path, whether it returns an error.
type faultFS struct {
	persist.OS
	mu    sync.Mutex
	fail  func(op, path string) error
	syncs atomic.Int64 // journal fsyncs that succeeded
}

func (f *faultFS) check(op, path string) error {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail == nil {
		return nil
	}
	return fail(op, path)
}

func (f *faultFS) setFail(fn func(op, path string) error) {
	f.mu.Lock()
	f.fail = fn
	f.mu.Unlock()
}

func (f *faultFS) Rename(o, n string) error {
	if err := f.check("rename", n); err != nil {
		return err
	}
	return f.OS.Rename(o, n)
}

func (f *faultFS) SyncDir(dir string) error {
	if err := f.check("syncdir", dir); err != nil {
		return err
	}
	return f.OS.SyncDir(dir)
}

func (f *faultFS) TruncateSync(path string, size int64) error {
	if err := f.check("truncate", path); err != nil {
		return err
	}
	return f.OS.TruncateSync(path, size)
}

func (f *faultFS) OpenAppend(path string) (persist.File, error) {
	if err := f.check("open", path); err != nil {
		return nil, err
	}
	file, err := f.OS.OpenAppend(path)
	if err != nil {
		return nil, err
	}
	return &faultFile{fs: f, path: path, f: file}, nil
}

func (f *faultFS) NewPending(path string) (persist.Pending, error) {
	if err := f.check("create", path); err != nil {
		return nil, err
	}
	p, err := f.OS.NewPending(path)
	if err != nil {
		return nil, err
	}
	return &faultPending{fs: f, path: path, Pending: p}, nil
}

type faultFile struct {
	fs   *faultFS
	path string
	f    persist.File
}

func (w *faultFile) Write(p []byte) (int, error) {
	if err := w.fs.check("write", w.path); err != nil {
		// A failing disk may take part of the write: that is the torn tail case.
		n, _ := w.f.Write(p[:len(p)/2])
		return n, err
	}
	return w.f.Write(p)
}

func (w *faultFile) Sync() error {
	if err := w.fs.check("sync", w.path); err != nil {
		return err
	}
	if strings.HasSuffix(w.path, ".journal") {
		w.fs.syncs.Add(1)
	}
	return w.f.Sync()
}

func (w *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := w.fs.check("read", w.path); err != nil {
		return 0, err
	}
	return w.f.ReadAt(p, off)
}

func (w *faultFile) Close() error { return w.f.Close() }

type faultPending struct {
	fs   *faultFS
	path string
	persist.Pending
}

func (p *faultPending) Write(b []byte) (int, error) {
	if err := p.fs.check("write", p.path); err != nil {
		return 0, err
	}
	return p.Pending.Write(b)
}

func (p *faultPending) Sync() error {
	if err := p.fs.check("sync", p.path); err != nil {
		return err
	}
	return p.Pending.Sync()
}

func (p *faultPending) CloseAtomicallyReplace() error {
	if err := p.fs.check("rename", p.path); err != nil {
		return err
	}
	return p.Pending.CloseAtomicallyReplace()
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

var _ io.Writer = (*faultFile)(nil)

func storePath(dir string) string { return filepath.Join(dir, "sessions.json") }
