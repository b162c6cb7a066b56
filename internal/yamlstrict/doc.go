// Package yamlstrict closes a gap go.yaml.in/yaml/v3 leaves in strict
// decoding: KnownFields refuses unknown keys, but a number with a
// fraction decoded into an integer field is silently truncated (a route
// weight of 0.5 becomes 0, a port of 80.5 becomes 80). WholeNumbers walks
// a decoded document beside the Go value it was decoded into and names
// the first such field, so config and object parsers can refuse it.
package yamlstrict
