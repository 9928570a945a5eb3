package catalog

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"cargohold/gpu"
)

// TestStateFileStreams: the streamed state file is json.Marshal's (but for
// white space) and reads back the same, and the streaming reader reads
// json.Marshal's file; a null record or a truncated file is an error.
func TestStateFileStreams(t *testing.T) {
	for _, st := range []stateFile{
		{Version: stateVersion},
		{Version: stateVersion, Targets: []gpu.Target{{Backend: "cuda", Arch: "80", WarpSize: 32}},
			Entries: []stateEntry{{Ref: "r/a:1", Source: "r/a:*", Memo: "m1"}, {Ref: "r/a:2", Source: "r/a:*", Memo: "m2"}},
			Images: []*imageRec{
				{Memo: "m1", Image: "r/a@sha256:1", Fits: true,
					Keys: []keyRec{{Key: "A"}, {Key: "B", Kernel: 1}}, Kernels: []gpu.Target{{Backend: "cuda", Arch: "80", WarpSize: 32}}},
				{Memo: "m2", Image: "r/a@sha256:2", LabelError: "bad"},
			}},
	} {
		var streamed bytes.Buffer
		if err := st.write(&streamed); err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(&st)
		if err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, streamed.Bytes()); err != nil {
			t.Fatalf("streamed state is not JSON: %v\n%s", err, streamed.Bytes())
		}
		if compact.String() != string(want) {
			t.Fatalf("streamed\n%s\nwant\n%s", compact.String(), want)
		}
		for _, in := range [][]byte{streamed.Bytes(), want} {
			var got stateFile
			if err := got.read(bytes.NewReader(in)); err != nil {
				t.Fatal(err)
			}
			var back stateFile
			if err := json.Unmarshal(want, &back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, back) {
				t.Fatalf("read %+v, want %+v", got, back)
			}
		}
	}
	for _, bad := range []string{`{"version":2,"images":[null]}`, `{"version":2,"images":[{"memo":"m"}`, `{"version":2,"images":{}}`, `[]`} {
		var st stateFile
		if err := st.read(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
