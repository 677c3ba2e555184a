package admin

import (
	"fmt"
	"log/slog"
	"strings"
)

// Log levels beyond slog's four, for Envoy's trace, critical and off.
const (
	LevelTrace    = slog.LevelDebug - 4
	LevelCritical = slog.LevelError + 4
	LevelOff      = slog.Level(1 << 20)
)

// logLevels are Envoy's log level names, most verbose first.
var logLevels = []struct {
	name  string
	level slog.Level
}{
	{"trace", LevelTrace},
	{"debug", slog.LevelDebug},
	{"info", slog.LevelInfo},
	{"warning", slog.LevelWarn},
	{"error", slog.LevelError},
	{"critical", LevelCritical},
	{"off", LevelOff},
}

// ParseLogLevel accepts Envoy's log level names (and "warn").
func ParseLogLevel(s string) (slog.Level, error) {
	s = strings.ToLower(s)
	if s == "warn" {
		return slog.LevelWarn, nil
	}
	for _, l := range logLevels {
		if l.name == s {
			return l.level, nil
		}
	}
	return 0, fmt.Errorf("log level %q: want one of trace, debug, info, warning, error, critical, off", s)
}

// LogLevelName is Envoy's name of l: the most verbose level that l does not
// log more than.
func LogLevelName(l slog.Level) string {
	name := logLevels[0].name
	for _, ll := range logLevels {
		if l >= ll.level {
			name = ll.name
		}
	}
	return name
}
