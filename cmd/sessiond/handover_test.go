package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHandoverRoundTrip(t *testing.T) {
	h := handover{listenFD: 7, lockFD: 9, generation: 12, started: time.Unix(0, 1700000000123456789),
		signaled: time.Unix(0, 1700000001000000000), stop: true}
	t.Setenv(handoverEnv, h.encode())
	got, err := takeHandover()
	require.NoError(t, err)
	require.Equal(t, h.listenFD, got.listenFD)
	require.Equal(t, h.lockFD, got.lockFD)
	require.Equal(t, h.generation, got.generation)
	require.True(t, h.started.Equal(got.started))
	require.True(t, h.signaled.Equal(got.signaled))
	require.True(t, got.stop)
	again, err := takeHandover()
	require.NoError(t, err)
	require.Nil(t, again, "read once, then gone from the environment")
}

func TestHandoverRejectsBadValues(t *testing.T) {
	for _, v := range []string{"", "listen=x", "listen=1,lock=9,generation=1", "listen=5,lock=9", "stop=maybe"} {
		t.Setenv(handoverEnv, v)
		_, err := takeHandover()
		require.Error(t, err, v)
	}
}

func TestEnvWithout(t *testing.T) {
	env := []string{"A=1", handoverEnv + "=old", "B=2", handoverEnv + "=older", handoverEnv + "X=keep"}
	require.Equal(t, []string{"A=1", "B=2", handoverEnv + "X=keep"}, envWithout(env, handoverEnv))
}
