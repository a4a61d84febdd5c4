package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"sessiond/ipc"
)

// mountTmpfs mounts a tmpfs of size at a new dir, or skips when the test may not mount.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipUnlessRequired(t, "needs root to mount a tmpfs")
	}
	mnt := filepath.Join(newDir(t), "m")
	require.NoError(t, os.Mkdir(mnt, 0o700))
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		skipUnlessRequired(t, fmt.Sprintf("cannot mount a tmpfs here (%v); this failing-disk case needs one", err))
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt
}

// A disk filled to the brim while clients write: every write is either acknowledged (and
// then survives) or refused with storage_error and executed:false; status says why; once
// space is freed sessiond recovers by itself.
func TestDiskFull(t *testing.T) {
	mnt := mountTmpfs(t, "1m")
	d := startDaemon(t, mnt, "--snapshot-interval", "20ms")
	c := d.client(ipc.WithMaxAttempts(1))
	ctx := ctxTimeout(t, 2*time.Minute)
	pad := strings.Repeat("p", 2000)
	acked := map[string]bool{}
	refused := 0
	for i := 0; i < 2000 && refused < 20; i++ {
		key := fmt.Sprintf("k%04d", i)
		_, err := c.Put(ctx, key, map[string]any{"pad": pad, "i": i})
		var werr *ipc.Error
		switch {
		case err == nil:
			acked[key] = true
		case errors.As(err, &werr):
			require.Equal(t, "storage_error", werr.Reason, werr.Message)
			require.False(t, werr.Executed)
			require.True(t, werr.Retryable)
			refused++
		default:
			require.NoError(t, err)
		}
	}
	require.Positive(t, refused, "the disk never filled")
	st, err := c.Status(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, st.Degraded)
	t.Logf("%d acknowledged, then %d refused: %s", len(acked), refused, st.Degraded)

	// Nothing refused was applied: every refused key is absent, and reads carry on.
	for i := range len(acked) + refused {
		key := fmt.Sprintf("k%04d", i)
		_, err := c.Get(ctx, key)
		if acked[key] {
			require.NoError(t, err, key)
		} else {
			require.Equal(t, "not_found", ipc.ReasonOf(err), key)
		}
	}

	// The fault clears (the tmpfs grows): sessiond recovers by itself.
	out, err := exec.Command("mount", "-o", "remount,size=16m", mnt).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Eventually(t, func() bool {
		_, err := c.Put(ctx, "after", map[string]any{"ok": true})
		return err == nil
	}, 30*time.Second, 20*time.Millisecond, "sessiond did not recover once space was freed")
	require.Eventually(t, func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Degraded == ""
	}, 30*time.Second, 20*time.Millisecond)
	acked["after"] = true
	d.stop()

	// Everything acknowledged survives a restart.
	d = startDaemon(t, mnt)
	c = d.client()
	for i := range len(acked) + refused {
		key := fmt.Sprintf("k%04d", i)
		_, err := c.Get(ctx, key)
		if acked[key] {
			require.NoError(t, err, key)
		} else {
			require.Equal(t, "not_found", ipc.ReasonOf(err), "refused %s reappeared", key)
		}
	}
	d.stop()
}

// On a read-only file system sessiond refuses to start and says why. (A read-only
// remount under a running daemon is refused by the kernel while the journal is open for
// writing, so that case cannot arise from a remount.)
func TestReadOnlyDisk(t *testing.T) {
	mnt := mountTmpfs(t, "1m")
	d := startDaemon(t, mnt)
	_, err := d.client().Put(ctxTimeout(t, time.Minute), "a", map[string]any{})
	require.NoError(t, err)
	d.stop()
	before, err := os.ReadFile(filepath.Join(mnt, "sessions.json"))
	require.NoError(t, err)
	out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput()
	require.NoError(t, err, string(out))

	d = launch(t, mnt)
	require.Error(t, d.wait())
	require.Contains(t, d.stderr.String(), "read-only file system")
	after, err := os.ReadFile(filepath.Join(mnt, "sessions.json"))
	require.NoError(t, err)
	require.Equal(t, before, after)
}
