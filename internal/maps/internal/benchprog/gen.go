// Package benchprog holds the BPF_PROG_TEST_RUN harness used by the data
// plane benchmarks (bpf/bench.bpf.c). Only tests import it.
package benchprog

//go:generate go tool bpf2go -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -output-stem bench Bench ../../../../bpf/bench.bpf.c

// Load loads the harness programs and maps.
func Load() (*BenchObjects, error) {
	var objs BenchObjects
	if err := LoadBenchObjects(&objs, nil); err != nil {
		return nil, err
	}
	return &objs, nil
}
