package main

import (
	"errors"
	"io"
)

// statsCmd is being written; see the issue that introduces 'skiff stats'.
func statsCmd(args []string, stdout, stderr io.Writer) error {
	return errors.New("skiff stats: not available in this build yet")
}
