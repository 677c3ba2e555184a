package route

import (
	"errors"
	"strings"
	"testing"

	"github.com/skiffproxy/skiff/internal/cfgerr"
)

// vh wraps routes (YAML, indented for a virtual host's routes list) in a
// configuration with one virtual host.
func vh(routes string) string {
	return "virtual_hosts:\n- name: vh\n  domains: [\"*\"]\n  routes:\n" + routes
}

// rt is one route with the given match and action (YAML flow style).
func rt(match, action string) string {
	return vh("  - match: " + match + "\n    " + action + "\n")
}

// TestErrors checks the field path and wording of every validation error.
func TestErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		// Route configuration.
		{"unsupported rc field", "vhds: {config_source: {ads: {}}}",
			"vhds: not supported by skiff (field 9 of envoy.config.route.v3.RouteConfiguration)"},
		{"internal_only_headers", "internal_only_headers: [x-internal]",
			"internal_only_headers: not supported by skiff (field 3 of envoy.config.route.v3.RouteConfiguration)"},
		{"pgv: domains required", "virtual_hosts: [{name: v, domains: []}]",
			"virtual_hosts[0].domains: value must contain at least 1 item(s)"},
		{"rc header key", "request_headers_to_add: [{header: {key: ':path', value: x}}]",
			"request_headers_to_add[0].header.key: :-prefixed or host headers may not be modified"},
		{"rc header host", "response_headers_to_add: [{header: {key: Host, value: x}}]",
			"response_headers_to_add[0].header.key: :-prefixed or host headers may not be modified"},
		{"rc remove", "request_headers_to_remove: [x-a, ':authority']",
			"request_headers_to_remove[1]: :-prefixed or host headers may not be removed"},
		{"rc remove host", "response_headers_to_remove: [HOST]",
			"response_headers_to_remove[0]: :-prefixed or host headers may not be removed"},

		// Virtual hosts and domains.
		{"unsupported vhost field", "virtual_hosts: [{name: v, domains: [a], virtual_clusters: [{name: vc}]}]",
			"virtual_hosts[0].virtual_clusters: not supported by skiff (field 5 of envoy.config.route.v3.VirtualHost)"},
		{"duplicate domain", "virtual_hosts: [{name: a, domains: [x.com, y.com]}, {name: b, domains: [z.com, X.COM]}]",
			`virtual_hosts[1].domains[1]: duplicate domain "x.com" (virtual_hosts[0].domains[0] has it): domains must be unique across virtual hosts`},
		{"duplicate in one vhost", "virtual_hosts: [{name: a, domains: ['*.x.com', '*.x.com']}]",
			`virtual_hosts[0].domains[1]: duplicate domain "*.x.com" (virtual_hosts[0].domains[0] has it): domains must be unique across virtual hosts`},
		{"two defaults", "virtual_hosts: [{name: a, domains: ['*']}, {name: b, domains: ['*']}]",
			`virtual_hosts[1].domains[0]: only one virtual host may have the domain "*" (virtual_hosts[0].domains[0] has it)`},
		{"vhost header", "virtual_hosts: [{name: v, domains: [a], request_headers_to_add: [{header: {key: x, value: '%FOO%'}}]}]",
			"virtual_hosts[0].request_headers_to_add[0].header.value: %FOO% is not supported by skiff (supported: DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_LOCAL_PORT, DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_REMOTE_PORT, PROTOCOL, ROUTE_NAME, UPSTREAM_CLUSTER; write %% for a literal %)"},
		{"vhost retry", "virtual_hosts: [{name: v, domains: [a], retry_policy: {retry_on: '5xx,sometimes'}}]",
			`virtual_hosts[0].retry_policy.retry_on: "sometimes" is not a retry condition skiff knows (5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)`},

		// Routes.
		{"pgv: match required", vh("  - route: {cluster: c}\n"),
			"virtual_hosts[0].routes[0].match: value is required"},
		{"pgv: action required", vh("  - match: {prefix: /}\n"),
			"virtual_hosts[0].routes[0]: one of route, redirect, direct_response, filter_action, non_forwarding_action is required (oneof action)"},
		{"unsupported route field", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    stat_prefix: s\n"),
			"virtual_hosts[0].routes[0].stat_prefix: not supported by skiff (field 19 of envoy.config.route.v3.Route)"},
		{"non_forwarding_action", vh("  - match: {prefix: /}\n    non_forwarding_action: {}\n"),
			"virtual_hosts[0].routes[0].non_forwarding_action: not supported by skiff (field 18 of envoy.config.route.v3.Route)"},
		{"route header remove", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    response_headers_to_remove: [':status']\n"),
			"virtual_hosts[0].routes[0].response_headers_to_remove[0]: :-prefixed or host headers may not be removed"},
		{"route header value", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    request_headers_to_add: [{header: {key: x, value: '50%'}}]\n"),
			"virtual_hosts[0].routes[0].request_headers_to_add[0].header.value: unescaped % at position 2 (write %% for a literal %)"},
		{"route header raw_value", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    request_headers_to_add: [{header: {key: x, raw_value: eA==}}]\n"),
			"virtual_hosts[0].routes[0].request_headers_to_add[0].header.raw_value: not supported by skiff (field 3 of envoy.config.core.v3.HeaderValue)"},
		{"append and append_action", vh("  - match: {prefix: /}\n    route: {cluster: c}\n    request_headers_to_add: [{header: {key: x, value: v}, append: true, append_action: ADD_IF_ABSENT}]\n"),
			"virtual_hosts[0].routes[0].request_headers_to_add[0].append: both append and append_action are set"},

		// Matches.
		{"regex syntax", vh("  - match: {prefix: /}\n    route: {cluster: c}\n- name: v2\n  domains: [x]\n  routes:\n  - match: {safe_regex: {regex: '(a'}}\n    route: {cluster: c}\n"),
			"virtual_hosts[1].routes[0].match.safe_regex.regex: error parsing regexp: missing closing ): `(a`"},
		{"regex backreference", rt(`{safe_regex: {regex: '(a)\1'}}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.safe_regex.regex: error parsing regexp: invalid escape sequence: `\\1`"},
		{"regex \\C", rt(`{safe_regex: {regex: 'a\C'}}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.safe_regex.regex: error parsing regexp: invalid escape sequence: `\\C`"},
		{"regex lookahead", rt(`{safe_regex: {regex: 'a(?=b)'}}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.safe_regex.regex: error parsing regexp: invalid or unsupported Perl syntax: `(?=`"},
		{"regex program size", rt(`{safe_regex: {regex: a, google_re2: {max_program_size: 10}}}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.safe_regex.google_re2.max_program_size: not supported by skiff (field 1 of envoy.type.matcher.v3.RegexMatcher.GoogleRE2)"},
		{"cookies", rt(`{prefix: /, cookies: [{name: a, string_match: {exact: b}}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.cookies: not supported by skiff (field 17 of envoy.config.route.v3.RouteMatch)"},
		{"connect_config proxy_protocol_config", rt(`{connect_matcher: {}}`, "route: {cluster: c, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {proxy_protocol_config: {}}}]}"),
			"virtual_hosts[0].routes[0].route.upgrade_configs[0].connect_config.proxy_protocol_config: not supported by skiff (field 1 of envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig)"},
		{"connect_config allow_post", rt(`{connect_matcher: {}}`, "route: {cluster: c, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {allow_post: true}}]}"),
			"virtual_hosts[0].routes[0].route.upgrade_configs[0].connect_config.allow_post: not supported by skiff (field 2 of envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig)"},
		{"pgv: path_separated_prefix", rt(`{path_separated_prefix: /a/}`, "route: {cluster: c}"),
			`virtual_hosts[0].routes[0].match.path_separated_prefix: value does not match regex pattern "^[^?#]+[^?#/]$"`},
		{"pgv: header name", rt(`{prefix: /, headers: [{name: ""}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.headers[0].name: value length must be at least 1 runes"},
		{"header regex", rt(`{prefix: /, headers: [{name: a}, {name: b, safe_regex_match: {regex: '['}}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.headers[1].safe_regex_match.regex: error parsing regexp: missing closing ]: `[`"},
		{"string matcher custom", rt(`{prefix: /, headers: [{name: a, string_match: {custom: {name: x, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: s}}}}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.headers[0].string_match.custom: not supported by skiff (field 8 of envoy.type.matcher.v3.StringMatcher)"},
		{"string matcher regex ignore_case", rt(`{prefix: /, headers: [{name: a, string_match: {safe_regex: {regex: x}, ignore_case: true}}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.headers[0].string_match.ignore_case: has no effect with safe_regex (use (?i) in the expression)"},
		{"string matcher regex", rt(`{prefix: /, headers: [{name: a, string_match: {safe_regex: {regex: '*'}}}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex: error parsing regexp: missing argument to repetition operator: `*`"},
		{"query regex", rt(`{prefix: /, query_parameters: [{name: a, string_match: {safe_regex: {regex: '('}}}]}`, "route: {cluster: c}"),
			"virtual_hosts[0].routes[0].match.query_parameters[0].string_match.safe_regex.regex: error parsing regexp: missing closing ): `(`"},

		// Route actions.
		{"unsupported action field", rt(`{prefix: /}`, "route: {cluster: c, path_rewrite: /x}"),
			"virtual_hosts[0].routes[0].route.path_rewrite: not supported by skiff (field 45 of envoy.config.route.v3.RouteAction)"},
		{"mirror by header", rt(`{prefix: /}`, "route: {cluster: c, request_mirror_policies: [{cluster_header: x-mirror}]}"),
			"virtual_hosts[0].routes[0].route.request_mirror_policies[0].cluster_header: not supported by skiff (field 5 of envoy.config.route.v3.RouteAction.RequestMirrorPolicy)"},
		{"mirror runtime key", rt(`{prefix: /}`, "route: {cluster: c, request_mirror_policies: [{cluster: m, runtime_fraction: {runtime_key: k, default_value: {numerator: 5}}}]}"),
			"virtual_hosts[0].routes[0].route.request_mirror_policies[0].runtime_fraction.runtime_key: not supported by skiff (field 2 of envoy.config.core.v3.RuntimeFractionalPercent)"},
		{"hash policy on filter state", rt(`{prefix: /}`, "route: {cluster: c, hash_policy: [{filter_state: {key: k}}]}"),
			"virtual_hosts[0].routes[0].route.hash_policy[0].filter_state: not supported by skiff (field 6 of envoy.config.route.v3.RouteAction.HashPolicy)"},
		{"pgv: cluster name", rt(`{prefix: /}`, "route: {cluster: ''}"),
			"virtual_hosts[0].routes[0].route.cluster: value length must be at least 1 runes"},
		{"both rewrites", rt(`{prefix: /}`, "route: {cluster: c, prefix_rewrite: /x, regex_rewrite: {pattern: {regex: a}, substitution: b}}"),
			"virtual_hosts[0].routes[0].route.regex_rewrite: specify only one of prefix_rewrite and regex_rewrite"},
		{"rewrite group", rt(`{prefix: /}`, `route: {cluster: c, regex_rewrite: {pattern: {regex: "(a)"}, substitution: "\\2"}}`),
			`virtual_hosts[0].routes[0].route.regex_rewrite.substitution: rewrite "\\2" refers to \2 but the pattern has 1 groups`},
		{"rewrite escape", rt(`{prefix: /}`, `route: {cluster: c, regex_rewrite: {pattern: {regex: "a"}, substitution: "\\n"}}`),
			`virtual_hosts[0].routes[0].route.regex_rewrite.substitution: rewrite "\\n": invalid escape \n (use \0 to \9 or \\)`},
		{"rewrite trailing backslash", rt(`{prefix: /}`, `route: {cluster: c, regex_rewrite: {pattern: {regex: "a"}, substitution: "x\\"}}`),
			`virtual_hosts[0].routes[0].route.regex_rewrite.substitution: rewrite "x\\" ends with a lone backslash`},
		{"rewrite pattern", rt(`{prefix: /}`, `route: {cluster: c, regex_rewrite: {pattern: {regex: "+"}, substitution: ""}}`),
			"virtual_hosts[0].routes[0].route.regex_rewrite.pattern.regex: error parsing regexp: missing argument to repetition operator: `+`"},
		{"host path regex", rt(`{prefix: /}`, `route: {cluster: c, host_rewrite_path_regex: {pattern: {regex: "("}, substitution: ""}}`),
			"virtual_hosts[0].routes[0].route.host_rewrite_path_regex.pattern.regex: error parsing regexp: missing closing ): `(`"},
		{"negative timeout", rt(`{prefix: /}`, "route: {cluster: c, timeout: -1s}"),
			"virtual_hosts[0].routes[0].route.timeout: must not be negative"},
		{"negative idle_timeout", rt(`{prefix: /}`, "route: {cluster: c, idle_timeout: -0.5s}"),
			"virtual_hosts[0].routes[0].route.idle_timeout: must not be negative"},
		{"negative max_grpc_timeout", rt(`{prefix: /}`, "route: {cluster: c, max_grpc_timeout: -1s}"),
			"virtual_hosts[0].routes[0].route.max_grpc_timeout: must not be negative"},
		{"negative grpc_timeout_offset", rt(`{prefix: /}`, "route: {cluster: c, grpc_timeout_offset: -1s}"),
			"virtual_hosts[0].routes[0].route.grpc_timeout_offset: must not be negative"},
		{"negative per_try_timeout", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {per_try_timeout: -1s}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.per_try_timeout: must not be negative"},
		{"negative per_try_idle_timeout", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {per_try_idle_timeout: -1s}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.per_try_idle_timeout: must not be negative"},
		{"route retry", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retry_priority: {name: p}}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.retry_priority: not supported by skiff (field 4 of envoy.config.route.v3.RetryPolicy)"},
		{"retry host predicate", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}}"),
			`virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0].name: retry host predicate "envoy.retry_host_predicates.omit_canary_hosts" is not supported by skiff (only envoy.retry_host_predicates.previous_hosts)`},
		{"retry host predicate type", rt(`{prefix: /}`, `route: {cluster: c, retry_policy: {retry_host_predicate: [{name: x, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: s}}]}}`),
			"virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0].typed_config: retry host predicate type.googleapis.com/google.protobuf.StringValue is not supported by skiff (only envoy.retry_host_predicates.previous_hosts)"},
		{"retry back-off", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retry_back_off: {base_interval: 1s, max_interval: 0.5s}}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.max_interval: must be greater than or equal to the base_interval"},
		{"pgv: retry back-off base", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retry_back_off: {max_interval: 1s}}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval: value is required"},
		{"retry status code", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retriable_status_codes: [503, 600]}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes[1]: 600 is not an HTTP status code"},
		{"retry host selection", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {host_selection_retry_max_attempts: -1}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.host_selection_retry_max_attempts: must not be negative"},
		{"retry headers", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retriable_request_headers: [{name: a, safe_regex_match: {regex: ')'}}]}}"),
			"virtual_hosts[0].routes[0].route.retry_policy.retriable_request_headers[0].safe_regex_match.regex: error parsing regexp: unexpected ): `)`"},
		{"retry http3", rt(`{prefix: /}`, "route: {cluster: c, retry_policy: {retry_on: http3-post-connect-failure}}"),
			`virtual_hosts[0].routes[0].route.retry_policy.retry_on: "http3-post-connect-failure" is not a retry condition skiff knows (5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)`},

		// Weighted clusters.
		{"weighted runtime", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, weight: 1}], runtime_key_prefix: r}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.runtime_key_prefix: not supported by skiff (field 2 of envoy.config.route.v3.WeightedCluster)"},
		{"weighted hash", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, weight: 1}], use_hash_policy: true}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.use_hash_policy: not supported by skiff (hash policies are not)"},
		{"weighted per-cluster headers", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 1, request_headers_to_add: [{header: {key: x, value: v}}]}]}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].request_headers_to_add: not supported by skiff (field 4 of envoy.config.route.v3.WeightedCluster.ClusterWeight)"},
		{"weighted no name", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{weight: 1}]}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]: one of name or cluster_header is required"},
		{"weighted both names", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, cluster_header: b, weight: 1}]}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]: only one of name or cluster_header can be set"},
		{"weighted zero", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, weight: 0}, {name: b}]}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the sum of the weights must be greater than 0"},
		{"weighted overflow", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, weight: 4294967295}, {name: b, weight: 1}]}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the weights add up to more than 4294967295"},
		{"weighted total", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: [{name: a, weight: 30}, {name: b, weight: 60}], total_weight: 100}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.total_weight: is 100 but the weights add up to 90"},
		{"pgv: weighted empty", rt(`{prefix: /}`, "route: {weighted_clusters: {clusters: []}}"),
			"virtual_hosts[0].routes[0].route.weighted_clusters.clusters: value must contain at least 1 item(s)"},

		// Redirects and direct responses.
		{"redirect path_rewrite", rt(`{prefix: /}`, "redirect: {path_rewrite: /x}"),
			"virtual_hosts[0].routes[0].redirect.path_rewrite: not supported by skiff (field 10 of envoy.config.route.v3.RedirectAction)"},
		{"redirect port", rt(`{prefix: /}`, "redirect: {port_redirect: 70000}"),
			"virtual_hosts[0].routes[0].redirect.port_redirect: 70000 is not a port"},
		{"redirect regex", rt(`{prefix: /}`, `redirect: {regex_rewrite: {pattern: {regex: "a"}, substitution: "\\1"}}`),
			`virtual_hosts[0].routes[0].redirect.regex_rewrite.substitution: rewrite "\\1" refers to \1 but the pattern has 0 groups`},
		{"pgv: redirect code", rt(`{prefix: /}`, "redirect: {response_code: 9}"),
			"virtual_hosts[0].routes[0].redirect.response_code: value must be one of the defined enum values"},
		{"direct body file", rt(`{prefix: /}`, "direct_response: {status: 200, body: {filename: /etc/passwd}}"),
			"virtual_hosts[0].routes[0].direct_response.body.filename: not supported by skiff (field 1 of envoy.config.core.v3.DataSource)"},
		{"direct body format", rt(`{prefix: /}`, "direct_response: {status: 200, body_format: {text_format: x}}"),
			"virtual_hosts[0].routes[0].direct_response.body_format: not supported by skiff (field 3 of envoy.config.route.v3.DirectResponseAction)"},
		{"pgv: direct status", rt(`{prefix: /}`, "direct_response: {status: 99}"),
			"virtual_hosts[0].routes[0].direct_response.status: value must be inside range [200, 600)"},
		{"direct body size", "max_direct_response_body_size_bytes: 4\n" + rt(`{prefix: /}`, "direct_response: {status: 200, body: {inline_string: hello}}"),
			"virtual_hosts[0].routes[0].direct_response.body: is 5 bytes, more than max_direct_response_body_size_bytes (4)"},
		{"direct body default size", rt(`{prefix: /}`, "direct_response: {status: 200, body: {inline_string: "+strings.Repeat("x", 4097)+"}}"),
			"virtual_hosts[0].routes[0].direct_response.body: is 4097 bytes, more than max_direct_response_body_size_bytes (4096)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(parseRC(t, tt.yaml), Options{})
			if err == nil {
				t.Fatalf("Compile succeeded, want %s", tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
			var ce *cfgerr.Error
			if !errors.As(err, &ce) {
				t.Errorf("error is %T, not a *cfgerr.Error", err)
			}
		})
	}
}

func TestValidateClusters(t *testing.T) {
	const y = `
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /a}
    route: {cluster: known}
  - match: {prefix: /b}
    route: {cluster_header: x-cluster}
  - match: {prefix: /}
    route: {weighted_clusters: {clusters: [{name: known, weight: 1}, {cluster_header: x-c, weight: 1}, {name: unknown, weight: 1}]}}
`
	exists := func(name string) bool { return name == "known" }
	const want = `virtual_hosts[0].routes[2].route.weighted_clusters.clusters[2].name: unknown cluster "unknown" (validate_clusters is in effect)`
	// RDS: off unless asked for.
	if _, err := Compile(parseRC(t, y), Options{ClusterExists: exists}); err != nil {
		t.Errorf("RDS default: %v", err)
	}
	if _, err := Compile(parseRC(t, "validate_clusters: true\n"+y), Options{ClusterExists: exists}); err == nil || err.Error() != want {
		t.Errorf("RDS with validate_clusters: %v", err)
	}
	// Inline: on unless turned off.
	if _, err := CompileInline(parseRC(t, y), Options{ClusterExists: exists}); err == nil || err.Error() != want {
		t.Errorf("inline default: %v", err)
	}
	if _, err := CompileInline(parseRC(t, "validate_clusters: false\n"+y), Options{ClusterExists: exists}); err != nil {
		t.Errorf("inline without validate_clusters: %v", err)
	}
	// Without ClusterExists there is nothing to check against.
	if _, err := CompileInline(parseRC(t, y), Options{}); err != nil {
		t.Errorf("inline without ClusterExists: %v", err)
	}
	if _, err := CompileInline(parseRC(t, `
virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: nope}}]}]`), Options{ClusterExists: exists}); err == nil ||
		err.Error() != `virtual_hosts[0].routes[0].route.cluster: unknown cluster "nope" (validate_clusters is in effect)` {
		t.Errorf("inline unknown cluster: %v", err)
	}
}

func TestCompileNil(t *testing.T) {
	if _, err := Compile(nil, Options{}); err == nil || err.Error() != "no route configuration" {
		t.Errorf("Compile(nil) = %v", err)
	}
}
