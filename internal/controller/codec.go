package controller

import (
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// rawMessage is a ControllerMessage encoded once and sent to many agents:
// a desired state for thousands of routes is marshalled once per version
// and site instead of once per agent.
type rawMessage []byte

// codec is gRPC's proto codec that passes rawMessage through unchanged.
// It keeps the name "proto", so clients see ordinary protobuf.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2(gproto.Name)} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(rawMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c codec) Name() string { return gproto.Name }
