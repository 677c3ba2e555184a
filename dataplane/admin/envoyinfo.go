package admin

import (
	"fmt"
	"net/http"
	"net/netip"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "github.com/skiffproxy/skiff/proto/skiff/admin/v1"
)

// serveServerInfo answers as Envoy's /server_info: an
// envoy.admin.v3.ServerInfo in JSON (version, state, uptimes, node).
// hot_restart_version and command_line_options are left out: skiff's hot
// restart and flags are not Envoy's (the restart epoch is the
// server.hot_restart_epoch gauge).
func (s *Server) serveServerInfo(w http.ResponseWriter) {
	o := &s.opts
	up := durationpb.New(time.Since(o.StartTime).Truncate(time.Second))
	si := &adminv3.ServerInfo{
		Version:            o.Version,
		State:              envoyServerInfoState(s.State()),
		UptimeCurrentEpoch: up,
		UptimeAllEpochs:    up,
		Node:               proto.Clone(o.Bootstrap.GetNode()).(*corev3.Node),
	}
	s.writeJSON(w, si)
}

// envoyServerInfoState is Envoy's ServerInfo.State for st.
func envoyServerInfoState(st adminv1.ServerState) adminv3.ServerInfo_State {
	switch st {
	case adminv1.ServerState_SERVER_STATE_LIVE:
		return adminv3.ServerInfo_LIVE
	case adminv1.ServerState_SERVER_STATE_DRAINING:
		return adminv3.ServerInfo_DRAINING
	}
	return adminv3.ServerInfo_INITIALIZING
}

// serveListeners answers as Envoy's /listeners: "name::address" lines, or
// with ?format=json an envoy.admin.v3.Listeners.
func (s *Server) serveListeners(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format != "" && format != "json" && format != "text" {
		http.Error(w, fmt.Sprintf("format %q: want text or json", format), http.StatusBadRequest)
		return
	}
	out := &adminv3.Listeners{}
	for _, l := range s.opts.Dataplane.Listeners() {
		ls := &adminv3.ListenerStatus{Name: l.Name}
		for i, a := range l.Bound {
			if i == 0 {
				ls.LocalAddress = socketAddress(a)
			} else {
				ls.AdditionalLocalAddresses = append(ls.AdditionalLocalAddresses, socketAddress(a))
			}
		}
		out.ListenerStatuses = append(out.ListenerStatuses, ls)
	}
	if format == "json" {
		s.writeJSON(w, out)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, ls := range out.GetListenerStatuses() {
		fmt.Fprintf(w, "%s::%s\n", ls.GetName(), hostAddress(ls.GetLocalAddress()))
	}
}

func socketAddress(a netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: a.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port())}}}}
}

// writeJSON writes m as Envoy's admin endpoints write JSON: indented, with
// proto field names, the Anys it holds resolved by Options.Types.
func (s *Server) writeJSON(w http.ResponseWriter, m proto.Message) {
	mo := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}
	if s.opts.Types != nil {
		mo.Resolver = s.opts.Types
	}
	b, err := mo.Marshal(m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}
