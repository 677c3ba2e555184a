// Package route compiles Envoy route configurations
// (envoy.config.route.v3.RouteConfiguration, from RDS or an HTTP connection
// manager's inline route_config) into a Table the router matches requests
// against, with Envoy's semantics.
//
// Compile validates the whole configuration first (protoc-gen-validate rules,
// then skiff's own checks) and reports the first problem as a *cfgerr.Error at
// its field path inside the RouteConfiguration, e.g.
//
//	virtual_hosts[1].routes[0].match.safe_regex.regex: error parsing regexp: missing closing ): `(a`
//
// A field Envoy honours and skiff does not is refused by name, never ignored.
//
// # Using a Table
//
// The HTTP connection manager compiles the route configuration once per
// update and, per request, the router does:
//
//	r := table.Match(req, random)         // nil: 404, response flag NR
//	switch r.Action {
//	case route.Redirect, route.DirectResponse:
//		body := r.Reply(req, &resp, info)  // :status, location, headers, content-type
//	case route.Forward:
//		cluster := r.ClusterFor(req, rnd)  // "": r.ClusterNotFoundCode
//		r.MutateRequest(req, info)         // request_headers_to_add/remove
//		r.RewriteRequest(req, true)        // host and path rewrites
//		// r.Timeout, r.IdleTimeout, r.MaxGRPCTimeout, r.Retry, r.AutoHostRewrite ...
//		r.MutateResponse(&resp, info)      // response_headers_to_add/remove
//	}
//
// # Supported fields
//
// RouteConfiguration: name, virtual_hosts, request_headers_to_add/remove,
// response_headers_to_add/remove, most_specific_header_mutations_wins,
// validate_clusters (see Options.ClusterExists), max_direct_response_body_size_bytes,
// ignore_port_in_host_matching, ignore_path_parameters_in_path_matching, metadata,
// typed_per_filter_config.
//
// VirtualHost: name, domains, routes, request/response_headers_to_add/remove,
// retry_policy, include_request_attempt_count, include_attempt_count_in_response,
// include_is_timeout_retry_header (flags for the router), metadata,
// typed_per_filter_config, request_mirror_policies, require_tls (a request whose
// x-forwarded-proto is not https, and with EXTERNAL_ONLY not internal, matches
// a 301 redirect to https before any route, as Envoy's SslRedirectRoute).
//
// Route: name, match, route, redirect, direct_response,
// request/response_headers_to_add/remove, decorator (kept for tracing, which,
// as in Envoy without a tracer, does nothing yet), metadata,
// typed_per_filter_config.
//
// RouteMatch: prefix, path, safe_regex, path_separated_prefix, case_sensitive,
// headers, query_parameters, grpc, runtime_fraction (default_value, runtime_key:
// the route matches the share of requests whose stream random value samples
// in, as Envoy's, the same value that picks a weighted cluster).
//
// HeaderMatcher: every form (exact_match, safe_regex_match, range_match,
// present_match, prefix_match, suffix_match, contains_match, string_match),
// invert_match, treat_missing_header_as_empty. StringMatcher: exact, prefix,
// suffix, contains, safe_regex, ignore_case. QueryParameterMatcher: name,
// string_match, present_match.
//
// RouteAction: cluster, cluster_header, weighted_clusters (clusters with name
// or cluster_header, weight and typed_per_filter_config, header_name,
// total_weight checked against the sum), cluster_not_found_response_code, prefix_rewrite, regex_rewrite,
// host_rewrite_literal, auto_host_rewrite, host_rewrite_header,
// host_rewrite_path_regex, append_x_forwarded_host, timeout, idle_timeout,
// retry_policy, max_grpc_timeout, grpc_timeout_offset, max_stream_duration,
// hash_policy, request_mirror_policies, upgrade_configs (UpgradeAllowed).
//
// RetryPolicy: retry_on (5xx, gateway-error, reset, reset-before-request,
// connect-failure, envoy-ratelimited, retriable-4xx, refused-stream,
// retriable-status-codes, retriable-headers, and the gRPC cancelled,
// deadline-exceeded, internal, resource-exhausted, unavailable), num_retries,
// per_try_timeout, per_try_idle_timeout, retry_back_off, retriable_status_codes,
// retriable_headers, retriable_request_headers, retry_host_predicate
// (envoy.retry_host_predicates.previous_hosts only), host_selection_retry_max_attempts.
//
// RedirectAction: https_redirect, scheme_redirect, host_redirect,
// port_redirect, path_redirect, prefix_rewrite, regex_rewrite, response_code,
// strip_query. DirectResponseAction: status, body (inline_string, inline_bytes).
//
// HeaderValueOption: header (key, value), append, append_action,
// keep_empty_value. Values may use the %COMMAND%s listed by FormatterCommands
// (downstream addresses and ports, PROTOCOL, ROUTE_NAME, UPSTREAM_CLUSTER);
// others are refused.
//
// # Per-filter configuration
//
// typed_per_filter_config maps an HTTP filter's name (its name in the
// connection manager's http_filters) to its per-route configuration, at four
// levels: the route configuration, a virtual host, a route and a weighted
// cluster. Each value is built once, when the table compiles, by
// Options.FilterConfigs (the filter registry: the factory whose per-route type
// is the value's type URL). A value may also be an
// envoy.config.route.v3.FilterConfig: disabled turns the filter off (its
// config is ignored), an empty config turns it on without a config of its own
// (also a filter that HttpFilter.disabled turns off by default), and
// is_optional makes a config no filter takes (an unknown type, or a filter
// without per-route configuration) ignored instead of an error; a FilterConfig
// with neither config nor disabled is an error. As in Envoy, the most
// specific level that names a filter decides whether it runs (weighted cluster,
// route, virtual host, route configuration), and a filter takes the most
// specific config (Config) or, like CORS, merges them all (Configs). A filter
// looks its entry up per request with PerFilter(exchange, name), which does
// not allocate; a weighted cluster's entry is the one of the cluster the
// router will pick, as both use ExchangeRandom. Errors name the field path and
// the filter, route, virtual host and route configuration, e.g.
//
//	virtual_hosts[0].routes[2].typed_per_filter_config[envoy.filters.http.fault].abort.http_status: value must be inside range [200, 600) (HTTP filter "envoy.filters.http.fault" on route "slow" of virtual host "backend" of route configuration "local")
//
// Regular expressions are Go's regexp, which implements RE2's syntax and
// linear-time guarantee; what Go cannot compile (RE2's \C) is refused, and
// RE2's max_program_size has no equivalent and is refused.
//
// # Refused fields
//
// RouteConfiguration: vhds, internal_only_headers, cluster_specifier_plugins,
// vhost_header, route_specifiers.
// VirtualHost: matcher, virtual_clusters, rate_limits, cors
// (deprecated: use typed_per_filter_config), retry_policy_typed_config,
// hedge_policy, per_request_buffer_limit_bytes, request_body_buffer_limit,
// route_specifiers.
// Route: filter_action, non_forwarding_action, tracing,
// per_request_buffer_limit_bytes, stat_prefix, request_body_buffer_limit,
// route_specifiers.
// RouteMatch: path_match_policy, cookies, tls_context,
// dynamic_metadata, filter_state.
// RouteAction: cluster_specifier_plugin, inline_cluster_specifier_plugin,
// metadata_match, path_rewrite_policy, path_rewrite, host_rewrite,
// flush_timeout, early_data_policy, retry_policy_typed_config,
// request_mirror_policies' cluster_header and runtime_key (at every level), priority (other than DEFAULT), rate_limits,
// include_vh_rate_limits, hash_policy's filter_state, cors (deprecated: use
// typed_per_filter_config), connect_config's proxy_protocol_config and allow_post,
// internal_redirect_policy, internal_redirect_action (other than
// PASS_THROUGH_INTERNAL_REDIRECT), max_internal_redirects, hedge_policy.
// WeightedCluster: runtime_key_prefix, use_hash_policy
// (true); ClusterWeight: metadata_match, request/response_headers_to_add/remove,
// host_rewrite_literal.
// RetryPolicy: retry_priority, retry_options_predicates,
// rate_limited_retry_back_off, refresh_cluster_on_retry; retry_on
// http3-post-connect-failure. RedirectAction: path_rewrite.
// DirectResponseAction: body_format; body from filename,
// environment_variable or watched_directory. HeaderValue: raw_value.
// RegexMatcher: google_re2.max_program_size. StringMatcher: custom.
package route
