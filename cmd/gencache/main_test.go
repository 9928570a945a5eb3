package main

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"cargohold/triton"
)

func TestRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	o, err := parse([]string{"-o", dir, "-n", "12", "--launchers", "2", "--targets", "cuda:80:32,hip:gfx90a", "--seed", "5", "--scale", "0.2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(o, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cuda:80:32       6 kernels", "hip:gfx90a:64    6 kernels", "wrote 12 kernels and 2 launchers"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("summary lacks %q:\n%s", want, out.String())
		}
	}
	es, _, err := triton.Scan(dir)
	if err != nil || len(es) != 14 {
		t.Fatalf("scan: %d entries, %v", len(es), err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-n", "3"},                           // no -o
		{"-o", "x", "--targets", "cuda:sm80"}, // bad target
		{"-o", "x", "--targets", "none"},      // no target
		{"-o", "x", "extra"},                  // stray argument
		{"-o", "x", "-n", "many"},             // not a number
	} {
		if _, err := parse(args, io.Discard); err == nil {
			t.Errorf("%q: want error", args)
		}
	}
}
