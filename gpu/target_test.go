package gpu

import "testing"

func TestParseList(t *testing.T) {
	got, err := ParseList("cuda:75:32, hip:gfx90a , hip:gfx1100,cuda:75")
	if err != nil {
		t.Fatal(err)
	}
	want := "cuda:75:32,hip:gfx1100:32,hip:gfx90a:64"
	if FormatList(got) != want {
		t.Fatalf("got %s, want %s", FormatList(got), want)
	}
	none, err := ParseList("none")
	if err != nil || none == nil || len(none) != 0 {
		t.Fatalf("none: %v %v", none, err)
	}
	for _, bad := range []string{"", "cuda", "cuda:x:32", "rocm:gfx90a", "hip:90a", "cuda:80:48", "cuda:80:32:1",
		"cuda:080:32", "cuda:+80", "cuda:80:032", " ", "cuda:80,,cuda:90"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

func TestFits(t *testing.T) {
	local, _ := ParseList("cuda:80:32,hip:gfx942:64")
	cases := map[string]bool{"cuda:80:32": true, "cuda:90:32": false, "cuda:80:64": false, "hip:gfx942:64": true, "hip:gfx90a:64": false}
	for s, want := range cases {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		if Fits(tg, local) != want {
			t.Errorf("Fits(%s) = %v, want %v", s, !want, want)
		}
	}
}

func TestAnyFits(t *testing.T) {
	local, _ := ParseList("cuda:80:32")
	some, _ := ParseList("hip:gfx90a:64,cuda:80:32")
	none, _ := ParseList("hip:gfx90a:64,cuda:90:32")
	if !AnyFits(some, local) || AnyFits(none, local) || AnyFits(nil, local) {
		t.Fatal("AnyFits wrong")
	}
}
