package grpcstats

// frameCounter counts the gRPC messages of a body as its bytes go by, as
// Envoy's Grpc::FrameInspector does: each message is a frame of a flag
// byte, a 4-byte big-endian length and that many bytes, and a frame counts
// once its first byte is seen. It keeps its place between chunks.
type frameCounter struct {
	header int    // bytes of the current frame's 5-byte header seen (0: at a frame's start)
	length uint32 // the length being read from the header, or what is left of the data
	inData bool   // within a frame's data
}

// count takes the next bytes of the body and returns how many frames
// started in them.
func (f *frameCounter) count(p []byte) uint64 {
	var started uint64
	for len(p) > 0 {
		if f.inData {
			n := uint32(min(uint64(len(p)), uint64(f.length)))
			p = p[n:]
			if f.length -= n; f.length == 0 {
				f.inData = false
			}
			continue
		}
		if f.header == 0 {
			started++
			f.length = 0
		} else {
			f.length = f.length<<8 | uint32(p[0])
		}
		p = p[1:]
		if f.header++; f.header == 5 {
			f.header = 0
			f.inData = f.length > 0
		}
	}
	return started
}
