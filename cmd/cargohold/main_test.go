package main

import (
	"strings"
	"testing"
)

func TestParseFlagsRejects(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-e", "-i", "x/y:z", "--timeout", "0"}, "--timeout"},
		{[]string{"-e", "-i", "x/y:z", "--timeout", "-3s"}, "--timeout"},
		{[]string{"-e", "-i", "x/y:z", "--gpu", " "}, "--gpu"},
		{[]string{"-e", "-i", "x/y:z", "--gpu", "cuda:080:32"}, "080"},
	} {
		_, err := parseFlags(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want a refusal naming %q", c.args, err, c.want)
		}
	}
	if _, err := parseFlags([]string{"-e", "-i", "x/y:z", "--gpu", "cuda:80:32"}); err != nil {
		t.Fatal(err)
	}
}
