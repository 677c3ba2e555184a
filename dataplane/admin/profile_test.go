package admin

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// getProfile makes a GetProfile call and joins its chunks.
func getProfile(ctx context.Context, c adminv1.AdminServiceClient, req *adminv1.GetProfileRequest) ([]byte, error) {
	stream, err := c.GetProfile(ctx, req)
	if err != nil {
		return nil, err
	}
	var b []byte
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		b = append(b, r.GetData()...)
	}
}

// pprofProfile is what the tests read of a profile: its string table and its
// number of samples (perftools.profiles.Profile fields 6 and 2).
type pprofProfile struct {
	strings []string
	samples int
}

func parsePprof(t *testing.T, b []byte) pprofProfile {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("profile is not gzipped: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var p pprofProfile
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			t.Fatalf("profile: %v", protowire.ParseError(n))
		}
		raw = raw[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(raw)
			if m < 0 {
				t.Fatalf("profile field %d: %v", num, protowire.ParseError(m))
			}
			switch num {
			case 2:
				p.samples++
			case 6:
				p.strings = append(p.strings, string(v))
			}
			n = m
		} else {
			n = protowire.ConsumeFieldValue(num, typ, raw)
			if n < 0 {
				t.Fatalf("profile field %d: %v", num, protowire.ParseError(n))
			}
		}
		raw = raw[n:]
	}
	return p
}

// burnCPU spins until stop is closed, so that a CPU profile has something to
// sample.
func burnCPU(stop <-chan struct{}, sink *atomic.Uint64) {
	var x uint64
	for i := 0; ; i++ {
		x = x*6364136223846793005 + 1442695040888963407
		if i%4096 == 0 {
			select {
			case <-stop:
				sink.Store(x)
				return
			default:
			}
		}
	}
}

func TestGetProfile(t *testing.T) {
	ta := startTestAdmin(t, nil)
	ctx := ctxT(t)
	cpu := func(d time.Duration) *adminv1.GetProfileRequest {
		return &adminv1.GetProfileRequest{Type: adminv1.ProfileType_PROFILE_TYPE_CPU, Duration: durationpb.New(d)}
	}

	if _, err := getProfile(ctx, ta.admin(false), cpu(time.Second)); status.Code(err) != codes.PermissionDenied {
		t.Errorf("GetProfile over TCP: %v, want PermissionDenied", err)
	}
	for _, bad := range []*adminv1.GetProfileRequest{
		{},
		{Type: adminv1.ProfileType(99)},
		cpu(0),
		cpu(MaxProfileDuration + time.Second),
		{Type: adminv1.ProfileType_PROFILE_TYPE_CPU, Duration: &durationpb.Duration{Seconds: 1, Nanos: -1}},
	} {
		if _, err := getProfile(ctx, ta.admin(true), bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("GetProfile(%v): %v, want InvalidArgument", bad, err)
		}
	}

	// A CPU profile samples what runs while it records.
	stop := make(chan struct{})
	var sink atomic.Uint64
	var wg sync.WaitGroup
	wg.Go(func() { burnCPU(stop, &sink) })
	var (
		busy  []byte
		err   error
		queue sync.WaitGroup
	)
	queue.Go(func() { busy, err = getProfile(ctx, ta.admin(true), cpu(500*time.Millisecond)) })
	// While it records, another CPU profile is refused.
	time.Sleep(100 * time.Millisecond)
	if _, err2 := getProfile(ctx, ta.admin(true), cpu(time.Second)); status.Code(err2) != codes.Aborted {
		t.Errorf("a second CPU profile at once: %v, want Aborted", err2)
	}
	queue.Wait()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("GetProfile(CPU): %v", err)
	}
	p := parsePprof(t, busy)
	if !slices.Contains(p.strings, "cpu") || p.samples == 0 {
		t.Errorf("CPU profile: %d samples, strings %q; want samples of cpu", p.samples, p.strings)
	}
	if !slices.ContainsFunc(p.strings, func(s string) bool { return s == "github.com/skiffproxy/skiff/dataplane/admin.burnCPU" }) {
		t.Errorf("CPU profile does not name burnCPU, which ran throughout: %q", p.strings)
	}

	// A caller that gives up stops the profile: the next one can start.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = getProfile(short, ta.admin(true), cpu(time.Minute))
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("GetProfile past the caller's deadline: %v, want DeadlineExceeded", err)
	}
	var again []byte
	for range 50 { // the server sees the cancellation a moment later
		if again, err = getProfile(ctx, ta.admin(true), cpu(10*time.Millisecond)); status.Code(err) != codes.Aborted {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("CPU profile after a canceled one: %v", err)
	}
	parsePprof(t, again)

	for typ, want := range map[adminv1.ProfileType]string{
		adminv1.ProfileType_PROFILE_TYPE_HEAP:      "inuse_space",
		adminv1.ProfileType_PROFILE_TYPE_ALLOCS:    "alloc_space",
		adminv1.ProfileType_PROFILE_TYPE_GOROUTINE: "goroutine",
	} {
		b, err := getProfile(ctx, ta.admin(true), &adminv1.GetProfileRequest{Type: typ})
		if err != nil {
			t.Fatalf("GetProfile(%v): %v", typ, err)
		}
		if p := parsePprof(t, b); !slices.Contains(p.strings, want) || p.samples == 0 {
			t.Errorf("%v profile: %d samples, strings %q; want samples of %s", typ, p.samples, p.strings, want)
		}
	}
}
