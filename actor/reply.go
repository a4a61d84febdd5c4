package actor

import (
	"fmt"
)

// Reasons are the stable error strings of the wire contract (error.data.reason).
// ipc maps each onto its JSON-RPC code.
const (
	ReasonInvalidParams   = "invalid_params"
	ReasonRequestIDReused = "request_id_reused"
	ReasonMethodNotFound  = "method_not_found"
	ReasonNotFound        = "not_found"
	ReasonConflict        = "conflict"
	ReasonBusy            = "busy"
	ReasonShuttingDown    = "shutting_down"
	ReasonTooLarge        = "too_large"
	ReasonStorage         = "storage_error"
	ReasonDeadline        = "deadline_exceeded"
	ReasonInternal        = "internal_error"
)

// Error is a request that failed. An Error the actor returns means the request had no
// effect (executed: false on the wire) and never will, unless Executed says otherwise.
type Error struct {
	Reason    string // one of the Reason constants
	Message   string // for humans
	Retryable bool   // the same request may succeed later
	// Executed: the request did take effect, but its result cannot be given (a
	// request_id's stored outcome that can no longer be read).
	Executed bool
	Data     map[string]any // extra error.data fields: current_rev, index, retry_after_ms, limit
}

func (e *Error) Error() string { return e.Reason + ": " + e.Message }

// Reply is the outcome of one request: exactly one of Result and Err is set.
type Reply struct {
	Result []byte // the JSON-RPC "result": compact JSON on one line
	Err    *Error
}

func errorf(reason string, retryable bool, format string, args ...any) *Error {
	return &Error{Reason: reason, Message: fmt.Sprintf(format, args...), Retryable: retryable}
}

func invalidParams(format string, args ...any) *Error {
	return errorf(ReasonInvalidParams, false, format, args...)
}

// retryable reports whether a reason is retryable by the contract's table.
func retryable(reason string) bool {
	switch reason {
	case ReasonBusy, ReasonShuttingDown, ReasonStorage, ReasonDeadline:
		return true
	}
	return false
}

// Stats is the store's part of the status method's result.
type Stats struct {
	Rev         int64  // highest revision issued
	DurableRev  int64  // highest revision on stable storage
	SnapshotRev int64  // highest revision reflected in sessions.json on disk
	Entries     int    // keys in the store
	Bytes       int64  // size of sessions.json for the current state
	Queue       int    // requests waiting in the mailbox
	DedupWindow int64  // age in ms of the oldest request_id record held
	Store       string // path of sessions.json
	Degraded    string // why writes are failing now; empty when healthy
	External    int    // times sessions.json was found changed by another writer
}
