// Command sessiond is the single writer of a JSON session index (sessions.json): `serve`
// runs the daemon, the other subcommands are its clients for operators and scripts.
//
// main only wires: flags, logger, the ownership lock, the socket, the actor and the
// server as run.Group actors, exit codes, and (issue 3) the re-exec as the very last act.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// errUsage marks a bad command line: exit code 2.
var errUsage = errors.New("usage")

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "sessiond:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "sessiond:", err)
		os.Exit(1)
	}
}

const usage = `sessiond: the single writer of a JSON session index (sessions.json).

Usage:
  sessiond serve [flags]            run the daemon (default store ./sessions.json)
  sessiond get KEY                  print {key, rev, value}
  sessiond put KEY [VALUE|-]        write a whole entry (VALUE from stdin when absent or -)
  sessiond patch KEY [MERGE|-]      RFC 7396 merge patch of an entry
  sessiond delete KEY               delete an entry
  sessiond list [--prefix P]        list keys (and values with --values) in file order
  sessiond txn [OPS|-]              all-or-nothing ops: [{"op":"put","key":...,"value":{}}, ...]
  sessiond flush                    wait until sessions.json holds every acknowledged write
  sessiond status                   the daemon's status
  sessiond restart                  SIGUSR1 the daemon and wait for the new image
  sessiond version                  print the version

Run "sessiond COMMAND -h" for a command's flags. Client commands print one line of JSON
on stdout and exit non-zero with the error's reason on stderr.
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch cmd := args[0]; cmd {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "restart":
		return runRestart(ctx, args[1:], stdout, stderr)
	case "get", "put", "patch", "delete", "list", "txn", "flush", "status":
		return runClient(ctx, cmd, args[1:], stdin, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

// newLogger builds the one logger: tint for a terminal, JSON with --log-format=json,
// logfmt-style text otherwise.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, level)
	}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
	case "auto", "":
		if isTerminal(w) {
			return slog.New(tint.NewTextHandler(w, &tint.Options{Level: lv, TimeFormat: "15:04:05.000"})), nil
		}
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
	}
	return nil, fmt.Errorf("%w: --log-format %q: want auto, text or json", errUsage, format)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// intList is a repeatable, comma-separated flag of integers (--allow-uid 1000,1001).
type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, v := range *l {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 0 {
			return fmt.Errorf("%q is not a numeric id", f)
		}
		*l = append(*l, n)
	}
	return nil
}
