// Command replay performs Triton's cache hit and miss file-system calls
// against a cache dir (see package cargohold/test/replay).
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
