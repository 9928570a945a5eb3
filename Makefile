# cargohold — see README.md.
GO      ?= go
BIN     ?= bin
PKGS    := ./...

.PHONY: build test lint run clean

build:
	$(GO) build -o $(BIN)/ ./cmd/... ./test/replay/cmd/replay

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)

# The test command CI runs (README): lint, then every test with the race detector.
test: lint
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

# The main job on the bundled example: no registry, no GPU needed.
run: build
	./scripts/example.sh

clean:
	rm -rf $(BIN)

# Real-Triton end-to-end check (test/gpu/README.md): on a GPU host with
# torch and Triton, from prebuilt $(BIN) (make build on a Go machine).
.PHONY: e2e-gpu
e2e-gpu:
	BIN=$(BIN) ./test/gpu/e2e.sh
