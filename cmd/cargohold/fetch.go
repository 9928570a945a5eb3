package main

import (
	"context"
	"fmt"
	"log/slog"

	"cargohold/resolver"
)

// fetch is replaced by the lazy-fetch engine's CLI face.
func fetch(ctx context.Context, o options, ropts resolver.Options, log *slog.Logger) error {
	return fmt.Errorf("fetch: not built yet")
}
