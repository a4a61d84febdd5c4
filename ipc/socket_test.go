package ipc

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestListenMode0600(t *testing.T) {
	path := tempSocket(t)
	ln, err := Listen(path)
	require.NoError(t, err)
	defer ln.Close()
	fi, err := os.Lstat(path)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket, fi.Mode().Type())
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := tempSocket(t)
	ln, err := Listen(path)
	require.NoError(t, err)
	defer ln.Close()

	_, err = Listen(path)
	require.ErrorIs(t, err, ErrSocketInUse)
	require.ErrorContains(t, err, path)

	// The live socket is untouched.
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := tempSocket(t)
	old, err := Listen(path)
	require.NoError(t, err)
	old.SetUnlinkOnClose(false) // as if the process had crashed
	require.NoError(t, old.Close())
	_, err = os.Lstat(path)
	require.NoError(t, err, "the stale socket file is still there")

	ln, err := Listen(path)
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := tempSocket(t)
	require.NoError(t, os.WriteFile(path, []byte("data"), 0o600))
	_, err := Listen(path)
	require.ErrorIs(t, err, ErrNotSocket)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "data", string(data), "the file is left alone")
}

func TestListenDirectoryRule(t *testing.T) {
	cases := []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"private", 0o700, true},
		{"readable by all", 0o755, true},
		{"group writable", 0o770, false},
		{"world writable", 0o777, false},
		{"world writable, sticky, ours", 0o777 | os.ModeSticky, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Dir(tempSocket(t))
			require.NoError(t, os.Chmod(dir, tc.mode))
			ln, err := Listen(filepath.Join(dir, "s.sock"))
			if !tc.ok {
				require.ErrorIs(t, err, ErrUnsafeDir)
				require.ErrorContains(t, err, dir)
				return
			}
			require.NoError(t, err)
			require.NoError(t, ln.Close())
		})
	}
}

func TestListenMissingDirectory(t *testing.T) {
	dir := filepath.Dir(tempSocket(t))
	_, err := Listen(filepath.Join(dir, "missing", "s.sock"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
