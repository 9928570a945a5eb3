// Command replay performs the cache hit and miss file-system calls of
// Triton, vLLM or PyTorch Inductor against a cache root (see package
// cargohold/test/replay and replay -h).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"cargohold/test/replay"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := replay.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
