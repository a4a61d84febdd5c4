package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
)

// shape is the size of a generated store.
type shape struct {
	Name       string `json:"name"`
	Entries    int    `json:"entries"`
	EntryBytes int    `json:"entry_bytes"` // mean size of one entry as laid out in the file
}

// shapes are the stores of the issue: 1k and 10k entries of ~500 B, and 1k entries of
// ~50 KB (the 50 MB store that made the legacy writers take seconds per write).
var shapes = []shape{
	{Name: "1k", Entries: 1000, EntryBytes: 500},
	{Name: "10k", Entries: 10_000, EntryBytes: 500},
	{Name: "1kx50k", Entries: 1000, EntryBytes: 50_000},
}

// tiny is the smoke-run version of s: the same entry sizes, a handful of entries.
func (s shape) tiny() shape {
	s.Entries = max(s.Entries/50, 20)
	return s
}

func shapeByName(name string) (shape, error) {
	for _, s := range shapes {
		if s.Name == name {
			return s, nil
		}
	}
	return shape{}, fmt.Errorf("unknown store shape %q (want 1k, 10k or 1kx50k)", name)
}

// sessionEntry is one value of the store, fields in the order the legacy writer
// created them (a struct keeps its field order through encoding/json).
type sessionEntry struct {
	SessionID       string          `json:"sessionId"`
	UpdatedAt       int64           `json:"updatedAt"`
	ChatType        string          `json:"chatType"`
	Model           string          `json:"model"`
	InputTokens     int64           `json:"inputTokens"`
	OutputTokens    int64           `json:"outputTokens"`
	TotalTokens     int64           `json:"totalTokens"`
	ContextTokens   int64           `json:"contextTokens"`
	DeliveryContext deliveryContext `json:"deliveryContext"`
	LastChannel     string          `json:"lastChannel"`
	SystemPrompt    string          `json:"systemPrompt,omitempty"`
	SkillsPrompt    string          `json:"skillsPrompt,omitempty"`
	LastMessage     string          `json:"lastMessagePreview"`
}

// deliveryContext is the routing object: where replies of the session go.
type deliveryContext struct {
	Channel   string `json:"channel"`
	To        string `json:"to"`
	AccountID string `json:"accountId"`
	ThreadID  string `json:"threadId,omitempty"`
}

// keyIDStride spaces the numeric ids of generated keys: entry i gets an id in
// [i*stride, (i+1)*stride), so keys are unique whatever the random part picks.
const keyIDStride = 97

var (
	keyAgents   = []string{"main", "main", "main", "main", "research", "ops"}
	keyChannels = []string{"telegram", "telegram", "telegram", "discord", "slack", "whatsapp"}
	models      = []string{"claude-sonnet-4", "claude-opus-4", "gpt-5", "gemini-2.5-pro"}
	words       = []string{"the", "session", "agent", "tool", "reply", "context", "must", "never",
		"user", "message", "channel", "thread", "summarise", "when", "asked", "for", "a",
		"skill", "prompt", "memory", "file", "workspace", "and", "of", "to", "in", "with"}
)

// sessionKey returns the key of entry i, e.g. agent:main:telegram:group:-1001000000776:topic:7.
func sessionKey(r *rand.Rand, i int) (key, channel, to string) {
	agent := keyAgents[r.IntN(len(keyAgents))]
	channel = keyChannels[r.IntN(len(keyChannels))]
	id := int64(i)*keyIDStride + r.Int64N(keyIDStride)
	switch channel {
	case "telegram":
		if r.IntN(3) == 0 {
			to = strconv.FormatInt(100_000_000+id, 10)
			return fmt.Sprintf("agent:%s:telegram:dm:%s", agent, to), channel, to
		}
		to = "-100" + fmt.Sprintf("%010d", 1_000_000_000+id)
		key = fmt.Sprintf("agent:%s:telegram:group:%s", agent, to)
		if r.IntN(2) == 0 {
			key += ":topic:" + strconv.Itoa(1+r.IntN(40))
		}
		return key, channel, to
	case "discord":
		to = strconv.FormatInt(1_100_000_000_000_000_000+id, 10)
		return fmt.Sprintf("agent:%s:discord:channel:%s", agent, to), channel, to
	case "slack":
		to = "c" + fmt.Sprintf("%010d", id)
		return fmt.Sprintf("agent:%s:slack:channel:%s", agent, to), channel, to
	default:
		to = strconv.FormatInt(15_550_000_000+id, 10)
		return fmt.Sprintf("agent:%s:whatsapp:dm:%s", agent, to), channel, to
	}
}

// benchKey is the key of the seq-th new entry a put client writes: unique per client
// and sequence number, in the same format as the generated keys.
func benchKey(client, seq int) string {
	return "agent:bench:telegram:dm:" + strconv.FormatInt(9_000_000_000_000+int64(client)*1_000_000_000+int64(seq), 10)
}

// genEntry returns the key of entry i and its value, laid out as in the file (indented
// for its place in the top-level object), about sh.EntryBytes long give or take 20%.
// Entries of large shapes carry their bulk in three prompt strings.
func genEntry(r *rand.Rand, sh shape, i int) (string, []byte) {
	key, channel, to := sessionKey(r, i)
	in, out := r.Int64N(200_000), r.Int64N(50_000)
	e := sessionEntry{
		SessionID:     fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xfff, 0x8000|r.Uint32()&0x3fff, r.Uint64()&0xffffffffffff),
		UpdatedAt:     1_750_000_000_000 + r.Int64N(30*24*3600*1000),
		ChatType:      "group",
		Model:         models[r.IntN(len(models))],
		InputTokens:   in,
		OutputTokens:  out,
		TotalTokens:   in + out,
		ContextTokens: 200_000,
		DeliveryContext: deliveryContext{
			Channel: channel, To: to, AccountID: "default",
		},
		LastChannel: channel,
	}
	if r.IntN(2) == 0 {
		e.ChatType = "direct"
	}
	if r.IntN(4) == 0 {
		e.DeliveryContext.ThreadID = strconv.Itoa(1 + r.IntN(40))
	}
	target := sh.EntryBytes*4/5 + r.IntN(sh.EntryBytes*2/5+1) // mean EntryBytes
	pad := target - entryFileSize(key, encodeValue(e))
	if sh.EntryBytes >= 5_000 {
		// The prompts' field names and quotes cost bytes too; take them off first.
		pad -= len(",\n    \"systemPrompt\": \"\"") + len(",\n    \"skillsPrompt\": \"\"")
		e.SystemPrompt = genText(r, pad*6/10)
		e.SkillsPrompt = genText(r, pad*35/100)
		pad -= pad*6/10 + pad*35/100
	}
	e.LastMessage = genText(r, pad)
	return key, encodeValue(e)
}

// entryFileSize is how many bytes key and its value take in the file: `  "key": value,\n`.
func entryFileSize(key string, value []byte) int {
	return len(`  "": `) + len(quote(key)) - 2 + len(value) + len(",\n")
}

// encodeValue lays v out as JSON.stringify(store, null, 2) does for a top-level value:
// two-space indent, nested one level, no HTML escaping.
func encodeValue(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("  ", "  ")
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("encoding a generated value: %v", err)) // only plain types: cannot fail
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func quote(s string) string {
	b, _ := json.Marshal(s) // a string always encodes
	return string(b)
}

// genText returns prose whose JSON encoding (without quotes) is exactly n bytes (none
// if n <= 0). It holds newlines and quotes so that the escapers are exercised.
func genText(r *rand.Rand, n int) string {
	if n <= 0 {
		return ""
	}
	b := make([]byte, 0, n)
	enc := 0 // encoded length of b
	for {
		w := words[r.IntN(len(words))]
		sep, sepLen := " ", 1
		switch r.IntN(24) {
		case 0:
			sep, sepLen = "\n", 2
		case 1:
			sep, sepLen = ` "`, 3
		}
		if enc+sepLen+len(w) > n {
			break
		}
		if enc > 0 {
			b = append(b, sep...)
			enc += sepLen
		}
		b = append(b, w...)
		enc += len(w)
	}
	for ; enc < n; enc++ {
		b = append(b, '.')
	}
	return string(b)
}

// genStore generates the store of sh from seed and writes it to path as
// JSON.stringify(store, null, 2) would (no trailing newline). It returns the keys in
// file order and the file's size.
func genStore(path string, sh shape, seed uint64) ([]string, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("create store %s: %w", path, err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewPCG(seed, 0x5e55))
	keys := make([]string, 0, sh.Entries)
	size := int64(0)
	put := func(s string) {
		n, _ := w.WriteString(s) // the error sticks in w; Flush reports it
		size += int64(n)
	}
	if sh.Entries == 0 {
		put("{}")
	} else {
		put("{\n")
	}
	for i := range sh.Entries {
		key, value := genEntry(r, sh, i)
		keys = append(keys, key)
		put("  " + quote(key) + ": ")
		put(string(value))
		if i < sh.Entries-1 {
			put(",\n")
		} else {
			put("\n}")
		}
	}
	if err := w.Flush(); err != nil {
		return nil, 0, fmt.Errorf("write store %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, 0, fmt.Errorf("write store %s: %w", path, err)
	}
	return keys, size, nil
}

// putValues returns n distinct values of the shape's size for the put workload,
// generated ahead so that the client spends its time on the wire, not on prose.
func putValues(sh shape, n int, seed uint64) []json.RawMessage {
	r := rand.New(rand.NewPCG(seed, 0x9075))
	vals := make([]json.RawMessage, n)
	for i := range vals {
		_, v := genEntry(r, sh, i)
		var buf bytes.Buffer
		_ = json.Compact(&buf, v) // generated text is valid JSON
		vals[i] = buf.Bytes()
	}
	return vals
}

// patchMerge appends the merge patch of the hot path: updatedAt, the token counters and
// the routing object, as one line of JSON (about 200 bytes).
func patchMerge(b []byte, r *rand.Rand, now int64) []byte {
	in, out := r.Int64N(200_000), r.Int64N(50_000)
	b = append(b, `{"updatedAt":`...)
	b = strconv.AppendInt(b, now, 10)
	b = append(b, `,"inputTokens":`...)
	b = strconv.AppendInt(b, in, 10)
	b = append(b, `,"outputTokens":`...)
	b = strconv.AppendInt(b, out, 10)
	b = append(b, `,"totalTokens":`...)
	b = strconv.AppendInt(b, in+out, 10)
	b = append(b, `,"deliveryContext":{"channel":"telegram","to":"-100`...)
	b = strconv.AppendInt(b, 1_000_000_000+r.Int64N(1_000_000_000), 10)
	b = append(b, `","accountId":"default","threadId":"`...)
	b = strconv.AppendInt(b, 1+r.Int64N(40), 10)
	b = append(b, `"},"lastChannel":"telegram"}`...)
	return b
}
