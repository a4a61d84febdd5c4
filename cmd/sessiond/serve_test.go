package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"sessiond/actor"
)

// --snapshot-rate is in MB/s, 0 lifts the limit, and a negative rate is a usage error.
func TestParseServeSnapshotRate(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want float64
	}{
		{nil, actor.DefaultSnapshotRate},
		{[]string{"--snapshot-rate", "250"}, 250e6},
		{[]string{"--snapshot-rate", "0"}, -1},
	} {
		c, err := parseServe(tc.args, io.Discard)
		require.NoError(t, err)
		require.Equal(t, tc.want, c.actor.SnapshotRate, "%q", tc.args)
	}
	_, err := parseServe([]string{"--snapshot-rate", "-5"}, io.Discard)
	require.ErrorIs(t, err, errUsage)
}
