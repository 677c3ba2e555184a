package admin

import (
	"bytes"
	"fmt"
	"runtime/pprof"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

const (
	// DefaultProfileDuration is how long GetProfile samples the CPU when the
	// request does not say (net/http/pprof's default).
	DefaultProfileDuration = 30 * time.Second
	// MaxProfileDuration bounds a CPU profile.
	MaxProfileDuration = 10 * time.Minute
	// profileChunk is the most a GetProfileResponse carries, well below
	// gRPC's default 4 MiB message limit.
	profileChunk = 1 << 20
)

// snapshotProfile is runtime/pprof's name of a snapshot profile type.
func snapshotProfile(t adminv1.ProfileType) (string, bool) {
	switch t {
	case adminv1.ProfileType_PROFILE_TYPE_HEAP:
		return "heap", true
	case adminv1.ProfileType_PROFILE_TYPE_ALLOCS:
		return "allocs", true
	case adminv1.ProfileType_PROFILE_TYPE_GOROUTINE:
		return "goroutine", true
	}
	return "", false
}

func (v *service) GetProfile(req *adminv1.GetProfileRequest, stream grpc.ServerStreamingServer[adminv1.GetProfileResponse]) error {
	var buf bytes.Buffer
	switch t := req.GetType(); t {
	case adminv1.ProfileType_PROFILE_TYPE_CPU:
		d := DefaultProfileDuration
		if req.GetDuration() != nil {
			if err := req.GetDuration().CheckValid(); err != nil {
				return status.Errorf(codes.InvalidArgument, "duration: %v", err)
			}
			d = req.GetDuration().AsDuration()
		}
		if d <= 0 || d > MaxProfileDuration {
			return status.Errorf(codes.InvalidArgument, "duration %v: want more than 0 and at most %v", d, MaxProfileDuration)
		}
		if err := v.cpuProfile(stream, &buf, d); err != nil {
			return err
		}
	default:
		name, ok := snapshotProfile(t)
		if !ok {
			return status.Errorf(codes.InvalidArgument, "type %v: want PROFILE_TYPE_CPU, _HEAP, _ALLOCS or _GOROUTINE", t)
		}
		if err := pprof.Lookup(name).WriteTo(&buf, 0); err != nil {
			return status.Errorf(codes.Internal, "%s profile: %v", name, err)
		}
	}
	for b := buf.Bytes(); len(b) > 0; {
		n := min(len(b), profileChunk)
		if err := stream.Send(&adminv1.GetProfileResponse{Data: b[:n]}); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// cpuProfile samples the CPU into buf for d, or until the call ends.
func (v *service) cpuProfile(stream grpc.ServerStream, buf *bytes.Buffer, d time.Duration) error {
	if err := pprof.StartCPUProfile(buf); err != nil {
		return status.Errorf(codes.Aborted, "cpu profile: %v (one runs at a time)", err)
	}
	v.s.log.Info("admin: cpu profile started", "duration", d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		pprof.StopCPUProfile()
		return nil
	case <-stream.Context().Done():
		pprof.StopCPUProfile()
		return status.FromContextError(fmt.Errorf("cpu profile: %w", stream.Context().Err())).Err()
	}
}
