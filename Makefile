# sessiond: the two commands a new machine needs are `make run` and `make test`.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/sessiond
STORE   ?= ./sessions.json

.PHONY: build run test lint bench fuzz clean

# Fuzz targets as package:Name; `make fuzz` runs each for FUZZTIME. A failing input is
# written to the package's testdata/fuzz/<Name>/ and from then on runs in the normal suite
# with the committed seeds.
FUZZTIME ?= 60s
FUZZ_TARGETS := persist:FuzzParse persist:FuzzMerge persist:FuzzParseStore persist:FuzzDecodeJournal \
	actor:FuzzJournalReplay ipc:FuzzRequestLine

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sessiond

# Runs the daemon on a store in the current directory (created empty if missing).
run: build
	./$(BIN) serve --store $(STORE)

# The whole suite, unit and integration, with the race detector.
test:
	$(GO) test -race -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) ./$$pkg || exit 1; \
	done

# The benchmarks of issue 4, sessiond beside the legacy file-lock protocol (about 15
# minutes on 2 cores): bench-results/{results.json,chart.svg,results.md} and the results
# section of BENCHMARKS.md. One scenario: go run ./cmd/sessiond-bench -h.
bench:
	$(GO) run ./cmd/sessiond-bench -scenario all -out bench-results -update-doc BENCHMARKS.md

clean:
	rm -rf bin
