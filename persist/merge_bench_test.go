package persist

import "testing"

// A patch of the hot path (the bench's patch workload) on a ~500 B session entry:
// parse the stored entry, merge, encode, as the actor does for each patch.
func BenchmarkPatchEntry(b *testing.B) {
	frag := EncodeEntry("agent:main:telegram:group:-1001000000776:topic:7", mustParseB(b, `{"sessionId":"0b8f5a2e-4c1d-4f7e-9a3b-2d6c8e1f0a9b","updatedAt":1750000000000,"chatType":"group","model":"claude-sonnet-4","inputTokens":120345,"outputTokens":23456,"totalTokens":143801,"contextTokens":200000,"deliveryContext":{"channel":"telegram","to":"-1001000000776","accountId":"default","threadId":"7"},"lastChannel":"telegram","lastMessage":"the quick brown fox jumps over the lazy dog and then some more words to pad it out a little"}`))
	patch := mustParseB(b, `{"updatedAt":1764220000123,"inputTokens":12345,"outputTokens":2345,"totalTokens":14690,"deliveryContext":{"channel":"telegram","to":"-1001234567890","accountId":"default","threadId":"12"},"lastChannel":"telegram"}`)
	for _, tc := range []struct {
		name  string
		merge func(Value, Value) Value
	}{{"Merge", Merge}, {"MergeOwned", MergeOwned}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v, _ := Parse(EntryValue(frag), 0)
				EncodeEntry("agent:main:telegram:group:-1001000000776:topic:7", tc.merge(v, patch))
			}
		})
	}
}

func mustParseB(b *testing.B, s string) Value {
	v, err := Parse([]byte(s), 0)
	if err != nil {
		b.Fatal(err)
	}
	return v
}
