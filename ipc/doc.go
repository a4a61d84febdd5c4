// Package ipc owns sessiond's wire protocol (shared/PROTOCOL.md): the socket server, the Go
// client, the table that maps error reasons onto JSON-RPC codes, and the socket file itself.
//
// # Server
//
// A Server speaks JSON-RPC 2.0, one message per line, on a Unix stream socket. Each
// connection has a reader goroutine and a writer goroutine joined by a FIFO of owed answers:
// the reader parses a line, hands the request to the Backend (which answers on a channel),
// and queues that channel; the writer waits on the head of the queue, so answers leave in
// the order the lines were read even when the store finishes them out of order. A request
// read with nothing behind it goes to Backend.SubmitOrRun, which may run it right there,
// and when its answer is ready and nothing before it is owed the reader writes it too: a
// client that waits for each answer costs no goroutine hand-off. The reader
// stops reading while MaxPending answers are owed, so a fast client is slowed down rather
// than buffered without bound; a client that stops reading its answers is disconnected
// after WriteTimeout. The server never touches the store: everything except the status
// method goes through the Backend.
//
// Shutdown is built for a re-exec: it stops accepting without closing the listener (queued
// connections wait in the kernel backlog for the successor), tells every client to go away,
// answers every request already read, and refuses later ones with shutting_down, which
// means "not executed, retry elsewhere". Every answer the server sends thus keeps the
// contract's invariant: a success means the effect happened, an error means it did not.
//
// # Socket file
//
// Listen refuses to create the socket in a directory that others can write to (group or
// world write bit), because anyone who can write there can replace the socket with their
// own and receive the clients' requests. A sticky directory (like /tmp) is accepted when
// it is owned by the daemon's uid or by root, since then nobody else can remove or rename
// the socket once it exists. It never removes a socket that a live process listens on.
//
// # Concurrency
//
// Server and Client are goroutine-safe. The server checks SO_PEERCRED on every connection:
// only root, the daemon's own uid and the configured uids/gids may talk to it, whatever the
// file mode says.
//
// Not here: parsing and validating params (package actor), durability (package persist).
package ipc
