# cargohold — see README.md.
GO      ?= go
BIN     ?= bin
PKGS    := ./...

.PHONY: build test test-deps lint run clean

build:
	$(GO) build -o $(BIN)/ ./cmd/... ./test/replay/cmd/replay

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)

# What the tests need (scripts/test-setup.sh): as root, installs the missing
# apt packages; where it cannot, stops and names the command to run.
test-deps:
	@GO='$(GO)' ALLOW_SKIP='$(ALLOW_SKIP)' ./scripts/test-setup.sh

# The test command CI runs (README): set-up, lint, then every test with the
# race detector. CI=true makes a test whose tool or facility is missing fail
# instead of skipping; only ALLOW_SKIP=1 lets it skip.
ifeq ($(ALLOW_SKIP),1)
TEST_ENV := env -u CI
else
TEST_ENV := env CI=true
endif
test: test-deps lint
	$(TEST_ENV) $(GO) test -race -count=1 -timeout 30m $(PKGS)

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
