// Package persist owns sessiond's files on disk and their crash-safety: sessions.json (the
// snapshot, byte-compatible with JavaScript's JSON.stringify(store, null, 2)), the journal
// beside it (checksummed records that make each acknowledged write durable), and the
// ownership lock that ties a store to one live process.
//
// Concurrency: persist starts no goroutines. A Journal is used by one goroutine at a time
// (the actor's); the snapshot writer runs on another goroutine but only reads the frames it
// is handed. Everything here goes through FS, the file system seam, so tests can inject
// faults at each step.
//
// What it does not do: decide when to snapshot or compact, or hold the store in memory;
// that is package actor.
package persist
