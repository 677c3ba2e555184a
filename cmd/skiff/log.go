package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/skiffproxy/skiff/dataplane/admin"
)

// newLogger builds the process logger, which logs at levels: newLogger sets
// it to level (an Envoy level name), and the admin API's SetLogLevel changes it
// later. It returns a function that closes the log file, if any.
func newLogger(levels *slog.LevelVar, level, encoding, path string, stderr io.Writer) (*slog.Logger, func(), error) {
	lvl, err := admin.ParseLogLevel(level)
	if err != nil {
		return nil, nil, err
	}
	levels.Set(lvl)
	w, closeFn := stderr, func() {}
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("--log-path: %w", err)
		}
		w, closeFn = f, func() { f.Close() }
	}
	opts := &slog.HandlerOptions{Level: levels}
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
