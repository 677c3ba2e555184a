package admin

import (
	"context"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// httpMutation is one of Envoy's admin endpoints that change the server,
// served on the HTTP side as the gRPC call it is (method, for the same
// guard: the admin unix socket, or TCP with Options.TCPMutations).
type httpMutation struct {
	method string
	call   func(ctx context.Context, v *service, r *http.Request) (string, error)
}

// httpMutationAt is the mutation of Envoy's POST endpoint at path, if skiff
// serves it.
func httpMutationAt(path string) (httpMutation, bool) {
	switch path {
	case "/drain_listeners":
		return httpMutation{adminv1.AdminService_DrainListeners_FullMethodName, func(ctx context.Context, v *service, r *http.Request) (string, error) {
			q := r.URL.Query()
			if q.Has("skip_exit") {
				// Envoy then drains without stopping the listeners at the end.
				return "", status.Error(codes.InvalidArgument, "skip_exit: not supported by skiff (a drain stops the listeners at its end)")
			}
			_, err := v.DrainListeners(ctx, &adminv1.DrainListenersRequest{Graceful: q.Has("graceful"), InboundOnly: q.Has("inboundonly")})
			return "OK\n", err
		}}, true
	case "/healthcheck/fail":
		return httpMutation{adminv1.AdminService_SetHealthCheckFailed_FullMethodName, func(ctx context.Context, v *service, _ *http.Request) (string, error) {
			_, err := v.SetHealthCheckFailed(ctx, &adminv1.SetHealthCheckFailedRequest{Failed: true})
			return "OK\n", err
		}}, true
	case "/healthcheck/ok":
		return httpMutation{adminv1.AdminService_SetHealthCheckFailed_FullMethodName, func(ctx context.Context, v *service, _ *http.Request) (string, error) {
			_, err := v.SetHealthCheckFailed(ctx, &adminv1.SetHealthCheckFailedRequest{Failed: false})
			return "OK\n", err
		}}, true
	case "/reopen_logs":
		return httpMutation{adminv1.AdminService_ReopenLogs_FullMethodName, func(ctx context.Context, v *service, _ *http.Request) (string, error) {
			_, err := v.ReopenLogs(ctx, &adminv1.ReopenLogsRequest{})
			return "OK\n", err
		}}, true
	case "/quitquitquit":
		return httpMutation{adminv1.AdminService_Shutdown_FullMethodName, func(ctx context.Context, v *service, _ *http.Request) (string, error) {
			_, err := v.Shutdown(ctx, &adminv1.ShutdownRequest{})
			return "OK\n", err
		}}, true
	case "/logging":
		return httpMutation{adminv1.AdminService_SetLogLevel_FullMethodName, func(ctx context.Context, v *service, r *http.Request) (string, error) {
			level := r.URL.Query().Get("level")
			if level == "" {
				resp, err := v.GetLogLevel(ctx, &adminv1.GetLogLevelRequest{})
				return fmt.Sprintf("level: %s\n", resp.GetLevel()), err
			}
			resp, err := v.SetLogLevel(ctx, &adminv1.SetLogLevelRequest{Level: level})
			return fmt.Sprintf("level: %s\n", resp.GetLevel()), err
		}}, true
	}
	return httpMutation{}, false
}

// serveMutation serves a request to one of httpMutationAt's endpoints, as
// Envoy's: only POST, and only where skiff accepts calls that change it.
func (s *Server) serveMutation(w http.ResponseWriter, r *http.Request, m httpMutation) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed: this endpoint changes the server; use POST", http.StatusMethodNotAllowed)
		return
	}
	if err := s.guard(r.Context(), m.method); err != nil {
		http.Error(w, status.Convert(err).Message(), http.StatusForbidden)
		return
	}
	out, err := m.call(r.Context(), &service{s: s}, r)
	if err != nil {
		code := http.StatusInternalServerError
		switch status.Code(err) {
		case codes.InvalidArgument:
			code = http.StatusBadRequest
		case codes.Unimplemented:
			code = http.StatusNotImplemented
		}
		http.Error(w, status.Convert(err).Message(), code)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, out)
}
