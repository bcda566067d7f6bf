// The original Go-Worker design (the seed's README), written for bench/vs_go.py: the
// worker, a fast counting Core, and the Go code generated from proto/.
module jobworker/bench/godesign

go 1.26.0

require (
	github.com/segmentio/kafka-go v0.4.51
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/klauspost/compress v1.15.9 // indirect
	github.com/pierrec/lz4/v4 v4.1.15 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)
