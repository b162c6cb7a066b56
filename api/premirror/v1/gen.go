// Package premirrorv1 is premirror's control protocol (package
// premirror.v1): the agent session, the admin API, the desired state and
// the records the controller keeps in etcd. The Go files are generated
// from the .proto files beside this one; `go generate` rebuilds them with
// the pinned protoc-gen-go and protoc-gen-go-grpc that
// scripts/install-deps.sh installs, and CI checks they are up to date.
package premirrorv1

//go:generate bash ../../../scripts/gen-proto.sh
