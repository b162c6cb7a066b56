package maps

// The BPF objects are compiled with clang-16 and committed, so `go build`
// needs no C toolchain; CI checks that `go generate` leaves no diff.
// Headers: ../../bpf/include (our types), libbpf-dev and linux-libc-dev
// (UAPI packet headers; XDP parsing needs no kernel-internal types, so
// there is no vmlinux.h to keep in sync).

//go:generate go tool bpf2go -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu" -target bpfel router ../../bpf/router.bpf.c
//go:generate go tool bpf2go -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu" -target bpfel decap ../../bpf/decap.bpf.c
