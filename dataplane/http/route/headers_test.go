package route

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

const mutationConfig = `
request_headers_to_add:
- {header: {key: x-level, value: config}}
- {header: {key: x-winner, value: config}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
request_headers_to_remove: [x-remove-config]
response_headers_to_add:
- {header: {key: x-level, value: config}}
response_headers_to_remove: [server]
virtual_hosts:
- name: vh
  domains: ["*"]
  request_headers_to_add:
  - {header: {key: x-level, value: vhost}}
  - {header: {key: x-winner, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
  request_headers_to_remove: [x-level]
  response_headers_to_add:
  - {header: {key: x-level, value: vhost}}
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    request_headers_to_add:
    - {header: {key: x-level, value: route}}
    - {header: {key: x-winner, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    response_headers_to_add:
    - {header: {key: x-level, value: route}}
`

// TestMutationLevels checks Envoy's order: route, then virtual host, then route
// configuration (each level removing before adding), so the least specific
// level has the last word on overwrites; most_specific_header_mutations_wins
// reverses the order.
func TestMutationLevels(t *testing.T) {
	tbl := mustCompile(t, mutationConfig)
	rq := req("h", "/", "x-level", "client", "x-remove-config", "1")
	r := tbl.Match(rq, 0)
	r.MutateRequest(rq, nil)
	// route adds x-level: route and x-winner: route; the virtual host removes
	// x-level (the client's and the route's), adds its own, overwrites
	// x-winner; the configuration removes x-remove-config, adds x-level and
	// overwrites x-winner.
	want := ":method: GET\n:scheme: http\n:authority: h\n:path: /\nx-level: vhost\nx-winner: config\nx-level: config\n"
	if got := rq.String(); got != want {
		t.Errorf("request:\n%swant:\n%s", got, want)
	}
	resp := hdr(":status", "200", "server", "up", "x-level", "upstream")
	r.MutateResponse(resp, nil)
	want = ":status: 200\nx-level: upstream\nx-level: route\nx-level: vhost\nx-level: config\n"
	if got := resp.String(); got != want {
		t.Errorf("response:\n%swant:\n%s", got, want)
	}

	rc := parseRC(t, mutationConfig)
	rc.MostSpecificHeaderMutationsWins = true
	tbl, err := Compile(rc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rq = req("h", "/", "x-level", "client", "x-remove-config", "1")
	tbl.Match(rq, 0).MutateRequest(rq, nil)
	// An overwrite removes the field and adds it at the end, as Envoy's
	// setReferenceKey does.
	want = ":method: GET\n:scheme: http\n:authority: h\n:path: /\nx-level: vhost\nx-winner: route\nx-level: route\n"
	if got := rq.String(); got != want {
		t.Errorf("most specific wins, request:\n%swant:\n%s", got, want)
	}
}

func TestAppendActions(t *testing.T) {
	tests := []struct {
		name string
		adds string // request_headers_to_add in YAML flow style
		in   []string
		want []string // the x-* fields after
	}{
		{"append to absent", `[{header: {key: x-a, value: "1"}}]`, nil, []string{"x-a: 1"}},
		{"append to present", `[{header: {key: x-a, value: "2"}}]`, []string{"x-a", "1"}, []string{"x-a: 1", "x-a: 2"}},
		{"append true", `[{header: {key: x-a, value: "2"}, append: true}]`, []string{"x-a", "1"}, []string{"x-a: 1", "x-a: 2"}},
		{"append false overwrites", `[{header: {key: x-a, value: "2"}, append: false}]`, []string{"x-a", "1", "x-a", "0"}, []string{"x-a: 2"}},
		{"add if absent, absent", `[{header: {key: x-a, value: "2"}, append_action: ADD_IF_ABSENT}]`, nil, []string{"x-a: 2"}},
		{"add if absent, present", `[{header: {key: x-a, value: "2"}, append_action: ADD_IF_ABSENT}]`, []string{"x-a", "1"}, []string{"x-a: 1"}},
		{"overwrite if exists, absent", `[{header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS}]`, nil, nil},
		{"overwrite if exists, present", `[{header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS}]`, []string{"x-a", "1"}, []string{"x-a: 2"}},
		{"overwrite or add", `[{header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]`, nil, []string{"x-a: 2"}},
		// Decisions look at the headers before this level adds anything.
		{"add if absent twice", `[{header: {key: x-a, value: "1"}, append_action: ADD_IF_ABSENT}, {header: {key: x-a, value: "2"}, append_action: ADD_IF_ABSENT}]`,
			nil, []string{"x-a: 1", "x-a: 2"}},
		{"overwrite if exists after add", `[{header: {key: x-a, value: "1"}}, {header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS}]`,
			nil, []string{"x-a: 1"}},
		// Overwrites go first, then additions, whatever the configured order.
		{"add then overwrite", `[{header: {key: x-a, value: "1"}}, {header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]`,
			[]string{"x-a", "0"}, []string{"x-a: 2", "x-a: 1"}},
		{"two overwrites: last wins", `[{header: {key: x-a, value: "1"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}, {header: {key: x-a, value: "2"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]`,
			nil, []string{"x-a: 2"}},
		{"empty value skipped", `[{header: {key: x-a, value: ""}}]`, nil, nil},
		{"empty value kept", `[{header: {key: x-a, value: ""}, keep_empty_value: true}]`, nil, []string{"x-a: "}},
		{"upper-case key", `[{header: {key: X-A, value: "1"}}]`, nil, []string{"x-a: 1"}},
		{"percent escape", `[{header: {key: x-a, value: "100%%"}}]`, nil, []string{"x-a: 100%"}},
		{"formatters", `[{header: {key: x-a, value: "%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_REMOTE_PORT%"}}]`,
			nil, []string{"x-a: [2001:db8::1]:5678|2001:db8::1|5678"}},
		{"formatters local", `[{header: {key: x-a, value: "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT%"}}]`,
			nil, []string{"x-a: 10.0.0.1:80 10.0.0.1 80"}},
		{"formatters info", `[{header: {key: x-a, value: "%PROTOCOL%/%ROUTE_NAME%/%UPSTREAM_CLUSTER%"}}]`,
			nil, []string{"x-a: HTTP/2/r1/c1"}},
	}
	info := &http.StreamInfo{
		DownstreamRemote: netip.MustParseAddrPort("[2001:db8::1]:5678"),
		DownstreamLocal:  netip.MustParseAddrPort("10.0.0.1:80"),
		Protocol:         "HTTP/2", RouteName: "r1", UpstreamCluster: "c1",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    request_headers_to_add: `+tt.adds+`
`)
			h := hdr(tt.in...)
			tbl.VirtualHosts()[0].Routes()[0].MutateRequest(h, info)
			var got []string
			h.Range(func(name, value string) bool {
				got = append(got, name+": "+value)
				return true
			})
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestFormattersWithoutInfo: commands with nothing to say give "", and an
// empty value is not added.
func TestFormattersWithoutInfo(t *testing.T) {
	tbl := mustCompile(t, `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    request_headers_to_add:
    - {header: {key: x-a, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}}
    - {header: {key: x-b, value: "%DOWNSTREAM_LOCAL_PORT%"}, keep_empty_value: true}
    - {header: {key: x-c, value: "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
`)
	for _, info := range []*http.StreamInfo{nil, {}} {
		h := hdr()
		tbl.VirtualHosts()[0].Routes()[0].MutateRequest(h, info)
		if got, want := h.String(), "x-b: \nx-c: ip=\n"; got != want {
			t.Errorf("info %v: got %q, want %q", info, got, want)
		}
	}
}

func TestFormatterCommands(t *testing.T) {
	got := FormatterCommands()
	want := []string{"DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_PORT",
		"DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_REMOTE_PORT",
		"PROTOCOL", "ROUTE_NAME", "UPSTREAM_CLUSTER"}
	if !slices.Equal(got, want) {
		t.Errorf("commands %q", got)
	}
}
