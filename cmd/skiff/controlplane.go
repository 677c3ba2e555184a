package main

import (
	"errors"
	"io"
)

// controlplaneCmd is being written; see the issue that introduces 'skiff controlplane'.
func controlplaneCmd(args []string, stdout, stderr io.Writer) error {
	return errors.New("skiff controlplane: not available in this build yet")
}
