package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Log levels beyond slog's four, for Envoy's trace and critical.
const (
	levelTrace    = slog.LevelDebug - 4
	levelCritical = slog.LevelError + 4
	levelOff      = slog.Level(1 << 20)
)

// parseLevel accepts Envoy's level names.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return levelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	case "critical":
		return levelCritical, nil
	case "off":
		return levelOff, nil
	}
	return 0, fmt.Errorf("log level %q: want one of trace, debug, info, warning, error, critical, off", s)
}

// newLogger builds the process logger. It returns a function that closes the log
// file, if any.
func newLogger(level, encoding, path string, stderr io.Writer) (*slog.Logger, func(), error) {
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	w, closeFn := stderr, func() {}
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("--log-path: %w", err)
		}
		w, closeFn = f, func() { f.Close() }
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch encoding {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		closeFn()
		return nil, nil, fmt.Errorf("--log-encoding %q: want text or json", encoding)
	}
	return slog.New(h), closeFn, nil
}
