package main

import (
	"strings"
	"testing"
)

// Flags that cannot mean anything are refused with a message naming the
// flag, not accepted and turned into something else.
func TestParseFlagsRejects(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	base := []string{"-i", "reg.example/cache:v1", "/tmp/mnt"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--cache-size", "NaN"}, "--cache-size"},
		{[]string{"--cache-size", "inf"}, "--cache-size"},
		{[]string{"--cache-size", "-1G"}, "--cache-size"},
		{[]string{"--cache-size", "1e30"}, "--cache-size"},
		{[]string{"--min-free", "NaN"}, "--min-free"},
		{[]string{"--gpu", " "}, "--gpu"},
		{[]string{"--gpu", "cuda:080:32"}, "080"},
		{[]string{"--gpu", "cuda:+80:32"}, "+80"},
		{[]string{"--refresh", "1ns"}, "--refresh"},
		{[]string{"--refresh", "-5m"}, "--refresh"},
		{[]string{"--fetch-timeout", "0"}, "--fetch-timeout"},
		{[]string{"--fetch-timeout", "-1s"}, "--fetch-timeout"},
		{[]string{"--request-timeout", "0"}, "--request-timeout"},
	} {
		_, err := parseFlags(append(c.args, base...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want a refusal naming %q", c.args, err, c.want)
		}
	}
	o, err := parseFlags(append([]string{"--cache-size", "512M", "--gpu", "cuda:80:32", "--refresh", "1m", "--fetch-timeout", "500ms"}, base...))
	if err != nil || o.cacheSize != 512<<20 {
		t.Fatalf("good flags: %+v, %v", o, err)
	}
}
