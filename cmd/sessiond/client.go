package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"sessiond/ipc"
)

// clientCommand describes one client subcommand for parsing and -h.
type clientCommand struct {
	args    string // the positional arguments, for the usage line
	help    string
	minArgs int
	maxArgs int
	write   bool // takes --request-id and --durable
	ifRev   bool // takes --if-rev (txn has per-op conditions instead)
	list    bool // takes the list flags
}

// clientCommands is the table of client subcommands; it is never modified.
var clientCommands = map[string]clientCommand{
	"get": {args: "KEY", minArgs: 1, maxArgs: 1,
		help: `Prints the entry of KEY as {"key","rev","value"}. A missing key fails with not_found.`},
	"put": {args: "KEY [VALUE|-]", minArgs: 1, maxArgs: 2, write: true, ifRev: true,
		help: "Stores VALUE, a JSON object, as the whole value of KEY and prints {\"key\",\"rev\"}.\n" +
			"VALUE is read from stdin when absent or -."},
	"patch": {args: "KEY [MERGE|-]", minArgs: 1, maxArgs: 2, write: true, ifRev: true,
		help: "Applies MERGE, an RFC 7396 JSON Merge Patch object, to the value of KEY (a missing key is\n" +
			"patched from {}) and prints {\"key\",\"rev\",\"value\"}. MERGE is read from stdin when absent or -."},
	"delete": {args: "KEY", minArgs: 1, maxArgs: 1, write: true, ifRev: true,
		help: `Deletes KEY and prints {"key","rev","deleted"}; deleted is false if KEY did not exist.`},
	"list": {minArgs: 0, maxArgs: 0, list: true,
		help: "Prints one page of entries in file order as {\"items\",\"next\",\"rev\"}; pass next to --cursor\n" +
			"for the following page. With --all, follows the pages and prints each item as one line."},
	"txn": {args: "[OPS|-]", minArgs: 0, maxArgs: 1, write: true,
		help: "Applies OPS all or nothing and prints {\"rev\",\"results\"}. OPS is a JSON array of\n" +
			"{\"op\":\"put\"|\"patch\"|\"delete\"|\"check\",\"key\",\"value\"?,\"merge\"?,\"if_rev\"?},\n" +
			"read from stdin when absent or -."},
	"flush": {minArgs: 0, maxArgs: 0,
		help: `Waits until sessions.json on disk holds every acknowledged write; prints {"rev","snapshot_rev"}.`},
	"status": {minArgs: 0, maxArgs: 0,
		help: "Prints the daemon's status."},
}

// clientFlags holds every client flag; a subcommand registers the ones it takes.
type clientFlags struct {
	socket    string
	store     string
	timeout   time.Duration
	ifRev     clientOptionalInt
	requestID string
	durable   bool
	prefix    string
	limit     int
	cursor    string
	values    bool
	all       bool
}

// clientOptionalInt is an integer flag that remembers whether it was given, because
// --if-rev 0 ("must not exist") differs from no --if-rev.
type clientOptionalInt struct {
	n   int64
	set bool
}

func (o *clientOptionalInt) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatInt(o.n, 10)
}

func (o *clientOptionalInt) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return errors.New("want a revision, an integer >= 0")
	}
	o.n, o.set = n, true
	return nil
}

// runClient runs the client subcommand name: one request (list --all: one per page) to
// the daemon, its result as one line of JSON on stdout. It blocks until the answer or
// --timeout. A bad command line returns an error wrapping errUsage.
func runClient(ctx context.Context, name string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd, ok := clientCommands[name]
	if !ok {
		return fmt.Errorf("%w: unknown client command %q", errUsage, name)
	}
	var f clientFlags
	fs := cmd.flagSet(name, &f, stderr)
	pos, err := clientParseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil // -h: the usage is what was asked for
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, name, err)
	}
	if len(pos) < cmd.minArgs || len(pos) > cmd.maxArgs {
		fs.Usage()
		if cmd.args == "" {
			return fmt.Errorf("%w: %s takes no arguments", errUsage, name)
		}
		return fmt.Errorf("%w: %s takes %s", errUsage, name, cmd.args)
	}
	params, err := cmd.params(name, pos, &f, stdin)
	if err != nil {
		return err
	}
	if f.socket == "" {
		f.socket = f.store + ".sock"
	}
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	c := ipc.NewClient(f.socket)
	defer c.Close()
	if name == "list" && f.all {
		return clientListAll(ctx, c, params, stdout)
	}
	var callParams any // a nil map would be sent as "params":null
	if params != nil {
		callParams = params
	}
	var res json.RawMessage
	if err := c.Call(ctx, name, callParams, &res); err != nil {
		return err
	}
	return clientPrintLine(stdout, res)
}

// flagSet returns the FlagSet of the subcommand, writing into f.
func (cmd clientCommand) flagSet(name string, f *clientFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.socket, "socket", "", "daemon socket `path` (default: the store path + \".sock\")")
	fs.StringVar(&f.store, "store", "./sessions.json", "store `path`, to find the socket")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "give up after this long, retries included (0: wait for the answer without limit)")
	if cmd.ifRev {
		fs.Var(&f.ifRev, "if-rev", "write only if the key's rev is `N` (0: only if the key does not exist)")
	}
	if cmd.write {
		fs.StringVar(&f.requestID, "request-id", "", "idempotency key `ID` (default: a random one, reused by retries)")
		fs.BoolVar(&f.durable, "durable", true, "answer only once the write is on stable storage")
	}
	if cmd.list {
		fs.StringVar(&f.prefix, "prefix", "", "only keys starting with `P`")
		fs.IntVar(&f.limit, "limit", 0, "entries per page (default: the server's, 100)")
		fs.StringVar(&f.cursor, "cursor", "", "start at this `cursor`, the next of a previous page")
		fs.BoolVar(&f.values, "values", false, "include values")
		fs.BoolVar(&f.all, "all", false, "follow every page; print each item as one line")
	}
	fs.Usage = func() {
		args := cmd.args
		if args != "" {
			args = " " + args
		}
		fmt.Fprintf(fs.Output(), "usage: sessiond %s [flags]%s\n\n%s\n\nflags:\n", name, args, cmd.help)
		fs.PrintDefaults()
	}
	return fs
}

// clientParseArgs parses flags placed anywhere among the positional arguments, so that
// `sessiond get KEY --socket S` works; after "--" everything is positional.
func clientParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// params builds the request params from the arguments and flags.
func (cmd clientCommand) params(name string, pos []string, f *clientFlags, stdin io.Reader) (map[string]any, error) {
	p := map[string]any{}
	switch name {
	case "get", "delete":
		p["key"] = pos[0]
	case "put", "patch":
		what := map[string]string{"put": "value", "patch": "merge"}[name]
		raw, err := clientJSONArg(pos, 1, stdin, what)
		if err != nil {
			return nil, err
		}
		p["key"], p[what] = pos[0], raw
	case "txn":
		raw, err := clientJSONArg(pos, 0, stdin, "ops")
		if err != nil {
			return nil, err
		}
		p["ops"] = raw
	case "list":
		if f.prefix != "" {
			p["prefix"] = f.prefix
		}
		if f.limit != 0 {
			p["limit"] = f.limit
		}
		if f.cursor != "" {
			p["cursor"] = f.cursor
		}
		if f.values {
			p["values"] = true
		}
	default: // flush, status
		return nil, nil
	}
	if f.ifRev.set {
		p["if_rev"] = f.ifRev.n
	}
	if cmd.write {
		if f.requestID != "" {
			p["request_id"] = f.requestID
		}
		if !f.durable {
			p["durable"] = false
		}
	}
	return p, nil
}

// clientJSONArg returns positional argument i as JSON text, or stdin when it is absent or "-".
func clientJSONArg(pos []string, i int, stdin io.Reader, what string) (json.RawMessage, error) {
	var text []byte
	if i < len(pos) && pos[i] != "-" {
		text = []byte(pos[i])
	} else {
		if stdin == nil {
			return nil, fmt.Errorf("%w: no %s given: pass it as an argument or on stdin", errUsage, what)
		}
		var err error
		if text, err = io.ReadAll(stdin); err != nil {
			return nil, fmt.Errorf("read %s from stdin: %w", what, err)
		}
	}
	if len(bytes.TrimSpace(text)) == 0 {
		return nil, fmt.Errorf("%w: no %s given: pass it as an argument or on stdin", errUsage, what)
	}
	if !json.Valid(text) {
		return nil, fmt.Errorf("%w: %s is not valid JSON", errUsage, what)
	}
	return text, nil
}

// clientListAll follows the pages of list and prints every item as one line.
func clientListAll(ctx context.Context, c *ipc.Client, params map[string]any, stdout io.Writer) error {
	for {
		var page struct {
			Items []json.RawMessage `json:"items"`
			Next  *string           `json:"next"`
		}
		if err := c.Call(ctx, "list", params, &page); err != nil {
			return err
		}
		for _, item := range page.Items {
			if err := clientPrintLine(stdout, item); err != nil {
				return err
			}
		}
		if page.Next == nil {
			return nil
		}
		params["cursor"] = *page.Next
	}
}

// clientPrintLine prints raw as one line of compact JSON.
func clientPrintLine(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return fmt.Errorf("server sent invalid JSON: %w", err)
	}
	buf.WriteByte('\n')
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
