// Package cfgerr builds configuration errors that name the field they are about.
//
// A configuration error travels up from the code that found it (a filter factory
// parsing its typed_config, a listener builder checking an address) to the code that
// knows where the resource came from (a bootstrap file, an xDS response). Each layer
// prepends its own piece of the path, so the final message reads like
//
//	bootstrap.yaml: static_resources.listeners[0].filter_chains[1].filters[0].typed_config.cluster: must not be empty
//
// Paths use protobuf field names (the names Envoy's documentation and YAML use),
// with [i] for list elements and [key] for map entries.
package cfgerr

import (
	"errors"
	"fmt"
	"strings"
)

// Error is a configuration error at a field path. Err is the underlying cause.
type Error struct {
	Path string // dotted field path, e.g. "filter_chains[0].filters[1].typed_config"
	Err  error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an error at the given field path.
func Errorf(path, format string, args ...any) error {
	return &Error{Path: path, Err: fmt.Errorf(format, args...)}
}

// Field returns err located at field, below whatever path err already has.
// Field(path, nil) is nil.
func Field(field string, err error) error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) && ce == err {
		return &Error{Path: Join(field, ce.Path), Err: ce.Err}
	}
	return &Error{Path: field, Err: err}
}

// Index is Field for the i-th element of the list field.
func Index(field string, i int, err error) error {
	return Field(fmt.Sprintf("%s[%d]", field, i), err)
}

// Join concatenates two path pieces with a dot where one is needed.
func Join(parent, child string) string {
	switch {
	case parent == "":
		return child
	case child == "":
		return parent
	case strings.HasPrefix(child, "["):
		return parent + child
	default:
		return parent + "." + child
	}
}

// PathOf returns the field path carried by err, or "" if it has none.
func PathOf(err error) string {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Path
	}
	return ""
}
