package merkle

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestDiff(t *testing.T) {
	for _, n := range []int{1, 2, 63, 64, 65, 4096, 100000} {
		rng := rand.New(rand.NewPCG(uint64(n), 1))
		a := make([]uint64, n)
		for i := range a {
			a[i] = rng.Uint64()
		}
		b := slices.Clone(a)
		var want []uint64
		for i := 0; i < n; i += 1 + rng.IntN(max(1, n/7)) {
			b[i] ^= 1
			want = append(want, uint64(i))
		}
		ta, tb := Build(a), Build(b)
		if got := LevelSizes(n); len(got) != len(ta.Levels) {
			t.Fatalf("n=%d: LevelSizes %v, tree has %d levels", n, got, len(ta.Levels))
		}
		fetched := 0
		got, err := ta.Diff(func(level int, idx []uint64) ([]uint64, error) {
			out := make([]uint64, len(idx))
			for k, i := range idx {
				out[k] = tb.Levels[level][i]
			}
			fetched += len(idx)
			return out, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("n=%d: diff %v, want %v", n, got, want)
		}
		if same, _ := ta.Diff(func(level int, idx []uint64) ([]uint64, error) {
			out := make([]uint64, len(idx))
			for k, i := range idx {
				out[k] = ta.Levels[level][i]
			}
			return out, nil
		}); same != nil {
			t.Fatalf("n=%d: identical trees differ at %v", n, same)
		}
		// A sparse difference must not fetch every leaf.
		if n == 100000 && fetched > n/2 {
			t.Fatalf("fetched %d hashes for %d differing leaves", fetched, len(want))
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	leaves := make([]uint64, 262144) // 1 GiB of 4 KiB blocks
	b.SetBytes(int64(len(leaves) * 8))
	for b.Loop() {
		Build(leaves)
	}
}
